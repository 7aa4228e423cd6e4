"""Settings: defaults, the environment, and one clear line for every bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from service import errors, settings
from tests.conftest import cli_env, run_cli


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv("DATABASE_URL", raising=False)
    for name in [k for k in os.environ if k.startswith("LATENT_TREES_")]:
        monkeypatch.delenv(name)  # a user's exported LATENT_TREES_HOME is not a default
    config = settings.load()
    assert config.database_url is None
    assert config.threshold == 0.6
    assert config.store_floor == 0.4
    assert config.min_active_tokens == 10
    assert config.device == "auto"
    assert config.home.name == "latent-trees"


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LATENT_TREES_HOME", str(tmp_path))
    monkeypatch.setenv("LATENT_TREES_THRESHOLD", "0.7")
    monkeypatch.setenv("LATENT_TREES_LOG_LEVEL", "debug")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    config = settings.load()
    assert (config.home, config.threshold, config.log_level) == (tmp_path, 0.7, "DEBUG")
    assert config.database_url == "postgresql://u@h/db"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("LATENT_TREES_THRESHOLD", "abc", "bad setting LATENT_TREES_THRESHOLD='abc'"),
        ("LATENT_TREES_THRESHOLD", "-1", "greater than or equal to 0"),
        ("LATENT_TREES_DEVICE", "tpu", "'auto', 'cpu' or 'cuda'"),
        ("LATENT_TREES_MIN_ACTIVE_TOKENS", "0", "bad setting LATENT_TREES_MIN_ACTIVE_TOKENS"),
        ("DATABASE_URL", "mysql://x/y", "bad setting DATABASE_URL='mysql://x/y'"),
    ],
)
def test_bad_settings_raise_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(errors.SettingsError) as info:
        settings.load()
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_reports_bad_setting_and_exits_1(tmp_path: Path) -> None:
    proc = run_cli(
        "status", env=cli_env(tmp_path, LATENT_TREES_DEVICE="tpu"), check=False, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "latent-trees: error: bad setting LATENT_TREES_DEVICE='tpu': "
        "input should be 'auto', 'cpu' or 'cuda'"
    ]
    assert not (tmp_path / "pgdata").exists()


def test_cli_reports_unreachable_database(tmp_path: Path) -> None:
    env = cli_env(tmp_path, database_url="postgresql://nobody@127.0.0.1:9/none")
    proc = run_cli("status", env=env, check=False, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("latent-trees: error: database unreachable at ")
