"""config/jobsched.toml lists every setting, each at its default: the file is where a
person looks for what can be set."""

from __future__ import annotations

import re
import tomllib

from jobsched.settings import Settings, load_settings
from tests.helpers import ROOT

CONFIG = ROOT / "config" / "jobsched.toml"


def test_the_config_file_names_every_setting_and_no_other() -> None:
    text = CONFIG.read_text()
    active = set(tomllib.loads(text)["jobsched"])
    # Settings without a default worth writing (or never to be written to a file, like
    # secrets_key) appear commented out, as "# key = example".
    commented = set(re.findall(r"^#\s*([a-z][a-z0-9_]*)\s*=", text, re.MULTILINE))
    fields = set(Settings.model_fields)
    assert fields - active - commented == set(), "settings missing from the file"
    assert active - fields == set(), "keys the settings model does not know"
    assert commented - fields == set(), "commented keys the settings model does not know"


def test_the_values_in_the_config_file_are_the_defaults() -> None:
    from_file = load_settings({"instance": "x"}, environ={}, config_path=CONFIG)
    assert from_file == Settings(instance="x")
