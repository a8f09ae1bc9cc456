"""The webhook outbox through the HTTP API: the admin routes (dead letters, replay) and
its counters in `GET /api/queue/status` and `/metrics`, with a real server and a real
aiohttp receiver, both on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from conftest import aeventually
from test_http import Api, assert_error, run, schema_validator, serve

from genqueue.actors.webhook import TERMINAL_SEQ
from genqueue.webhooks import delivery_id

DEAD = "/api/webhooks/dead"


class Receiver:
    """Answers `status[job id]` (default 200); holds the jobs in `hang` until released."""

    def __init__(self) -> None:
        self.status: dict[str, int] = {}
        self.hang: set[str] = set()
        self.hits: list[tuple[str, str, int]] = []  # (webhook-id, job id, answer)
        self.ids: dict[str, str] = {}  # job id -> the webhook-id it last arrived with
        self.changed = asyncio.Condition()
        self.gate = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        job_id = json.loads(await request.read())["jobId"]
        async with self.changed:
            self.ids[job_id] = request.headers["webhook-id"]
            self.hits.append(("arrived", job_id, 0))
            self.changed.notify_all()
        if job_id in self.hang:
            await self.gate.wait()
        status = self.status.get(job_id, 200)
        async with self.changed:
            self.hits.append((request.headers["webhook-id"], job_id, status))
            self.changed.notify_all()
        return web.Response(status=status)

    def answered(self) -> list[tuple[str, str, int]]:
        return [h for h in self.hits if h[0] != "arrived"]

    async def wait(self, predicate: Callable[[], bool]) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), 10)


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rx.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        rx.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        yield rx
    finally:
        rx.gate.set()
        await runner.cleanup()


async def webhooks(api: Api) -> dict[str, Any]:
    status, st, _ = await api.call("GET", "/api/queue/status")
    assert status == 200, st
    return dict(st["webhooks"])


async def wait_webhooks(api: Api, what: str, **expected: Any) -> dict[str, Any]:
    async def check() -> bool:
        figures = await webhooks(api)
        return all(figures[k] == v for k, v in expected.items())

    await aeventually(check, what)
    return await webhooks(api)


async def submit(api: Api, job_id: str) -> None:
    await api.submit(id=job_id)
    await api.wait_done(job_id)


# -- tests ------------------------------------------------------------------------------------


def test_admin_lists_dead_letters_and_replays_one(tmp_path: Path) -> None:
    async def body() -> None:
        async with receiver() as rx, serve(tmp_path, webhook_url=rx.url) as api:
            rx.status["gone"] = 410
            await submit(api, "gone")
            await wait_webhooks(api, "a dead letter", dead=1, deadLetters=1)
            status, page, _ = await api.call("GET", DEAD, "root")
            assert status == 200 and page["nextCursor"] is None
            (item,) = page["items"]
            gone_id = delivery_id(item["payload"]["generationId"], TERMINAL_SEQ)
            assert gone_id == rx.ids["gone"]
            assert item["id"] == gone_id and item["jobId"] == "gone"
            assert item["event"] == "generation.completed" and item["state"] == "dead"
            assert item["attempts"] == 1 and item["lastStatus"] == 410 and item["lastError"]
            assert item["payload"]["jobId"] == "gone" and item["payload"]["userId"] == "alice"
            assert item["createdAt"].endswith("Z")
            _, doc, _ = await api.call("GET", "/api/openapi.json", None)
            assert schema_validator(doc, "DeliveryPage").is_valid(page)

            rx.status["gone"] = 200
            status, again, _ = await api.call("POST", f"/api/webhooks/{gone_id}/replay", "root")
            assert status == 202 and again["id"] == gone_id and again["state"] == "pending"
            assert schema_validator(doc, "WebhookDelivery").is_valid(again)
            await rx.wait(lambda: (gone_id, "gone", 200) in rx.hits)
            assert [h[0] for h in rx.answered()] == [gone_id, gone_id]  # the same webhook-id
            figures = await wait_webhooks(api, "the replay sent", sent=1, pending=0)
            assert figures["dead"] == 1 and figures["deadLetters"] == 0
            status, page, _ = await api.call("GET", DEAD, "root")
            assert status == 200 and page == {"items": [], "nextCursor": None}
            # Replayed and delivered: no longer dead, and delivered ones are not kept.
            status, err, _ = await api.call("POST", f"/api/webhooks/{gone_id}/replay", "root")
            assert_error(status, err, 404, "not_found")

    run(body())


def test_webhook_routes_are_admin_only_and_answer_404_and_409(tmp_path: Path) -> None:
    async def body() -> None:
        async with receiver() as rx, serve(tmp_path, webhook_url=rx.url) as api:
            rx.hang.add("slow")
            await submit(api, "slow")
            await rx.wait(lambda: ("arrived", "slow", 0) in rx.hits)
            slow_id = rx.ids["slow"]
            replay = f"/api/webhooks/{slow_id}/replay"
            for method, path in (("GET", DEAD), ("POST", replay)):
                status, err, _ = await api.call(method, path, "alice")
                assert_error(status, err, 403, "forbidden")
                status, err, headers = await api.call(method, path, None)
                assert_error(status, err, 401, "unauthorized")
                assert headers["WWW-Authenticate"].startswith("Bearer")
            status, err, _ = await api.call("POST", replay, "root")  # in flight: not dead
            assert_error(status, err, 409, "conflict")
            for unknown in (delivery_id("nope", TERMINAL_SEQ), "msg_%2E%2E", "x" * 129):
                status, err, _ = await api.call("POST", f"/api/webhooks/{unknown}/replay", "root")
                assert_error(status, err, 404, "not_found")
            for query, field in (("limit=0", "limit"), ("limit=x", "limit"),
                                 ("limit=101", "limit"), ("cursor=abc", "cursor")):  # fmt: skip
                status, err, _ = await api.call("GET", f"{DEAD}?{query}", "root")
                assert assert_error(status, err, 400, "invalid_request")["field"] == field
            rx.gate.set()
            await wait_webhooks(api, "the slow one sent", sent=1, pending=0)
            status, err, _ = await api.call("POST", replay, "root")
            assert_error(status, err, 404, "not_found")

    run(body())


def test_dead_letters_page_with_a_cursor(tmp_path: Path) -> None:
    async def body() -> None:
        async with receiver() as rx, serve(tmp_path, webhook_url=rx.url) as api:
            ids = ["d-1", "d-2", "d-3", "d-4", "d-5"]
            for job_id in ids:
                rx.status[job_id] = 410
            await asyncio.gather(*(submit(api, job_id) for job_id in ids))
            await wait_webhooks(api, "five dead letters", deadLetters=5)
            seen: list[str] = []
            cursor: str | None = None
            pages = 0
            while True:
                query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
                status, page, _ = await api.call("GET", DEAD + query, "root")
                assert status == 200 and len(page["items"]) <= 2
                seen += [item["jobId"] for item in page["items"]]
                pages += 1
                cursor = page["nextCursor"]
                if cursor is None:
                    break
            # Dead letters list by generation id: each once, in no particular job order.
            assert sorted(seen) == ids and pages == 3

    run(body())


def test_status_and_metrics_show_the_webhook_counters(tmp_path: Path) -> None:
    async def body() -> None:
        async with receiver() as rx, serve(tmp_path, webhook_url=rx.url) as api:
            await submit(api, "ok")
            rx.status["gone"] = 410
            await submit(api, "gone")
            rx.hang.add("slow")
            await submit(api, "slow")
            await rx.wait(lambda: ("arrived", "slow", 0) in rx.hits)
            st = await wait_webhooks(api, "sent, dead, pending", sent=1, dead=1, pending=1)
            assert st["failedAttempts"] == 1 and st["retries"] == 0 and st["inFlight"] == 1
            assert st["deadLetters"] == 1 and st["oldestPendingAgeS"] >= 0
            _, full, _ = await api.call("GET", "/api/queue/status")
            _, doc, _ = await api.call("GET", "/api/openapi.json", None)
            assert schema_validator(doc, "QueueStatus").is_valid(full)
            async with api.session.get("/metrics") as resp:
                text = await resp.text()
            samples = dict(
                line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#")
            )
            for name, value in (
                ("genqueue_webhooks_sent_total", 1),
                ("genqueue_webhooks_failed_attempts_total", 1),
                ("genqueue_webhooks_retries_total", 0),
                ("genqueue_webhooks_dead_total", 1),
                ("genqueue_webhooks_dead_letters", 1),
                ("genqueue_webhooks_pending", 1),
                ("genqueue_webhooks_in_flight", 1),
            ):
                assert float(samples[name]) == value, name
            assert float(samples["genqueue_webhooks_oldest_pending_age_seconds"]) >= 0
            assert "# TYPE genqueue_webhooks_sent_total counter" in text
            rx.gate.set()
            await wait_webhooks(api, "all sent", sent=2, pending=0)
            async with api.session.get("/metrics") as resp:
                text = await resp.text()
            age = next(
                line.rsplit(" ", 1)[1]
                for line in text.splitlines()
                if line.startswith("genqueue_webhooks_oldest_pending_age_seconds ")
            )
            assert math.isnan(float(age))  # nothing pending

    run(body())


def test_without_a_webhook_target_the_routes_answer_empty(tmp_path: Path) -> None:
    async def body() -> None:
        async with serve(tmp_path) as api:
            figures = await webhooks(api)
            assert figures["sent"] == figures["pending"] == figures["dead"] == 0
            assert figures["oldestPendingAgeS"] is None
            status, page, _ = await api.call("GET", DEAD, "root")
            assert status == 200 and page == {"items": [], "nextCursor": None}
            path = f"/api/webhooks/{delivery_id('x', TERMINAL_SEQ)}/replay"
            status, err, _ = await api.call("POST", path, "root")
            assert_error(status, err, 404, "not_found")

    run(body())
