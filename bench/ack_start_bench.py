"""From the HTTP acknowledgement to the provider's start call: p50 / p99 (issue 13's goal).

Three processes on loopback: the fake Veo (`main.py fake-veo`, its own process, operations
long enough to stay running), genqueue (`main.py serve` pointed at it, SQLite FULL), and
this one, the client, submitting at a steady `--rate` (50/s by default). For each job the
client notes the wall time its 202 arrived; the fake notes the wall time of each
`predictLongRunning` (`GET /_fake/stats`: each operation's prompt and `startedAt`). The
delay is start - ack: the time genqueue takes, after answering, to dispatch the job,
activate its actor, run the processor and send the start call (negative when the start
call went out before the client read the answer; counted as 0 and reported).

The first `--warm-up` jobs (20 by default, at the same rate) are reported apart and not
counted: the first requests of a fresh client and server pay for opening connections (the
client's to genqueue, genqueue's to the fake) and first-time code paths, and 5 such jobs are
the whole p99 of 500. The goal is the steady hand-off; the warm-up row shows the cold one.

    python -m bench.ack_start_bench [--jobs N] [--rate R]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], ready_url: str) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), *args],
        env=os.environ | env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", int(ready_url.rsplit(":", 1)[1]))):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{args[0]} did not start") from None
                time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(30)


WARM_UP = "warm-up"


async def submit_paced(url: str, n: int, rate: float, warm_up: int = 0) -> dict[str, float]:
    """Submit `warm_up` jobs, then `n`, one each 1/rate s: each prompt -> when its 202 was read."""
    acked: dict[str, float] = {}
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def one(i: int) -> None:
            prompt = f"{WARM_UP} {i}" if i < warm_up else f"ack-start {i - warm_up}"
            async with session.post(f"{url}/api/generations", json={"prompt": prompt}) as resp:
                await resp.read()
                acked[prompt] = time.time()
                assert resp.status == 202, resp.status

        t0 = time.perf_counter()
        tasks = []
        for i in range(warm_up + n):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return acked


async def starts(veo_url: str, n: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 120
        while True:
            async with session.get(f"{veo_url}/_fake/stats") as resp:
                stats = await resp.json()
            ops = {op["prompt"]: op["startedAt"] for op in stats["operations"]}
            if len(ops) >= n or time.monotonic() > deadline:
                return ops
            await asyncio.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=int(os.environ.get("GENQUEUE_BENCH_JOBS", 500)))
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--warm-up", type=int, default=20, help="first jobs, reported apart")
    args, _ = p.parse_known_args(argv)  # `python -m bench ack-start` leaves its name in argv
    veo_port, port = free_port(), free_port()
    veo_url, url = f"http://127.0.0.1:{veo_port}", f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "GENQUEUE_DATA_DIR": str(Path(tmp) / "data"),
            "GENQUEUE_PORT": str(port),
            "GENQUEUE_API_KEYS": f"{KEY}=bench:admin",
            "GENQUEUE_MAX_CONCURRENCY": str(args.warm_up + args.jobs + 10),
            "VEO3_API_KEY": "bench-veo-key",
            "VEO3_BASE_URL": veo_url,
            "GENQUEUE_LOG_LEVEL": "WARN",
        }
        fake = ["fake-veo", "--port", str(veo_port), "--latency-s", "600"]
        with process(fake, {}, veo_url), process(["serve"], env, url):
            acked = asyncio.run(submit_paced(url, args.jobs, args.rate, args.warm_up))
            started = asyncio.run(starts(veo_url, args.jobs + args.warm_up))
    cold = sorted(
        max(0.0, started[p] - t) * 1000
        for p, t in acked.items()
        if p.startswith(WARM_UP) and p in started
    )
    acked = {p: t for p, t in acked.items() if not p.startswith(WARM_UP)}
    delays = sorted(max(0.0, started[p] - t) * 1000 for p, t in acked.items() if p in started)
    early = sum(1 for p, t in acked.items() if p in started and started[p] < t)
    missing = len(acked) - len(delays)

    def pct(q: float) -> float:
        return delays[min(len(delays) - 1, int(q * len(delays)))]

    print(
        f"\n### HTTP ack -> provider start call, {len(delays)} jobs at {args.rate:g}/s "
        f"(fake Veo in its own process)\n"
    )
    print("| p50 ms | p90 ms | p99 ms | max ms | started before the ack was read | missing |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {pct(0.5):.2f} | {pct(0.9):.2f} | {pct(0.99):.2f} | {delays[-1]:.2f} "
        f"| {early} | {missing} |"
    )
    if cold:
        print(
            f"\nThe {len(cold)} warm-up jobs before them (not counted): "
            f"median {cold[len(cold) // 2]:.2f} ms, max {cold[-1]:.2f} ms."
        )


if __name__ == "__main__":
    main()
