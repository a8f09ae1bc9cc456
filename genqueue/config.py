"""Config: defaults, then an optional TOML file, then the environment (DESIGN.md names)."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from genqueue import policies
from genqueue.convert import Refused, convert
from genqueue.errors import ConfigError
from genqueue.retry import RetryPolicy

__all__ = ["ENV_NAMES", "SECRET_FIELDS", "Config", "load_config", "secret_values"]

DispatchMode = Literal["alarm", "immediate", "cron", "sqs"]


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Every setting of genqueue; TOML keys are these field names, but for two timeouts
    whose keys say less than their fields (`job_timeout_s`, `timeout_s`: see below)."""

    # server and storage
    host: str = "127.0.0.1"
    port: int = 8787
    data_dir: str = "./data"
    synchronous: Literal["NORMAL", "FULL"] = "FULL"
    api_keys: str = ""
    # connections (`serve`): caps and deadlines one client cannot stretch
    max_connections: int = 1000  # open at once (0: no cap); past it a 503 and a close
    header_timeout_s: float = 30.0  # to send a request head (also the idle keep-alive time)
    body_timeout_s: float = 30.0  # to send a request body once its head arrived: else a 408
    max_streams_per_key: int = 32  # open event streams per API key (0: no cap): else a 429
    # queue
    dispatch: DispatchMode = "alarm"
    max_concurrency: int = 4
    max_per_user: int = 0
    max_queued: int = 100_000  # waiting jobs in all (0: no cap); past it a submit is refused
    max_queued_per_user: int = 1000  # waiting jobs of one user (0: no cap)
    rate_limit_per_minute: int = 0
    cron_interval_s: float = 60.0
    retention_days: float = 7.0
    retention_interval_s: float = 3600.0
    idle_timeout_s: float = 60.0
    live_actors_soft_cap: int = 1024  # above it, a job waiting on its coroutine is passivated
    # A job's attempts (`job_retry`): max_attempts in all (0 counts as 1), the first retry
    # retry_backoff_s after a failure, each next one twice as late.
    max_attempts: int = 3
    retry_backoff_s: float = 2.0
    # The job watchdog: how long one attempt of a job may be processing (the provider's
    # operation, the download, the store) before the QueueActor tells it that it timed out.
    job_watchdog_s: float = msgspec.field(default=900.0, name="job_timeout_s")
    # after the state store failed (disk full or read-only): how often to look whether the
    # data directory takes writes again, then reopen the queue from disk
    store_retry_s: float = 5.0
    # Veo (genqueue.providers.veo.settings resolves the empty defaults per door)
    veo3_api_key: str = ""
    veo3_base_url: str = ""  # gemini: generativelanguage.googleapis.com; vertex: by location
    veo3_model: str = ""  # gemini: veo-3.1-generate-preview; vertex: veo-3.1-generate-001
    veo3_models: str = ""  # the models a request may choose (comma-separated; + veo3_model)
    veo3_dialect: Literal["", "gemini", "vertex"] = ""  # "": vertex when a project is known
    vertex_access_token: str = ""
    vertex_project: str = ""
    vertex_location: str = "us-central1"
    vertex_output_gcs_uri: str = ""  # gs://bucket/prefix: Vertex writes videos there
    google_application_credentials: str = ""  # a service-account key file (ADC)
    gcs_base_url: str = "https://storage.googleapis.com"  # where gs:// results are read
    # A start whose answer was lost (timeout or reset after the request went out, a 2xx body
    # that cannot be read, or a poll's 404 for its operation) may have been paid for: "fail"
    # fails the job and never starts it again; "retry" starts it again, knowingly risking a
    # second charge. Both count it (ambiguousStarts).
    veo3_ambiguous_start: Literal["fail", "retry"] = "fail"
    veo3_audio_block_retries: int = 2  # new operations after "You have not been charged"
    veo3_quota_pause_s: float = 3600.0  # dispatch pause after a per-day quota exhaustion
    veo3_result_timeout_s: float = 300.0  # a poll that may carry inline 1080p videos
    veo3_price_per_s: float = 0.0  # 0: the dated defaults (genqueue.providers.veo.prices)
    # fal.ai (genqueue.providers.fal): offered with a FAL_KEY (or, with no keys at all,
    # against a built-in fake, as Veo is)
    fal_key: str = ""
    fal_queue_run_host: str = "queue.fal.run"  # fal-client's own name for the queue host
    fal_model: str = "fal-ai/veo3.1"
    fal_models: str = ""  # the fal models a request may choose ("": all that genqueue knows)
    fal_price_per_s: float = 0.0  # 0: the dated defaults (genqueue.providers.fal.models)
    fal_rate_limit_per_minute: int = 0  # fal's own token bucket (0: no limit)
    fal_max_concurrency: int = 0  # fal's own cap (0: only GENQUEUE_MAX_CONCURRENCY)
    # a user's spend a UTC day (prices' unit), committed and in flight; 0: no budget
    budget_per_user_day: float = 0.0
    poll_interval_s: float = 5.0
    # A provider call's transient failures (`provider_retry`): max_retries more tries, 1 s
    # after the first failure, doubling, at most 60 s (a Retry-After wins); max_retries also
    # bounds the new operations one attempt starts after an operation failed.
    max_retries: int = 3
    # How long a provider's operation may run, from its start to its end (the polls stop).
    provider_operation_timeout_s: float = msgspec.field(default=900.0, name="timeout_s")
    # videos
    storage: Literal["local", "s3"] = "local"
    s3_bucket: str = ""
    s3_endpoint_url: str = ""
    s3_public_base_url: str = ""
    s3_presign_expiry_s: int = 3600
    aws_access_key_id: str = ""
    aws_secret_access_key: str = ""
    aws_region: str = ""
    public_base_url: str = ""
    video_url_ttl_s: float = 7 * 24 * 3600.0  # how long a signed local video URL is valid
    # webhooks
    webhook_url: str = ""
    nextjs_url: str = ""
    webhook_secret: str = ""
    webhook_retry_s: str = "0,5,300,1800,7200,18000,36000,36000"
    webhook_timeout_s: float = 15.0
    webhook_events_started: bool = False
    webhook_events_progress: bool = False
    # several machines (dispatch = "sqs"): genqueue/cluster/
    sqs_endpoint_url: str = ""
    sqs_prefix: str = "genqueue"
    sqs_max_receives: int = 5  # receives of one work message before the dead-letter queue
    sqs_wait_s: int = 20  # long polling (SQS allows 0-20)
    worker_concurrency: int = 16
    worker_lease_s: int = 60  # visibility of a work message; a heartbeat renews it
    # logs
    log_level: Literal["DEBUG", "INFO", "WARN", "ERROR"] = "INFO"

    def __post_init__(self) -> None:
        _check_positive(
            self,
            "max_concurrency",
            "poll_interval_s",
            "cron_interval_s",
            "video_url_ttl_s",
            "header_timeout_s",
            "body_timeout_s",
            "job_watchdog_s",
            "provider_operation_timeout_s",
        )
        _check_non_negative(
            self,
            "max_per_user",
            "max_queued",
            "max_queued_per_user",
            "max_connections",
            "max_streams_per_key",
            "rate_limit_per_minute",
            "retention_days",
            "veo3_audio_block_retries",
            "veo3_price_per_s",
            "fal_price_per_s",
            "budget_per_user_day",
            "fal_rate_limit_per_minute",
            "fal_max_concurrency",
        )
        _check_positive(self, "veo3_quota_pause_s", "veo3_result_timeout_s")
        _check_positive(self, "worker_concurrency", "worker_lease_s")
        if not 0 <= self.sqs_wait_s <= 20:
            raise ConfigError(f"sqs_wait_s: must be 0-20 (SQS long polling), got {self.sqs_wait_s}")
        if self.sqs_max_receives < 2:
            raise ConfigError(f"sqs_max_receives: must be 2 or more, got {self.sqs_max_receives}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port: {self.port} is not a TCP port")
        _check_webhooks(self)
        _check_retries(self)

    @property
    def webhook_target(self) -> str:
        """WEBHOOK_URL, or the plan's NEXTJS_URL + /api/webhooks/worker, or empty."""
        if self.webhook_url:
            return self.webhook_url
        if self.nextjs_url:
            return self.nextjs_url.rstrip("/") + "/api/webhooks/worker"
        return ""

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    # -- the retry policies (genqueue/policies.py), from their keys

    @property
    def job_retry(self) -> RetryPolicy:
        """A job's attempts: max_attempts, retry_backoff_s doubling."""
        return policies.job_retry(self.max_attempts, self.retry_backoff_s)

    @property
    def provider_retry(self) -> RetryPolicy:
        """A provider call's transient failures: max_retries more tries, 1 s doubling."""
        return policies.provider_retry(self.max_retries)

    @property
    def webhook_retry(self) -> RetryPolicy:
        """A webhook delivery: the delays of webhook_retry_s, 10% jitter."""
        return policies.webhook_retry(self.webhook_retry_s)


def _check_webhooks(cfg: Config) -> None:
    """A bad WEBHOOK_SECRET stops the start with one line naming it (the message never
    quotes the secret)."""
    from genqueue.webhooks.signing import WebhookSigner, parse_secrets

    secrets = parse_secrets(cfg.webhook_secret)
    try:
        if secrets:
            WebhookSigner(secrets)
    except ValueError as exc:
        raise ConfigError(
            f"webhook_secret (environment WEBHOOK_SECRET): {exc}; expected whsec_ and base64,"
            " two secrets space-separated during a rotation"
        ) from None


def _check_retries(cfg: Config) -> None:
    """Every retry policy builds from its keys, or the start stops naming the bad one."""
    _check_non_negative(cfg, "max_attempts", "retry_backoff_s", "max_retries")
    builders = {
        "retry_backoff_s": lambda: cfg.job_retry,
        "max_retries": lambda: cfg.provider_retry,
        "webhook_retry_s": lambda: cfg.webhook_retry,
    }
    for name, build in builders.items():
        try:
            build()
        except ValueError as exc:
            raise ConfigError(f"{_key(name)}: {exc}") from None


def _key(name: str) -> str:
    """A field as the user wrote it: its TOML key, and its environment name if it has one."""
    key = _TOML_KEYS.get(name, name)
    env = next((env for env, field in ENV_NAMES.items() if field == key), None)
    return key if env is None else f"{key} (environment {env})"


def _check_positive(cfg: Config, *names: str) -> None:
    for name in names:
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{_key(name)}: must be greater than 0, got {getattr(cfg, name)}")


def _check_non_negative(cfg: Config, *names: str) -> None:
    for name in names:
        if not getattr(cfg, name) >= 0:
            raise ConfigError(f"{_key(name)}: must be 0 or more, got {getattr(cfg, name)}")


# Config field -> its TOML key, where the two differ.
_TOML_KEYS = {
    f.name: f.encode_name for f in msgspec.structs.fields(Config) if f.name != f.encode_name
}

# Environment name -> TOML key (DESIGN.md "Public contract", plus a few of ours).
ENV_NAMES: dict[str, str] = {
    "GENQUEUE_HOST": "host",
    "GENQUEUE_PORT": "port",
    "GENQUEUE_DATA_DIR": "data_dir",
    "GENQUEUE_SYNCHRONOUS": "synchronous",
    "GENQUEUE_API_KEYS": "api_keys",
    "GENQUEUE_MAX_CONNECTIONS": "max_connections",
    "GENQUEUE_HEADER_TIMEOUT_S": "header_timeout_s",
    "GENQUEUE_BODY_TIMEOUT_S": "body_timeout_s",
    "GENQUEUE_MAX_STREAMS_PER_KEY": "max_streams_per_key",
    "GENQUEUE_DISPATCH": "dispatch",
    "GENQUEUE_MAX_CONCURRENCY": "max_concurrency",
    "GENQUEUE_MAX_PER_USER": "max_per_user",
    "GENQUEUE_MAX_QUEUED": "max_queued",
    "GENQUEUE_MAX_QUEUED_PER_USER": "max_queued_per_user",
    "GENQUEUE_RATE_LIMIT_PER_MINUTE": "rate_limit_per_minute",
    "GENQUEUE_CRON_INTERVAL_S": "cron_interval_s",
    "GENQUEUE_RETENTION_DAYS": "retention_days",
    "GENQUEUE_IDLE_TIMEOUT_S": "idle_timeout_s",
    "GENQUEUE_JOB_TIMEOUT_S": "job_timeout_s",
    "GENQUEUE_MAX_ATTEMPTS": "max_attempts",
    "VEO3_API_KEY": "veo3_api_key",
    "VEO3_BASE_URL": "veo3_base_url",
    "VEO3_MODEL": "veo3_model",
    "VEO3_MODELS": "veo3_models",
    "VEO3_DIALECT": "veo3_dialect",
    "VERTEX_ACCESS_TOKEN": "vertex_access_token",
    "VERTEX_PROJECT": "vertex_project",
    "VERTEX_LOCATION": "vertex_location",
    "VERTEX_OUTPUT_GCS_URI": "vertex_output_gcs_uri",
    "GOOGLE_APPLICATION_CREDENTIALS": "google_application_credentials",
    "GENQUEUE_GCS_BASE_URL": "gcs_base_url",
    "VEO3_AMBIGUOUS_START": "veo3_ambiguous_start",
    "VEO3_AUDIO_BLOCK_RETRIES": "veo3_audio_block_retries",
    "VEO3_QUOTA_PAUSE_S": "veo3_quota_pause_s",
    "VEO3_RESULT_TIMEOUT_S": "veo3_result_timeout_s",
    "VEO3_PRICE_PER_S": "veo3_price_per_s",
    "FAL_KEY": "fal_key",
    "FAL_QUEUE_RUN_HOST": "fal_queue_run_host",
    "FAL_MODEL": "fal_model",
    "FAL_MODELS": "fal_models",
    "FAL_PRICE_PER_S": "fal_price_per_s",
    "GENQUEUE_BUDGET_PER_USER_DAY": "budget_per_user_day",
    "GENQUEUE_FAL_RATE_LIMIT_PER_MINUTE": "fal_rate_limit_per_minute",
    "GENQUEUE_FAL_MAX_CONCURRENCY": "fal_max_concurrency",
    "GENQUEUE_POLL_INTERVAL_S": "poll_interval_s",
    "GENQUEUE_STORAGE": "storage",
    "S3_BUCKET": "s3_bucket",
    "S3_ENDPOINT_URL": "s3_endpoint_url",
    "S3_PUBLIC_BASE_URL": "s3_public_base_url",
    "AWS_ACCESS_KEY_ID": "aws_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
    "AWS_REGION": "aws_region",
    "GENQUEUE_PUBLIC_BASE_URL": "public_base_url",
    "GENQUEUE_VIDEO_URL_TTL_S": "video_url_ttl_s",
    "WEBHOOK_URL": "webhook_url",
    "NEXTJS_URL": "nextjs_url",
    "WEBHOOK_SECRET": "webhook_secret",
    "GENQUEUE_WEBHOOK_RETRY_S": "webhook_retry_s",
    "GENQUEUE_LOG_LEVEL": "log_level",
    "SQS_ENDPOINT_URL": "sqs_endpoint_url",
    "GENQUEUE_SQS_PREFIX": "sqs_prefix",
    "GENQUEUE_SQS_MAX_RECEIVES": "sqs_max_receives",
    "GENQUEUE_SQS_WAIT_S": "sqs_wait_s",
    "GENQUEUE_WORKER_CONCURRENCY": "worker_concurrency",
    "GENQUEUE_WORKER_LEASE_S": "worker_lease_s",
}

# Values that must never be printed or logged.
SECRET_FIELDS = frozenset(
    {
        "api_keys",
        "veo3_api_key",
        "vertex_access_token",
        "aws_secret_access_key",
        "webhook_secret",
        "fal_key",
    }
)


def secret_values(cfg: Config) -> list[str]:
    """Every secret of `cfg` for the log redactor, each one on its own: a whole setting, and
    each part of it that could show up alone in a log line (each API key of
    GENQUEUE_API_KEYS, each secret of a WEBHOOK_SECRET rotation and its base64 body)."""
    found: set[str] = set()
    for name in SECRET_FIELDS:
        value = str(getattr(cfg, name))
        found.add(value)
        found.update(value.split())
    for entry in cfg.api_keys.split(","):
        entry = entry.strip()
        # `key=user[:admin][:maxpriority=N]`: the key is the text before one of the "="
        # (a key may hold "=" itself); register each candidate, never miss the key.
        found.update(entry[:i].strip() for i, ch in enumerate(entry) if ch == "=")
    for secret in re.split(r"[\s,]+", cfg.webhook_secret):
        found.add(secret)
        found.add(secret.removeprefix("whsec_"))
    return sorted(s for s in found if s)


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Config:
    """Defaults, then the TOML file at `path`, then `env` (default os.environ), then overrides."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    source: dict[str, str] = {}  # where each key's value came from, for a bad value's message
    if path is not None:
        try:
            raw.update(tomllib.loads(Path(path).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        source.update(dict.fromkeys(raw, f"in {path}"))
    for name, field in ENV_NAMES.items():
        if env.get(name, "") != "":
            raw[field] = env[name]
            source[field] = f"environment {name}"
    given = {k: v for k, v in overrides.items() if v is not None}
    raw.update(given)
    source.update(dict.fromkeys(given, "given"))
    try:
        cfg: Config = convert(raw, Config, strict=False)
    except Refused as exc:
        key = str(exc.path[0]) if exc.path else ""
        where = f" ({source[key]})" if key in source else ""
        raise ConfigError(f"bad configuration: {exc.field}{where}: {exc.reason}") from None
    return cfg
