"""Config from defaults, TOML and the environment; JSON logs with secrets redacted."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from genqueue.config import ENV_NAMES, Config, load_config
from genqueue.errors import ConfigError
from genqueue.log import setup_logging


def test_defaults_then_toml_then_environment(tmp_path) -> None:
    toml = tmp_path / "genqueue.toml"
    toml.write_text('max_concurrency = 7\ndispatch = "cron"\nport = 9000\n')
    cfg = load_config(toml, env={"GENQUEUE_MAX_CONCURRENCY": "9"})
    assert cfg.max_concurrency == 9  # the environment wins over the file
    assert cfg.dispatch == "cron" and cfg.port == 9000  # the file wins over defaults
    assert cfg.synchronous == "FULL" and cfg.rate_limit_per_minute == 0


def test_every_public_environment_name_is_parsed() -> None:
    public = [
        "GENQUEUE_DATA_DIR",
        "GENQUEUE_API_KEYS",
        "GENQUEUE_MAX_CONCURRENCY",
        "GENQUEUE_DISPATCH",
        "GENQUEUE_RATE_LIMIT_PER_MINUTE",
        "GENQUEUE_MAX_PER_USER",
        "VEO3_API_KEY",
        "VEO3_BASE_URL",
        "WEBHOOK_URL",
        "NEXTJS_URL",
        "WEBHOOK_SECRET",
        "GENQUEUE_STORAGE",
        "S3_BUCKET",
        "S3_ENDPOINT_URL",
        "S3_PUBLIC_BASE_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "VEO3_MODEL",
        "VEO3_DIALECT",
        "VERTEX_ACCESS_TOKEN",
        "VERTEX_PROJECT",
        "VERTEX_LOCATION",
        "GENQUEUE_POLL_INTERVAL_S",
        "GENQUEUE_WEBHOOK_RETRY_S",
    ]
    for name in public:
        assert name in ENV_NAMES, name
    cfg = load_config(env={"GENQUEUE_POLL_INTERVAL_S": "0.25", "NEXTJS_URL": "http://app:3000/"})
    assert cfg.poll_interval_s == 0.25
    assert cfg.webhook_target == "http://app:3000/api/webhooks/worker"
    assert (
        load_config(env={"WEBHOOK_URL": "http://h/x", "NEXTJS_URL": "http://app"}).webhook_target
        == "http://h/x"
    )


def test_an_unknown_key_fails_naming_it(tmp_path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("max_concurency = 3\n")
    with pytest.raises(ConfigError, match="max_concurency"):
        load_config(toml, env={})


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GENQUEUE_MAX_CONCURRENCY": "lots"}, "GENQUEUE_MAX_CONCURRENCY"),
        ({"GENQUEUE_DISPATCH": "sometimes"}, "GENQUEUE_DISPATCH"),
        ({"GENQUEUE_MAX_CONCURRENCY": "0"}, "max_concurrency"),
        ({"GENQUEUE_RATE_LIMIT_PER_MINUTE": "-1"}, "rate_limit_per_minute"),
    ],
)
def test_a_bad_value_fails_naming_the_key(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(env=env)


def test_a_bad_value_says_where_it_came_from(tmp_path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('port = "eighty"\nmax_concurency = 3\n')
    with pytest.raises(ConfigError, match=r"max_concurency .*did you mean max_concurrency"):
        load_config(toml, env={})
    toml.write_text('port = "eighty"\n')
    with pytest.raises(ConfigError, match=r"port \(in .*c\.toml\): expected an integer"):
        load_config(toml, env={})
    with pytest.raises(ConfigError, match=r"port \(environment GENQUEUE_PORT\): expected an int"):
        load_config(toml, env={"GENQUEUE_PORT": "eighty"})


def test_config_struct_refuses_unknown_fields() -> None:
    with pytest.raises(TypeError):
        Config(max_concurency=3)  # type: ignore[call-arg]


def test_log_lines_are_json_with_component_event_and_fields() -> None:
    out = io.StringIO()
    setup_logging("INFO", secrets=[], stream=out)
    try:
        logging.getLogger("genqueue.queue").info(
            "job started", extra={"job_id": "j1", "duration_ms": 12}
        )
        doc = orjson.loads(out.getvalue().splitlines()[-1])
        assert doc["level"] == "INFO" and doc["component"] == "queue"
        assert doc["event"] == "job started" and doc["job_id"] == "j1" and doc["duration_ms"] == 12
        assert doc["ts"].endswith("Z")
    finally:
        logging.getLogger().handlers.clear()


def test_secrets_never_reach_a_log_line() -> None:
    out = io.StringIO()
    secret, key = "whsec_c2VjcmV0LXNpZ25pbmcta2V5LTEyMw==", "AIzaSyTopSecretVeoKey123"
    setup_logging("DEBUG", secrets=[key], stream=out)
    try:
        log = logging.getLogger("genqueue.test")
        log.warning("calling veo with %s", key)
        log.warning("signing", extra={"secret": secret, "auth": "Bearer abcdef123456"})
        try:
            raise RuntimeError(f"boom {key}")
        except RuntimeError:
            log.exception("failed")
        text = out.getvalue()
        assert key not in text and secret not in text and "abcdef123456" not in text
        assert text.count("***") >= 4
    finally:
        logging.getLogger().handlers.clear()
