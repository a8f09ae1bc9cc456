"""Benchmark: many generations through the JobQueue and the GenerationActor, against the fake Veo.

2,000 jobs, the fake answering after 2 s, `max_concurrency` 500: the ideal wall time is
ceil(2000 / 500) x 2 s = 8 s. Measures the wall time (submit of the first job to the queue
drained), peak threads (`threading.active_count()` sampled every 5 ms, the sampler included)
and peak RSS (VmHWM). Goal: within 25% of the ideal, under 64 threads, under 400 MB.

The fake Veo runs on its own loop thread (as a separate server would); the actor, its aiohttp
session, the LocalStore (a temp folder) and the queue share a second one.

Scale it with environment variables: GENQUEUE_BENCH_JOBS (2000), GENQUEUE_BENCH_CONCURRENCY
(500), GENQUEUE_BENCH_LATENCY_S (2.0), GENQUEUE_BENCH_POLL_S (0.5), GENQUEUE_BENCH_VIDEO_BYTES
(4096), GENQUEUE_BENCH_SYNCHRONOUS (FULL or NORMAL; FULL).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import ThreadSampler, peak_rss_mb
from genqueue import Config, JobQueue
from genqueue.actors.bridge import LoopThread
from genqueue.actors.generation import GenerationActor
from genqueue.providers.veo3 import Veo3Client
from genqueue.storage.videos import LocalStore

__all__ = ["main"]

KEY = "bench-key"


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


async def _submit_all(queue: JobQueue, jobs: int, clients: int = 64) -> list[str]:
    ids: list[str] = [""] * jobs
    next_i = iter(range(jobs))

    async def client() -> None:
        for i in next_i:
            ids[i] = (await queue.asubmit({"prompt": f"bench video {i}"})).job.id

    await asyncio.gather(*(client() for _ in range(clients)))
    return ids


class FakeVeoProcess:
    """`python main.py fake-veo` on a free loopback port, in a process of its own."""

    def __init__(self, latency_s: float, video_bytes: int):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(root / "main.py"),
                "fake-veo",
                "--port",
                str(port),
                "--latency-s",
                str(latency_s),
                "--video-size",
                str(video_bytes),
                "--api-key",
                KEY,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening" not in line:
            self.proc.kill()
            raise RuntimeError(f"fake Veo did not start: {line!r}")
        self.base_url = f"http://127.0.0.1:{port}"

    def stop(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.base_url}/_fake/stats", timeout=30) as resp:
            stats = json.loads(resp.read())
        self.proc.terminate()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return {k: int(stats[k]) for k in ("starts", "polls", "downloads")}


async def _session() -> aiohttp.ClientSession:
    # As GenerationService opens it: enough connections for every job in flight.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1000), cookie_jar=aiohttp.DummyCookieJar()
    )


def run(
    jobs: int, concurrency: int, latency_s: float, poll_s: float, video_bytes: int, sync: str
) -> dict[str, Any]:
    rss_before = peak_rss_mb()
    threads_before = threading.active_count()
    worker_loop = LoopThread("genqueue-io")
    worker_loop.start()
    # The fake Veo is its own process, as Google is: its CPU is not charged to genqueue.
    fake = FakeVeoProcess(latency_s, video_bytes)
    with tempfile.TemporaryDirectory(prefix="genqueue-bench-") as tmp:
        session: aiohttp.ClientSession = worker_loop.run(_session())
        store = LocalStore(Path(tmp) / "media", "http://127.0.0.1:8787")
        worker_loop.run(store.start())
        client = Veo3Client(session, base_url=fake.base_url, api_key=KEY)
        actor = GenerationActor(client, store, polling_interval_s=poll_s)
        config = Config(
            data_dir=str(Path(tmp) / "data"),
            max_concurrency=concurrency,
            synchronous=sync,  # type: ignore[arg-type]
            job_watchdog_s=max(60.0, 30 * latency_s),
            max_queued=0,  # one user submits them all at once: no cap on waiting jobs
            max_queued_per_user=0,
        )
        queue = JobQueue(config, actor, loop=worker_loop.loop)
        statuses: dict[str, int] = {}
        try:
            with ThreadSampler() as sampler:
                queue.open()
                t0 = time.monotonic()
                # Submitted as an application would: many clients at once (64 async callers).
                ids = worker_loop.run(_submit_all(queue, jobs), timeout_s=600)
                submitted_s = time.monotonic() - t0
                queue.join(timeout_s=max(120.0, 20 * jobs * latency_s / concurrency))
                wall_s = time.monotonic() - t0
                for job_id in ids:
                    status = queue.get(job_id).status
                    statuses[status] = statuses.get(status, 0) + 1
        finally:
            queue.close()
            worker_loop.run(session.close())
            worker_loop.stop()
            counts = fake.stop()
    ideal_s = math.ceil(jobs / concurrency) * latency_s
    return {
        "jobs": jobs,
        "concurrency": concurrency,
        "latency_s": latency_s,
        "poll_s": poll_s,
        "synchronous": sync,
        "submit_s": submitted_s,
        "wall_s": wall_s,
        "ideal_s": ideal_s,
        "threads_before": threads_before,
        "peak_threads": sampler.peak,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
        "statuses": statuses,
        "starts": counts["starts"],
        "polls": counts["polls"],
        "downloads": counts["downloads"],
    }


def table(r: dict[str, Any]) -> str:
    over = 100 * (r["wall_s"] / r["ideal_s"] - 1)
    rows = [
        ("jobs / max_concurrency", f"{r['jobs']} / {r['concurrency']}", ""),
        ("fake latency / poll interval", f"{r['latency_s']:g} s / {r['poll_s']:g} s", ""),
        ("SQLite synchronous", r["synchronous"], ""),
        ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items())), "all done"),
        ("Veo starts / polls / downloads", f"{r['starts']} / {r['polls']} / {r['downloads']}", ""),
        ("submit time (all jobs)", f"{r['submit_s']:.2f} s", ""),
        ("wall time (first submit to drained)", f"{r['wall_s']:.2f} s", ""),
        ("drain after the last submit", f"{r['wall_s'] - r['submit_s']:.2f} s", ""),
        ("ideal", f"{r['ideal_s']:.2f} s", ""),
        ("over ideal", f"{over:+.0f}%", "<= +25%"),
        ("peak threads", f"{r['peak_threads']} (before: {r['threads_before']})", "< 64"),
        ("peak RSS", f"{r['peak_rss_mb']:.0f} MB (before: {r['rss_before_mb']:.0f} MB)", "< 400MB"),
    ]
    lines = ["| metric | value | goal |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    result = run(
        jobs=int(_env("GENQUEUE_BENCH_JOBS", 2000)),
        concurrency=int(_env("GENQUEUE_BENCH_CONCURRENCY", 500)),
        latency_s=_env("GENQUEUE_BENCH_LATENCY_S", 2.0),
        poll_s=_env("GENQUEUE_BENCH_POLL_S", 0.5),
        video_bytes=int(_env("GENQUEUE_BENCH_VIDEO_BYTES", 4096)),
        sync=os.environ.get("GENQUEUE_BENCH_SYNCHRONOUS", "FULL"),
    )
    print(table(result))


if __name__ == "__main__":
    main()
