"""Queue benchmark: genqueue's dispatch modes beside Huey (SqliteHuey), in one run.

With an instant (no-op) processor, for each dispatch mode and for Huey:
- throughput: N jobs submitted (genqueue: by 64 coroutines, as its HTTP server does), then
  drained; jobs completed per
  second from the first submit to the last completion (every acknowledgement durable:
  genqueue at its default `synchronous=FULL`; Huey's SQLite at its default, also FULL);
- dispatch latency: jobs submitted at a steady 200/s from one thread; the time from
  the submit call returning to the processor (task) being called, p50 and p99.

Huey runs its consumer at its best worker setting, picked by a short calibration over 1,
2, 4 and 8 thread workers and 2 and 4 process workers, with its default polling
(`initial_delay` 0.1 s).
Prints a markdown table; asserts nothing.

    python -m bench queue                      (through the dispatcher: settings by env)
    GENQUEUE_BENCH_JOBS=2000 GENQUEUE_BENCH_LATENCY_JOBS=200 python -m bench queue
    python -m bench.queue_bench [--jobs N] [--latency-jobs M] [--rate R] [--threads T]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    Counter,
    Row,
    huey_latency,
    huey_throughput,
    paced,
    percentiles,
)
from genqueue import Config, Job, JobQueue, JobResult
from genqueue.actors.bridge import LoopThread

MODES = ("alarm", "immediate", "cron")
CLIENTS = 64  # concurrent submitting coroutines
MAX_CONCURRENCY = 256
CRON_INTERVAL_S = 0.05
HUEY_WORKER_CHOICES = (("thread", 1), ("thread", 2), ("thread", 4), ("thread", 8))
HUEY_WORKER_CHOICES += (("process", 2), ("process", 4))


# -- helpers --------------------------------------------------------------------------------


async def submit_from_tasks(q: JobQueue, n: int, clients: int) -> None:
    """`clients` concurrent coroutines submitting n jobs in all, as HTTP handlers do."""
    todo = iter(range(n))

    async def client() -> None:
        for i in todo:
            await q.asubmit({"prompt": f"job {i}"})

    await asyncio.gather(*(client() for _ in range(clients)))


# -- genqueue ---------------------------------------------------------------------------------


UNREACHED_CAP = 10**9  # on, never reached


def genqueue_config(root: Path, mode: str) -> Config:
    return Config(
        data_dir=str(root),
        dispatch=mode,  # type: ignore[arg-type]
        max_concurrency=MAX_CONCURRENCY,
        cron_interval_s=CRON_INTERVAL_S,
        # the caps on waiting jobs stay on (their checks are part of what is measured) but
        # far above the N jobs one user submits here
        max_queued=UNREACHED_CAP,
        max_queued_per_user=UNREACHED_CAP,
    )


def genqueue_throughput(mode: str, n: int, threads: int) -> Row:
    async def instant(job: Job, report: Any) -> JobResult:
        return JobResult(video_url="memory://x")

    io = LoopThread("bench-io")
    loop = io.start()
    with (
        tempfile.TemporaryDirectory() as tmp,
        JobQueue(genqueue_config(Path(tmp), mode), instant, loop=loop) as q,
    ):
        t0 = time.perf_counter()
        # Submitted as the HTTP server submits: many concurrent coroutines on the I/O loop.
        io.run(submit_from_tasks(q, n, CLIENTS), timeout_s=600)
        submit_s = time.perf_counter() - t0
        q.join(timeout_s=600)
        drain_s = time.perf_counter() - t0
        done = q.status().completed
    io.stop()
    setting = f"max_concurrency {MAX_CONCURRENCY}" + (
        f", pass every {CRON_INTERVAL_S:g} s" if mode == "cron" else ""
    )
    return Row(f"genqueue {mode}", setting, done, drain_s, submit_s)


def genqueue_latency(mode: str, n: int, rate: float) -> tuple[float, float, int]:
    counter = Counter()

    async def instant(job: Job, report: Any) -> JobResult:
        counter.hit(int(job.id.rsplit("-", 1)[1]))
        return JobResult(video_url="memory://x")

    with (
        tempfile.TemporaryDirectory() as tmp,
        JobQueue(genqueue_config(Path(tmp), mode), instant) as q,
    ):

        def submit(i: int) -> float:
            q.submit({"prompt": "latency", "id": f"lat-{i}"})
            return time.perf_counter()

        acked = paced(n, rate, submit)
        counter.wait(n)
        q.join(timeout_s=60)
    return percentiles(acked, counter.called)


# -- Huey -------------------------------------------------------------------------------------


# -- main ---------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m bench.queue_bench", description=__doc__)
    p.add_argument("--jobs", type=int, default=int(env("GENQUEUE_BENCH_JOBS", "10000")))
    p.add_argument(
        "--latency-jobs", type=int, default=int(env("GENQUEUE_BENCH_LATENCY_JOBS", "1000"))
    )
    p.add_argument("--rate", type=float, default=200.0, help="submits per second (latency)")
    p.add_argument("--threads", type=int, default=8, help="submitting threads (throughput)")
    args, _ = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    return args


def fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    logging.getLogger("huey").setLevel(logging.WARNING)
    started = time.perf_counter()
    n, m = args.jobs, args.latency_jobs

    calibration_n = max(200, min(2000, n // 5))
    kind, best = max(
        HUEY_WORKER_CHOICES,
        key=lambda c: huey_throughput(calibration_n, args.threads, c[1], c[0]).rate,
    )
    huey = huey_throughput(n, args.threads, best, kind)
    huey.p50_ms, huey.p99_ms, huey.early = huey_latency(m, args.rate, best, kind)

    rows: list[Row] = []
    for mode in MODES:
        row = genqueue_throughput(mode, n, args.threads)
        row.p50_ms, row.p99_ms, row.early = genqueue_latency(mode, m, args.rate)
        rows.append(row)
    rows.append(huey)

    print(
        f"\n### Queue benchmark: {n:,} no-op jobs from {args.threads} threads; "
        f"latency over {m:,} jobs at {args.rate:g}/s\n"
    )
    print(
        "| queue | setting | jobs | submit s | drain s | completed/s | vs Huey "
        "| dispatch p50 ms | p99 ms | p99 / Huey |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = r.rate / huey.rate if huey.rate else float("nan")
        p99_ratio = (r.p99_ms / huey.p99_ms) if (r.p99_ms is not None and huey.p99_ms) else None
        print(
            f"| {r.name} | {r.setting} | {r.jobs:,} | {fmt(r.submit_s, 2)} | "
            f"{fmt(r.drain_s, 2)} | {fmt(r.rate, 0)} | {ratio:.2f}x | {fmt(r.p50_ms, 2)} | "
            f"{fmt(r.p99_ms, 2)} | {fmt(p99_ratio, 3)} |"
        )
    early = {r.name: r.early for r in rows if r.early}
    if early:
        print(f"\nCalled before `submit` returned (counted as 0 ms): {early}")
    print(
        f"\nHuey's best worker setting by calibration over {calibration_n:,} tasks: {best} "
        f"{kind} workers. Total run {time.perf_counter() - started:.0f} s."
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
