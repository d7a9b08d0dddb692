"""The docs cannot rot: the configuration reference is regenerated from the models and compared."""

from __future__ import annotations

from backupd.docgen import render
from tests.conftest import REPO


def test_configuration_reference_matches_models():
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == render(), "docs/configuration.md is out of date: run `make docs`"


def test_every_config_key_is_documented():
    from backupd.config import Config

    text = (REPO / "docs" / "configuration.md").read_text()
    for name in Config.model_fields:
        assert f"`[{name}]`" in text or f"`[[{name}]]`" in text
