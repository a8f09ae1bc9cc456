"""The dashboard (`GET /`) and its feed (`GET /api/events`), the page in a real browser.

The browser test starts `python main.py serve` from a fresh data directory (the
embedded fake Veo, local storage, a short poll interval) and headless Chromium
(Debian's `chromium` package, at /usr/bin/chromium or $GENQUEUE_CHROMIUM), driven over
the Chrome DevTools Protocol through an aiohttp websocket, so no driver package and
nothing downloaded at run time. Like a user it types the API key, submits a prompt
through the page's form, watches the job's row reach `completed` with a video player,
reloads (the key stays in sessionStorage) and saves a screenshot; the page must raise
no script error and trip no Content-Security-Policy rule on the way. Set
$GENQUEUE_DASHBOARD_SCREENSHOT to a path to keep a copy of the screenshot (docs/).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_http import TOKENS, run, serve

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("GENQUEUE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]
KEY = "k-dash-4b9e71"
WIDTH, HEIGHT = 1280, 960
_PASSED_ENV = re.compile(r"(GENQUEUE_|VEO3_|VERTEX_|WEBHOOK_|NEXTJS_|S3_|AWS_)")


# -- the feed, over plain HTTP --------------------------------------------------------------------


def test_the_page_is_served_with_a_csp_that_admits_exactly_its_inline_code(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        async with serve(tmp_path) as api:
            async with api.session.get("/") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
                html = await resp.read()
                csp = resp.headers["Content-Security-Policy"]
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert not re.search(rb"(src|href)=\"(https?:)?//", html)  # no external asset
            policy = dict(part.strip().split(" ", 1) for part in csp.split(";"))
            assert policy["default-src"] == "'none'"
            assert policy["form-action"] == "'none'"
            for kind in ("script", "style"):
                tag = kind.encode()
                (block,) = re.findall(rb"<%s>(.*?)</%s>" % (tag, tag), html, re.S)
                digest = base64.b64encode(hashlib.sha256(block).digest()).decode()
                assert policy[f"{kind}-src"] == f"'sha256-{digest}'"
            status, doc, _ = await api.call("GET", "/api/openapi.json", None)
            assert status == 200 and {"/", "/api/events"} <= set(doc["paths"])

    run(body())


def test_the_feed_shows_each_caller_only_what_it_may_see(tmp_path: Path) -> None:
    async def body() -> None:
        async with serve(tmp_path) as api:
            mine = await api.submit("alice", prompt="alice's fox")
            theirs = await api.submit("bob", prompt="bob's owl")
            await api.wait_done(mine["id"])
            await api.wait_done(theirs["id"], "bob")
            # Without Accept: text/event-stream, the snapshot alone, as JSON.
            for user, expected in (("alice", {mine["id"]}), ("root", {mine["id"], theirs["id"]})):
                status, snap, _ = await api.call("GET", "/api/events", user)
                assert status == 200 and set(snap) == {"queue", "jobs"}
                assert {j["id"] for j in snap["jobs"]} == expected
                assert snap["queue"]["completed"] == 2
            status, _, _ = await api.call("GET", "/api/events", None)
            assert status == 401
            # The stream: the snapshot, then alice's changes and never bob's.
            headers = {"Authorization": f"Bearer {TOKENS['alice']}", "Accept": "text/event-stream"}
            async with api.session.get("/api/events", headers=headers) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                events = _sse(resp)
                kind, snap = await anext(events)
                assert kind == "snapshot" and [j["id"] for j in snap["jobs"]] == [mine["id"]]
                await api.submit("bob", prompt="bob again")
                second = await api.submit("alice", prompt="alice again")
                seen: list[tuple[str, str]] = []
                async for kind, data in events:
                    if kind == "job":
                        assert data["userId"] == "alice", data
                        seen.append((data["id"], data["status"]))
                        if data["status"] == "completed":
                            break
                    else:
                        assert kind == "queue" and "inFlight" in data
                assert seen[-1] == (second["id"], "completed")

    run(body())


def test_server_shutdown_ends_an_open_feed(tmp_path: Path) -> None:
    async def body() -> None:
        async with serve(tmp_path) as api:
            headers = {"Authorization": f"Bearer {TOKENS['root']}", "Accept": "text/event-stream"}
            async with api.session.get("/api/events", headers=headers) as resp:
                events = _sse(resp)
                assert (await anext(events))[0] == "snapshot"
                closing = asyncio.create_task(api.runner.cleanup())
                with contextlib.suppress(aiohttp.ClientError):
                    async for _ in events:
                        pass
                await asyncio.wait_for(closing, 10)

    run(body())


async def _sse(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    event, data = "", ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif not line and data:
            yield event, json.loads(data)
            event, data = "", ""


# -- the page, in headless Chromium ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def running_server(tmp: Path) -> Iterator[str]:
    """`python main.py serve` on a free loopback port, from a fresh data directory."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not _PASSED_ENV.match(k)}
    env.update(GENQUEUE_API_KEYS=f"{KEY}=ada", GENQUEUE_POLL_INTERVAL_S="0.2")
    log = tmp / "server.log"
    argv = [sys.executable, str(ROOT / "main.py"), "serve", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--data-dir", str(tmp / "data")]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, f"the server exited:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"the server did not start:\n{_tail(log)}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield base_url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"the server ignored SIGTERM:\n{_tail(log)}")


class Page:
    """One Chromium tab over the DevTools protocol: commands, and the console's complaints."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.problems: list[str] = []  # uncaught exceptions, CSP violations, console errors
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(msg.data)
                if "id" in data:
                    fut = self.pending.pop(data["id"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(data)
                else:
                    self._event(data["method"], data.get("params", {}))
        finally:
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("the browser closed the connection"))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.problems.append(details.get("exception", {}).get("description") or str(details))
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.problems.append(" ".join(str(a.get("value", a)) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            # Not a failed load (e.g. a player cut off by a reload), unless CSP blocked it.
            if entry.get("source") != "network" or "Content Security Policy" in entry["text"]:
                self.problems.append(entry["text"])

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, 15)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply["result"]
        return result

    async def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        reply = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str, what: str, timeout_s: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout_s
        guarded = (
            f"(() => {{ try {{ const v = ({expression}); return v instanceof Node || v; }}"
            " catch (e) { return null; } })()"
        )
        while True:
            value = await self.js(guarded)  # null until the page has what it asks for
            if value:
                return value
            if time.monotonic() > deadline:
                page = await self.js("document.body.innerText")
                raise AssertionError(f"timed out waiting for {what}; the page shows:\n{page}")
            await asyncio.sleep(0.1)

    async def click(self, selector: str) -> None:
        """A real left click in the middle of the element (scrolled into view first)."""
        box = await self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    async def type_into(self, selector: str, text: str) -> None:
        await self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", text=text)


@contextlib.asynccontextmanager
async def chromium(tmp: Path) -> AsyncIterator[Page]:
    """Headless Chromium with a fresh profile; yields its one tab."""
    profile = tmp / "chromium-profile"
    profile.mkdir()
    log = tmp / "chromium.log"
    argv = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 15
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            assert proc.poll() is None, f"chromium exited:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"chromium did not start:\n{_tail(log)}"
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            (tab,) = [t for t in targets if t["type"] == "page"]
            async with http.ws_connect(tab["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                try:
                    yield page
                finally:
                    await ws.close()
                    await page.reader
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _row(job_id: str) -> str:
    return f"document.querySelector('#jobs tr[data-job-id={json.dumps(job_id)}]')"


async def drive(page: Page, base_url: str, shot: Path) -> None:
    for domain in ("Page", "Runtime", "Log"):
        await page.send(f"{domain}.enable")
    await page.send(
        "Emulation.setDeviceMetricsOverride",
        width=WIDTH,
        height=HEIGHT,
        deviceScaleFactor=1,
        mobile=False,
    )
    await page.send("Page.navigate", url=f"{base_url}/")
    await page.wait_for(
        f"location.href === {json.dumps(base_url + '/')} && document.readyState === 'complete'",
        "the page to load",
    )
    await page.wait_for("!document.getElementById('login').hidden", "the key prompt")
    assert await page.js("document.getElementById('api-key').type") == "password"

    # The key, once; then the live feed.
    await page.type_into("#api-key", KEY)
    await page.click("#connect")
    await page.wait_for("document.getElementById('conn').dataset.state === 'live'", "the feed")
    assert await page.js("sessionStorage.getItem('genqueue.apiKey')") == KEY
    await page.wait_for(
        "document.getElementById('s-flight').textContent.includes('/')", "the queue figures"
    )

    # The form offers what GET /api/providers lists (no keys: both fakes), Veo's default first.
    models = await page.wait_for(
        "(() => { const o = [...document.getElementById('model').options].map(x => x.value);"
        " return o.length > 2 && o; })()",
        "the providers in the form",
    )
    assert '["fal","fal-ai/veo3.1"]' in models and '["fal","fal-ai/veo3.1/fast"]' in models
    selected = json.loads(await page.js("document.getElementById('model').value"))
    assert selected[0] == "veo3"

    # Two prompts through the form; the first is the one the test follows.
    prompts = [
        "A lighthouse on a cliff at dusk, waves crashing, slow aerial orbit",
        "A paper boat drifting down a rainy city gutter, macro, shallow depth of field",
    ]
    ids: list[str] = []
    for n, prompt in enumerate(prompts):
        await page.type_into("#prompt", prompt)
        if n:  # the second through fal (its fake: no keys here)
            await page.js("document.getElementById('duration').value = '4'")
            await page.js("document.getElementById('model').value = '[\"fal\",\"fal-ai/veo3.1\"]'")
        await page.click("#submit")
        note = await page.wait_for(
            f"(() => {{ const t = document.getElementById('submit-note').textContent;"
            f" return t.startsWith('Queued as ') && !{json.dumps(ids)}.some(i => t.includes(i))"
            " && t; })()",
            "the submission's acknowledgement",
        )
        ids.append(note.removeprefix("Queued as ").rstrip("."))
    first = ids[0]
    await page.wait_for(_row(first), "the job's row")
    assert await page.js(f"{_row(first)}.querySelector('.prompt').textContent") == prompts[0]

    # It completes on the page, pushed by the feed, with a player for the video.
    done = f"{_row(first)}.dataset.status === 'completed' && {_row(first)}.querySelector('video')"
    for job_id in ids:
        await page.wait_for(done.replace(first, job_id), f"job {job_id} to complete", 20)
    src = await page.js(f"{_row(first)}.querySelector('video').src")
    assert src.startswith(f"{base_url}/videos/ada/") and "&signature=" in src, src
    # The player is not black: the fake's video has an H.264 track the browser decodes.
    await page.wait_for(
        f"{_row(first)}.querySelector('video').videoWidth === 96", "the player's video track", 20
    )
    assert (await page.js(f"{_row(first)}.querySelector('.status').textContent")) == "completed"
    assert await page.js(f"{_row(first)}.querySelector('progress').value") == 100
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(base_url, headers=headers) as http:
        async with http.get(f"/api/generations/{first}") as resp:
            job = await resp.json()
        assert job["status"] == "completed"
        assert job["result"]["videoUrl"].split("?")[0] == src.split("?")[0]  # re-signed on read
        async with http.get(src.removeprefix(base_url)) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "video/mp4"
    await page.wait_for(
        "Number(document.getElementById('s-done').textContent) >= 2", "the throughput figure"
    )
    await asyncio.sleep(0.3)  # let the players draw their first frame of chrome

    png = base64.b64decode((await page.send("Page.captureScreenshot", format="png"))["data"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    shot.write_bytes(png)

    # A reload keeps the key (sessionStorage) and rebuilds the list from the snapshot.
    await page.send("Page.reload")
    await page.wait_for("document.getElementById('conn').dataset.state === 'live'", "the feed")
    assert await page.js("document.getElementById('login').hidden") is True
    await page.wait_for(done, "the completed job after a reload")
    assert page.problems == [], page.problems


@pytest.mark.timeout(60)
def test_dashboard_in_headless_chromium_runs_a_job_to_a_video(tmp_path: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser test needs Debian's chromium "
            "(apt-get install -y chromium), or GENQUEUE_CHROMIUM=/path/to/chromium",
            pytrace=False,
        )
    shot = tmp_path / "dashboard.png"

    async def body() -> None:
        with running_server(tmp_path) as base_url:
            async with chromium(tmp_path) as page:
                await drive(page, base_url, shot)

    run(body(), timeout_s=50)
    keep = os.environ.get("GENQUEUE_DASHBOARD_SCREENSHOT")
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, keep)
