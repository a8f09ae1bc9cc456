"""Webhook delivery against a real aiohttp receiver on loopback.

Signatures are checked with the `standardwebhooks` package, not with genqueue's own code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import socket
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import msgspec
import pytest
from aiohttp import web
from conftest import run
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from genqueue.config import Config, load_config
from genqueue.errors import ConfigError
from genqueue.policies import parse_delays_s
from genqueue.retry import RetryPolicy
from genqueue.webhooks import (
    Delivery,
    SendOutcome,
    WebhookEvent,
    WebhookResult,
    WebhookSigner,
    delivery_id,
    encode_event,
    iso_timestamp,
    new_delivery,
    parse_secrets,
    send,
)

T = TypeVar("T")

SECRET_A = "whsec_" + base64.b64encode(b"secret-a-" * 4).decode()
SECRET_B = "whsec_" + base64.b64encode(b"secret-b-" * 4).decode()
SECRET_C = "whsec_" + base64.b64encode(b"secret-c-" * 4).decode()


# --- a real receiver ---------------------------------------------------------------------


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)


@asynccontextmanager
async def receiver(status: int = 200, *, hang: bool = False) -> AsyncIterator[Receiver]:
    """An aiohttp app on a free loopback port that records each POST and answers `status`;
    with `hang`, it holds every request until the test is done with it."""
    release = asyncio.Event()
    got = Receiver(url="")

    async def handle(request: web.Request) -> web.Response:
        got.requests.append(Received(await request.read(), dict(request.headers)))
        if hang:
            await release.wait()
        headers = {"Location": "/hook"} if 300 <= status < 400 else None
        return web.Response(status=status, headers=headers)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    got.url = f"http://{host}:{port}/hook"
    try:
        yield got
    finally:
        release.set()
        await runner.cleanup()


async def attempt(
    url: str, delivery: Delivery, signer: WebhookSigner | None, **kwargs: Any
) -> SendOutcome:
    kwargs.setdefault("now_s", time.time())
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        return await send(session, url, delivery, signer, **kwargs)


def completed_event() -> WebhookEvent:
    return WebhookEvent(
        event="generation.completed",
        job_id="job-1",
        generation_id="job-1",
        user_id="user-7",
        status="completed",
        timestamp=iso_timestamp(1_700_000_000.25),
        result=WebhookResult(video_url="https://cdn.example/v.mp4", processing_time=42.5),
    )


def failed_event() -> WebhookEvent:
    return WebhookEvent(
        event="generation.failed",
        job_id="job-2",
        generation_id="job-2",
        user_id="user-7",
        status="failed",
        timestamp=iso_timestamp(1_700_000_000),
        error="safety filter",
    )


def a_delivery(event: WebhookEvent | None = None) -> Delivery:
    return new_delivery(event or completed_event(), seq=0, now_s=1_700_000_000)


# --- sending -------------------------------------------------------------------------------


def test_delivery_verifies_with_standardwebhooks() -> None:
    async def go() -> tuple[SendOutcome, Receiver]:
        async with receiver(200) as rx:
            return await attempt(rx.url, a_delivery(), WebhookSigner([SECRET_A])), rx

    outcome, rx = run(go())
    assert outcome.ok and outcome.status == 200 and outcome.error is None
    (req,) = rx.requests
    payload = Webhook(SECRET_A).verify(req.body, req.headers)
    assert payload["jobId"] == "job-1"
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["webhook-signature"].startswith("v1,")


def test_rotation_verifies_with_either_secret_alone() -> None:
    async def go() -> Receiver:
        async with receiver(204) as rx:
            await attempt(rx.url, a_delivery(), WebhookSigner([SECRET_A, SECRET_B]))
            return rx

    (req,) = run(go()).requests
    assert len(req.headers["webhook-signature"].split(" ")) == 2
    Webhook(SECRET_A).verify(req.body, req.headers)
    Webhook(SECRET_B).verify(req.body, req.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_C).verify(req.body, req.headers)


def test_redelivery_keeps_id_and_bytes_and_dates_each_attempt() -> None:
    delivery = a_delivery()
    signer = WebhookSigner([SECRET_A])
    now = time.time()

    async def go() -> Receiver:
        async with receiver(200) as rx:
            await attempt(rx.url, delivery, signer, now_s=now)
            await attempt(rx.url, delivery, signer, now_s=now + 90)
            return rx

    first, second = run(go()).requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.id
    assert first.body == second.body == delivery.body
    assert first.headers["webhook-timestamp"] == str(int(now))
    assert second.headers["webhook-timestamp"] == str(int(now + 90))
    for req in (first, second):
        Webhook(SECRET_A).verify(req.body, req.headers)


def test_unsigned_delivery_still_carries_id_and_timestamp() -> None:
    async def go() -> Receiver:
        async with receiver(200) as rx:
            await attempt(rx.url, a_delivery(), None, now_s=1_700_000_123.9)
            return rx

    (req,) = run(go()).requests
    assert "webhook-signature" not in req.headers
    assert req.headers["webhook-timestamp"] == "1700000123"
    assert req.headers["webhook-id"].startswith("msg_")


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(503, True), (500, True), (429, True), (400, True), (302, True), (410, False)],
)
def test_failed_status_classification(status: int, retryable: bool) -> None:
    async def go() -> tuple[SendOutcome, Receiver]:
        async with receiver(status) as rx:
            return await attempt(rx.url, a_delivery(), WebhookSigner([SECRET_A])), rx

    outcome, rx = run(go())
    assert not outcome.ok
    assert outcome.status == status and outcome.retryable is retryable
    assert outcome.error is not None and str(status) in outcome.error
    assert len(rx.requests) == 1  # a redirect is not followed


def test_hanging_receiver_times_out_retryably() -> None:
    async def go() -> SendOutcome:
        async with receiver(200, hang=True) as rx:
            return await attempt(rx.url, a_delivery(), WebhookSigner([SECRET_A]), timeout_s=0.3)

    outcome = run(go())
    assert not outcome.ok and outcome.retryable and outcome.status is None
    assert outcome.error is not None and "timed out" in outcome.error
    assert outcome.duration_ms >= 250


def test_refused_connection_is_retryable_and_does_not_raise() -> None:
    with socket.socket() as sock:  # bound, not listening: connecting is refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        outcome = run(attempt(f"http://127.0.0.1:{port}/hook", a_delivery(), None))
    assert not outcome.ok and outcome.retryable and outcome.status is None
    assert outcome.error


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/hook"])
def test_unusable_url_is_dead_at_once(url: str) -> None:
    outcome = run(attempt(url, a_delivery(), None))
    assert not outcome.ok and not outcome.retryable
    assert outcome.error == "invalid webhook URL"


# --- payloads ------------------------------------------------------------------------------


def test_completed_payload_shape_on_the_wire() -> None:
    async def go() -> Receiver:
        async with receiver(200) as rx:
            await attempt(rx.url, a_delivery(), None)
            return rx

    (req,) = run(go()).requests
    assert json.loads(req.body) == {
        "event": "generation.completed",
        "jobId": "job-1",
        "generationId": "job-1",
        "userId": "user-7",
        "status": "completed",
        "result": {"videoUrl": "https://cdn.example/v.mp4", "processingTime": 42.5},
        "timestamp": "2023-11-14T22:13:20.250Z",
    }


def test_failed_payload_has_error_and_no_nulls() -> None:
    payload = json.loads(encode_event(failed_event()))
    assert payload == {
        "event": "generation.failed",
        "jobId": "job-2",
        "generationId": "job-2",
        "userId": "user-7",
        "status": "failed",
        "error": "safety filter",
        "timestamp": "2023-11-14T22:13:20.000Z",
    }


def test_delivery_ids_are_stable_per_job_and_seq() -> None:
    delivery = new_delivery(completed_event(), seq=3, now_s=5.0)
    again = new_delivery(completed_event(), seq=3, now_s=9.0)
    assert delivery.id == delivery_id("job-1", 3) == again.id
    assert delivery.id != delivery_id("job-1", 4) != delivery_id("job-2", 3)
    assert delivery.body == encode_event(completed_event())
    assert (delivery.state, delivery.attempts, delivery.next_attempt_at) == ("pending", 0, 5.0)


@pytest.mark.parametrize("codec", [msgspec.json, msgspec.msgpack])
def test_delivery_record_round_trips_and_old_records_get_defaults(codec: Any) -> None:
    delivery = a_delivery()
    stored = codec.encode(delivery)
    assert codec.decode(stored, type=Delivery) == delivery
    old = codec.encode(
        {"id": "msg_x", "job_id": "j", "seq": 0, "event": completed_event(), "body": b"{}"}
    )
    restored = codec.decode(old, type=Delivery)
    assert restored.state == "pending" and restored.last_status is None and restored.body == b"{}"


# --- secrets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("s3cr3t-without-the-prefix", "must start with"),
        ("whsec_not*base64*at*all", "not valid base64"),
        ("whsec_c2VjcmV0 LXZhbHVl", "not valid base64"),
        ("whsec_", "empty"),
        ("whsec_====", "empty"),
    ],
)
def test_bad_secret_is_named_but_never_shown(secret: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        WebhookSigner([SECRET_A, secret])
    assert "#2" in str(caught.value)
    shown = "".join(traceback.format_exception(caught.value))
    secret_part = secret.removeprefix("whsec_").strip("=")
    if secret_part:  # an empty secret has nothing to leak
        assert secret_part not in shown


def test_no_secret_is_an_error() -> None:
    with pytest.raises(ValueError, match="no webhook secret"):
        WebhookSigner([])


def test_signer_repr_hides_secrets() -> None:
    text = repr(WebhookSigner([SECRET_A, SECRET_B]))
    assert SECRET_A not in text and SECRET_A.removeprefix("whsec_") not in text
    assert "2 secret" in text


def test_unpadded_secret_is_accepted_like_standardwebhooks_does() -> None:
    secret = "whsec_" + base64.b64encode(b"x" * 31).decode().rstrip("=")
    signer = WebhookSigner(secret)
    headers = signer.headers("msg_1", int(time.time()), b'{"a":1}')
    Webhook(secret).verify(b'{"a":1}', headers)


@pytest.mark.parametrize("text", ["whsec_a whsec_b", "whsec_a,whsec_b", " whsec_a ,\n whsec_b, "])
def test_parse_secrets(text: str) -> None:
    assert parse_secrets(text) == ("whsec_a", "whsec_b")


def test_parse_secrets_of_nothing_is_empty() -> None:
    assert parse_secrets("  ") == ()


# --- the retry schedule (Config.webhook_retry, a RetryPolicy) -----------------------------


def test_default_schedule_is_svix() -> None:
    policy = Config().webhook_retry
    # 0 s (the first attempt, at once), then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h
    assert policy.intervals_s == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert policy.jitter == 0.1 and policy.maximum_attempts == 8


def test_exhausted_schedule_gives_up() -> None:
    policy = Config(webhook_retry_s="0,1").webhook_retry
    rng = random.Random(1)
    assert [policy.gives_up(n) for n in (1, 2)] == [False, True]
    assert policy.delay_s(1, rng) == pytest.approx(1.0, rel=0.1)
    assert Config().webhook_retry.gives_up(8) and not Config().webhook_retry.gives_up(7)


def test_attempt_zero_is_an_error() -> None:
    with pytest.raises(ValueError, match="attempt"):
        Config().webhook_retry.delay_s(0, random.Random(1))


@given(
    delays=st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=10),
    jitter=st.floats(min_value=0, max_value=0.99),
    attempt_no=st.integers(min_value=1, max_value=12),
    seed=st.integers(),
)
def test_jitter_stays_within_bounds(
    delays: list[float], jitter: float, attempt_no: int, seed: int
) -> None:
    policy = RetryPolicy.schedule(tuple(delays), jitter=jitter)
    assert policy.gives_up(attempt_no) == (attempt_no > len(delays))
    delay = policy.delay_s(attempt_no, random.Random(seed))
    assert delay == policy.delay_s(attempt_no, random.Random(seed))  # pure
    base = delays[min(attempt_no, len(delays)) - 1]
    assert base * (1 - jitter) <= delay <= base * (1 + jitter)
    if base == 0:
        assert delay == 0


def test_parse_webhook_retry_s() -> None:
    assert parse_delays_s("0,5,300") == (0.0, 5.0, 300.0)
    assert parse_delays_s(" 0 , 0.25,1.5 ") == (0.0, 0.25, 1.5)
    policy = load_config(env={"GENQUEUE_WEBHOOK_RETRY_S": "0,0.25,1.5"}).webhook_retry
    assert policy.intervals_s == (0.25, 1.5) and policy.maximum_attempts == 3


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "#1 is empty"),
        ("0,5,", "#3 is empty"),
        ("0,five", "#2 'five' is not a number"),
        ("0,-5", "#2 '-5' must be finite and >= 0"),
        ("nan", "#1 'nan' must be finite"),
        ("0;5", "#1 '0;5' is not a number"),
    ],
)
def test_parse_webhook_retry_s_errors(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_delays_s(text)
    assert problem in str(caught.value)
    with pytest.raises(ConfigError) as named:
        load_config(env={"GENQUEUE_WEBHOOK_RETRY_S": text or ","})
    assert "GENQUEUE_WEBHOOK_RETRY_S" in str(named.value)


@pytest.mark.parametrize(
    ("delays", "jitter"), [((1, -1), 0.1), ((1, float("inf")), 0.1), ((1,), 1.0)]
)
def test_bad_schedule_is_refused(delays: tuple[float, ...], jitter: float) -> None:
    with pytest.raises(ValueError):
        RetryPolicy.schedule(delays, jitter=jitter)


def test_iso_timestamp_matches_javascript() -> None:
    assert iso_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert iso_timestamp(1_700_000_000.9999) == "2023-11-14T22:13:20.999Z"
