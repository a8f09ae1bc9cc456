"""Config builds every retry policy and both timeouts from their keys; a bad one names its key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from genqueue.config import Config, load_config
from genqueue.errors import ConfigError
from genqueue.retry import RetryPolicy


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "genqueue.toml"
    path.write_text(text)
    return path


def test_default_policies_keep_the_documented_delays() -> None:
    cfg = Config()
    assert cfg.job_retry == RetryPolicy(2.0, 2.0, math.inf, 3)  # 2 s, 4 s, then failed
    assert [cfg.job_retry.delay_s(n) for n in (1, 2)] == [2.0, 4.0]
    assert cfg.provider_retry == RetryPolicy(1.0, 2.0, 60.0, 4)  # 1 s, 2 s, 4 s, then raised
    assert cfg.webhook_retry.maximum_attempts == 8


def test_policies_follow_their_keys(tmp_path: Path) -> None:
    toml = _toml(tmp_path, "retry_backoff_s = 0.5\nmax_retries = 1\n")
    cfg = load_config(toml, env={"GENQUEUE_MAX_ATTEMPTS": "5"})
    assert cfg.job_retry.maximum_attempts == 5
    assert [cfg.job_retry.delay_s(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert cfg.job_retry.gives_up(5) and not cfg.job_retry.gives_up(4)
    assert cfg.provider_retry.maximum_attempts == 2 and cfg.provider_retry.gives_up(2)


def test_max_attempts_zero_keeps_meaning_one_attempt() -> None:
    policy = load_config(env={"GENQUEUE_MAX_ATTEMPTS": "0"}).job_retry
    assert policy.maximum_attempts == 1 and policy.gives_up(1)


def test_the_two_timeouts_keep_their_keys_under_names_that_say_what_they_bound(
    tmp_path: Path,
) -> None:
    toml = _toml(tmp_path, "timeout_s = 120\njob_timeout_s = 50\n")
    from_file = load_config(toml, env={})
    assert from_file.provider_operation_timeout_s == 120.0
    assert from_file.job_watchdog_s == 50.0
    from_env = load_config(toml, env={"GENQUEUE_JOB_TIMEOUT_S": "30"})
    assert from_env.job_watchdog_s == 30.0  # the environment wins, as for every key
    assert load_config(env={}, job_timeout_s=7).job_watchdog_s == 7.0
    defaults = Config()
    assert defaults.job_watchdog_s == 900.0 and defaults.provider_operation_timeout_s == 900.0


@pytest.mark.parametrize(
    ("env", "toml", "named"),
    [
        ({"GENQUEUE_MAX_ATTEMPTS": "-1"}, "", "max_attempts (environment GENQUEUE_MAX_ATTEMPTS)"),
        ({"GENQUEUE_MAX_ATTEMPTS": "many"}, "", "GENQUEUE_MAX_ATTEMPTS"),
        ({}, "retry_backoff_s = -1\n", "retry_backoff_s"),
        ({}, "retry_backoff_s = nan\n", "retry_backoff_s"),
        ({}, "retry_backoff_s = inf\n", "retry_backoff_s"),
        ({}, "max_retries = -1\n", "max_retries"),
        ({}, 'max_retries = "three"\n', "max_retries"),
        ({"GENQUEUE_JOB_TIMEOUT_S": "0"}, "", "job_timeout_s (environment GENQUEUE_JOB_TIMEOUT_S)"),
        ({"GENQUEUE_JOB_TIMEOUT_S": "soon"}, "", "GENQUEUE_JOB_TIMEOUT_S"),
        ({}, "timeout_s = -5\n", "timeout_s: must be greater than 0"),
        ({"GENQUEUE_WEBHOOK_RETRY_S": "0,-5"}, "", "GENQUEUE_WEBHOOK_RETRY_S"),
    ],
)
def test_a_bad_policy_value_names_its_key(
    tmp_path: Path, env: dict[str, str], toml: str, named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_toml(tmp_path, toml), env=env)
    assert named in str(caught.value)


@pytest.mark.parametrize("typo", ["max_attempt", "retry_backof_s", "job_watchdog_s"])
def test_a_mistyped_policy_key_is_named(tmp_path: Path, typo: str) -> None:
    """`job_watchdog_s` is the field's name in code; its key stays `job_timeout_s`."""
    with pytest.raises(ConfigError, match=typo):
        load_config(_toml(tmp_path, f"{typo} = 3\n"), env={})
