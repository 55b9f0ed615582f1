"""A misspelt JOBSCHED_* variable is named with the setting it was probably meant to be;
a missing database names the command that creates it."""

from __future__ import annotations

import asyncpg

from jobsched.adapters.postgres.schema import startup_hint
from jobsched.settings import unknown_environment


def test_a_misspelt_variable_names_the_closest_setting() -> None:
    assert unknown_environment({"JOBSCHED_RETENTON_DAYS": "3"}) == [
        "environment variable JOBSCHED_RETENTON_DAYS is not a jobsched setting and is "
        "ignored: did you mean JOBSCHED_RETENTION_DAYS?"]
    [warning] = unknown_environment({"JOBSCHED_METRIC_PORT": "9"})
    assert warning.endswith("did you mean JOBSCHED_METRICS_PORT?")


def test_a_variable_near_no_setting_is_still_named() -> None:
    [warning] = unknown_environment({"JOBSCHED_FLUX_CAPACITOR": "1"})
    assert warning == ("environment variable JOBSCHED_FLUX_CAPACITOR is not a jobsched "
                       "setting and is ignored")


def test_settings_and_other_known_variables_are_not_warned_about() -> None:
    assert unknown_environment({
        "JOBSCHED_DATABASE_URL": "postgresql://x/y", "JOBSCHED_RETENTION_DAYS": "3",
        "JOBSCHED_URL": "http://x", "JOBSCHED_TOKEN": "t", "JOBSCHED_CONFIG": "c.toml",
        "JOBSCHED_TEST_AMQP_URL": "amqp://", "JOBSCHED_SECRET_OLD": "x", "PATH": "/bin",
    }) == []


def test_a_missing_database_hints_at_create_db() -> None:
    missing = asyncpg.InvalidCatalogNameError('database "x" does not exist')
    assert startup_hint(missing) == ("the database does not exist: create it with "
                                     "`jobsched migrate --create-db`")
    assert startup_hint(ConnectionRefusedError()) is None
