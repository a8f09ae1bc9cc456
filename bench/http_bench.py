"""HTTP benchmark: `POST /api/generations` with durable acknowledgement vs a bare aiohttp handler.

Two servers, each in its own process on a loopback port, measured in the same run by the
same client (this process: aiohttp, `--clients` concurrent requests over keep-alive
connections):

- bare: an aiohttp app whose POST handler answers 202 without reading the body or doing
  anything else, the ceiling for any aiohttp endpoint on this machine;
- genqueue: `create_app` as `main.py serve` runs it, its state store at the default
  `synchronous=FULL`, so every 202 is sent after the job is on disk. The processor parks
  each job it is given (max concurrency 4), so the run measures submission rather than
  generation.

Each server gets a warm-up, then `--requests` timed submissions. Prints a markdown table
(requests per second, latency percentiles, errors) and the ratio genqueue / bare.
With `--profile FILE`, the genqueue server runs under cProfile and writes its stats there.

    python -m bench http                 (through the dispatcher: settings by env)
    GENQUEUE_BENCH_HTTP_REQUESTS=5000 python -m bench http
    python -m bench.http_bench [--requests N] [--clients C] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEY = "bench-http-key"
WARMUP = 300
START_TIMEOUT_S = 60.0
ROOT = Path(__file__).resolve().parent.parent


# -- the servers (child processes) ------------------------------------------------------------


def run_bare(port: int) -> None:
    from aiohttp import web

    async def accepted(request: web.Request) -> web.Response:
        return web.Response(status=202)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/api/generations", accepted)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class Parked:
    """A processor that holds every job it is given until the server stops."""

    async def __call__(self, job: Any, report: Any) -> Any:
        await asyncio.Event().wait()


def run_genqueue(port: int, data_dir: str, profile: str | None) -> None:
    from aiohttp import web

    from genqueue.config import Config
    from genqueue.http import create_app

    cfg = Config(  # synchronous=FULL; one user parks every job: no cap on waiting jobs
        data_dir=data_dir, api_keys=f"{KEY}=bench", port=port, max_queued=0, max_queued_per_user=0
    )
    app = create_app(cfg, processor=Parked())
    if profile is None:
        web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


class Child:
    """One server process, ready once `/healthz` answers; stopped with SIGTERM."""

    def __init__(self, *args: str):
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.http_bench", "--serve", *args, "--port", str(self.port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {args} exited {self.proc.returncode}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as resp,
            ):
                if resp.status == 200:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server {args} not ready in {START_TIMEOUT_S:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the client -------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    requests: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    rounds: list[float] = field(default_factory=list)  # req/s of each round

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[int(q) - 1]


async def load(url: str, n: int, clients: int, name: str) -> Result:
    """`n` POSTs from `clients` concurrent coroutines over keep-alive connections."""
    import aiohttp

    result = Result(name)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    bodies = [b'{"prompt": "a benchmark of video job %d"}' % i for i in range(n)]
    counter = iter(range(n))
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            for i in counter:
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=bodies[i], headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError):
                    result.errors += 1
                    continue
                result.latencies_ms.append(1000 * (time.perf_counter() - t0))
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status != 202:
                    result.errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        result.seconds = time.perf_counter() - t0
    result.requests = n
    return result


def measure(
    children: list[Child], names: list[str], n: int, clients: int, rounds: int
) -> list[Result]:
    """Warm each server up, then `rounds` rounds of `n` requests to each in turn.

    Interleaving the servers round by round spreads any change in the machine's load
    (other processes) over both, instead of charging it to whichever ran second.
    """
    urls = [f"{c.url}/api/generations" for c in children]
    for url, name in zip(urls, names, strict=True):
        asyncio.run(load(url, WARMUP, clients, name))  # connections, caches, first turns
    totals = [Result(name) for name in names]
    for _ in range(rounds):
        for url, name, total in zip(urls, names, totals, strict=True):
            r = asyncio.run(load(url, n, clients, name))
            total.rounds.append(r.rate)
            total.requests += r.requests
            total.seconds += r.seconds
            total.errors += r.errors
            total.latencies_ms += r.latencies_ms
    return totals


# -- main ---------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m bench.http_bench", description=__doc__)
    p.add_argument(
        "--requests",
        type=int,
        default=int(env("GENQUEUE_BENCH_HTTP_REQUESTS", "3000")),
        help="per server and round",
    )
    p.add_argument("--clients", type=int, default=int(env("GENQUEUE_BENCH_HTTP_CLIENTS", "64")))
    p.add_argument("--rounds", type=int, default=int(env("GENQUEUE_BENCH_HTTP_ROUNDS", "3")))
    p.add_argument("--profile", default=env("GENQUEUE_BENCH_HTTP_PROFILE"))
    p.add_argument("--serve", choices=["bare", "genqueue"], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    args, _ = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.serve == "bare":
        return run_bare(args.port)
    if args.serve == "genqueue":
        return run_genqueue(args.port, args.data_dir, args.profile)

    n, clients, rounds = args.requests, args.clients, args.rounds
    names = [
        "bare aiohttp handler (202, does nothing)",
        "genqueue POST /api/generations (durable 202)",
    ]
    with tempfile.TemporaryDirectory(prefix="genqueue-http-bench-") as tmp:
        extra = ["--profile", args.profile] if args.profile else []
        children: list[Child] = []
        try:
            children.append(Child("bare"))
            children.append(Child("genqueue", "--data-dir", str(Path(tmp) / "data"), *extra))
            rows = measure(children, names, n, clients, rounds)
        finally:
            for child in children:
                child.stop()
    bare, gq = rows
    ratios = [g / b for g, b in zip(gq.rounds, bare.rounds, strict=True) if b]

    print(
        f"\n### HTTP submission benchmark: {rounds} rounds of {n:,} requests per server, "
        f"{clients} concurrent clients, servers interleaved round by round\n"
    )
    print("| server | requests | seconds | req/s | req/s per round | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        per_round = ", ".join(f"{x:,.0f}" for x in r.rounds)
        print(
            f"| {r.name} | {r.requests:,} | {r.seconds:.2f} | {r.rate:,.0f} | {per_round} | "
            f"{r.pct(50):.1f} | {r.pct(99):.1f} | {r.errors} |"
        )
    ratio = gq.rate / bare.rate if bare.rate else float("nan")
    median = statistics.median(ratios) if ratios else float("nan")
    goal = "met" if ratio >= 0.5 else "NOT met"
    print(
        f"\ngenqueue / bare = {ratio:.2f} overall, {median:.2f} median of the rounds "
        f"(goal >= 0.50: {goal})."
    )
    if args.profile:
        print(f"genqueue server profile written to {args.profile}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
