"""config.load: the load-scraping and audit settings."""

import pytest

from kvsync.daemon import config
from kvsync.errors import ConfigError


def test_load_and_audit_defaults() -> None:
    settings = config.load([], {})
    assert (settings.load_interval_seconds, settings.load_timeout_seconds) == (1.0, 0.5)
    assert settings.load_concurrency == 32
    assert (settings.audit_window_seconds, settings.audit_max_answers) == (300.0, 100_000)


def test_flags_and_env_vars() -> None:
    settings = config.load(
        ["--load-interval-seconds", "0", "--audit-max-answers", "0"],
        {"KVSYNC_LOAD_TIMEOUT_SECONDS": "2.5", "KVSYNC_LOAD_CONCURRENCY": "8",
         "KVSYNC_AUDIT_WINDOW_SECONDS": "60"},
    )  # fmt: skip
    assert (settings.load_interval_seconds, settings.load_timeout_seconds) == (0.0, 2.5)
    assert (settings.load_concurrency, settings.audit_window_seconds) == (8, 60.0)
    assert settings.audit_max_answers == 0


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--load-interval-seconds", "-1"], "--load-interval-seconds"),
        (["--load-timeout-seconds", "0"], "--load-timeout-seconds"),
        (["--load-concurrency", "0"], "--load-concurrency"),
        (["--audit-window-seconds", "soon"], "--audit-window-seconds"),
        (["--audit-max-answers", "-5"], "--audit-max-answers"),
    ],
)
def test_invalid_values_name_the_flag(argv: list[str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        config.load(argv, {})
