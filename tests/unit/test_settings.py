"""Settings precedence: defaults < TOML file < JOBSCHED_* environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobsched.settings import ConfigError, load_settings, mask_url


def test_defaults_are_local() -> None:
    settings = load_settings({}, environ={}, config_path=None)
    assert settings.database_url == "postgresql://localhost/jobsched"
    assert settings.amqp_url == "amqp://guest:guest@localhost/"
    assert settings.zookeeper_hosts == "localhost:2181"
    assert settings.queue_name == "jobsched.default.executions"
    assert settings.zookeeper_chroot == "/jobsched/default"


def test_each_layer_overrides_the_one_below(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[jobsched]\napi_port = 1111\ncluster = "file"\nmetrics_port = 3333\n')
    env = {"JOBSCHED_API_PORT": "2222", "JOBSCHED_CLUSTER": "env"}
    settings = load_settings({"cluster": "flag"}, environ=env, config_path=config)
    assert settings.api_port == 2222  # env beats file
    assert settings.cluster == "flag"  # flag beats env
    assert settings.metrics_port == 3333  # file beats default
    assert settings.queue_name == "jobsched.flag.executions"


def test_config_path_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("worker_prefetch = 7\n")  # a bare table works too
    settings = load_settings({}, environ={"JOBSCHED_CONFIG": str(config)})
    assert settings.worker_prefetch == 7


def test_imports_from_environment_are_a_list() -> None:
    settings = load_settings({}, environ={"JOBSCHED_IMPORTS": "a.b,c"}, config_path=None)
    assert settings.imports == ("a.b", "c")


@pytest.mark.parametrize(("env", "needle"), [
    ({"JOBSCHED_API_PORT": "x"}, "invalid setting api_port (JOBSCHED_API_PORT)"),
    ({"JOBSCHED_LOG_FORMAT": "xml"}, "log_format"),
    ({"JOBSCHED_AMQP_URL": "http://x"}, "amqp_url"),
    ({"JOBSCHED_SCHEDULER_POLL_S": "0"}, "scheduler_poll_s"),
    ({"JOBSCHED_DATABASE_READ_URL": "mysql://replica/db"}, "database_read_url"),
    ({"JOBSCHED_EVENT_LOOP": "tokio"}, "event_loop"),
])
def test_bad_values_name_the_key(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=r"^invalid setting ") as raised:
        load_settings({}, environ=env, config_path=None)
    assert needle in str(raised.value)
    assert "\n" not in str(raised.value)


def test_secrets_are_not_echoed() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({}, environ={"JOBSCHED_DATABASE_URL": "mysql://u:hunter2@x/db"},
                      config_path=None)
    assert "hunter2" not in str(raised.value)
    assert mask_url("postgresql://u:hunter2@h/db") == "postgresql://u:***@h/db"


def test_unknown_key_in_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[jobsched]\ncolour = 'red'\n")
    with pytest.raises(ConfigError, match=r"colour.*unknown setting"):
        load_settings({}, environ={}, config_path=config)


def test_unreadable_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file"):
        load_settings({}, environ={}, config_path=tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings({}, environ={}, config_path=bad)


def test_several_database_hosts_pick_the_primary_and_reads_prefer_a_standby() -> None:
    settings = load_settings({}, environ={
        "JOBSCHED_DATABASE_URL": "postgresql://u:pw@db1:5432,db2:5432/jobs?sslmode=prefer",
        "JOBSCHED_DATABASE_READ_URL": "postgresql://db2:5432,db3:5432/jobs",
    }, config_path=None)
    assert settings.database_url == ("postgresql://u:pw@db1:5432,db2:5432/jobs"
                                     "?sslmode=prefer&target_session_attrs=read-write")
    assert settings.database_read_url == ("postgresql://db2:5432,db3:5432/jobs"
                                          "?target_session_attrs=prefer-standby")
    assert "pw" not in settings.masked()["database_url"]


def test_one_host_or_an_explicit_choice_is_left_alone() -> None:
    one = "postgresql://db1/jobs"
    chosen = "postgresql://db1,db2/jobs?target_session_attrs=any"
    settings = load_settings({}, environ={"JOBSCHED_DATABASE_URL": one,
                                          "JOBSCHED_DATABASE_READ_URL": chosen},
                             config_path=None)
    assert (settings.database_url, settings.database_read_url) == (one, chosen)
    assert load_settings({}, environ={}, config_path=None).database_read_url is None


def test_egress_ranges_and_the_secrets_key_are_checked_at_start_up() -> None:
    settings = load_settings({}, environ={
        "JOBSCHED_HTTP_ALLOW_CIDRS": "127.0.0.0/8, ::1/128",
        "JOBSCHED_HTTP_DENY_CIDRS": "10.0.0.0/8",
        "JOBSCHED_SECRETS_KEY": "k" * 43 + "="}, config_path=None)
    assert settings.http_allow_cidrs == ("127.0.0.0/8", "::1/128")
    assert settings.egress_policy().refusal("127.0.0.1") is None
    assert "DENY" in (settings.egress_policy().refusal("10.1.2.3") or "")
    assert settings.masked()["secrets_key"] == "***"
    with pytest.raises(ConfigError) as raised:
        load_settings({}, environ={"JOBSCHED_HTTP_DENY_CIDRS": "10.0.0.0/8,10.0.0.x"},
                      config_path=None)
    message = str(raised.value)
    assert "\n" not in message and "JOBSCHED_HTTP_DENY_CIDRS" in message
    assert "'10.0.0.x' is not an IP range" in message
    with pytest.raises(ConfigError) as raised:
        load_settings({}, environ={"JOBSCHED_SECRETS_KEY": "not-a-fernet-key-but-secret"},
                      config_path=None)
    assert "JOBSCHED_SECRETS_KEY" in str(raised.value)
    assert "not-a-fernet-key-but-secret" not in str(raised.value)
    assert load_settings({}, environ={"JOBSCHED_SECRETS_KEY": ""},
                         config_path=None).secrets_key is None
