"""Restart benchmark: how long a JobQueue takes to be ready again with N queued jobs.

A data dir is filled with N queued jobs (dispatch="cron" with a pass every 10⁹ s, so
nothing ever runs; submitted with `asubmit` in batches, which the queue takes as one
message and one commit per batch). The queue is closed, then, in each of 3 rounds, the
time from `JobQueue(...).open()` to "ready" is measured: `status()` answers with
`queued == N` and a newly submitted job is acknowledged (durably). The probe job is then
cancelled and the queue closed, so every round starts from the same N queued jobs.

Baseline, in the same run: raw `sqlite3` reading the same pending rows (the `queue`
table's `main/pending/` key range), without and with msgspec decoding, so the ratio
shows genqueue's own overhead. Issue #7's goal: ready in under 3 s at 100,000 jobs.
Prints a markdown table; asserts nothing.

    python -m bench restart                            (N from GENQUEUE_BENCH_RESTART_JOBS)
    GENQUEUE_BENCH_RESTART_JOBS=10000 python -m bench restart
    python -m bench.restart_bench [--jobs N] [--rounds R] [--batch B]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from genqueue import Config, Job, JobQueue, JobResult
from genqueue.actors.queue_records import Pending

NEVER_S = 1e9  # the cron pass interval: no pass ever runs during the bench


async def never_runs(job: Job, report: Any) -> JobResult:
    raise AssertionError("the restart bench dispatches nothing")


def config(root: Path) -> Config:
    return Config(  # N waiting jobs of one user: no cap on waiting jobs
        data_dir=str(root),
        dispatch="cron",
        cron_interval_s=NEVER_S,
        max_queued=0,
        max_queued_per_user=0,
    )


def fill(root: Path, n: int, batch: int) -> float:
    """Submit n queued jobs; returns the time taken."""

    async def submit_all(q: JobQueue) -> None:
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            await asyncio.gather(*(q.asubmit({"prompt": f"job {i}"}) for i in range(lo, hi)))

    t0 = time.perf_counter()
    with JobQueue(config(root), never_runs) as q:
        asyncio.run(submit_all(q))
        queued = q.status().queued
    if queued != n:
        raise RuntimeError(f"filled {queued} queued jobs, expected {n}")
    return time.perf_counter() - t0


@dataclass
class Round:
    open_s: float
    status_s: float
    submit_s: float

    @property
    def ready_s(self) -> float:
        return self.open_s + self.status_s + self.submit_s


def restart_round(root: Path, n: int) -> Round:
    t0 = time.perf_counter()
    q = JobQueue(config(root), never_runs).open()
    t1 = time.perf_counter()
    try:
        queued = q.status().queued
        t2 = time.perf_counter()
        probe, _ = q.submit({"prompt": "probe after restart"})
        t3 = time.perf_counter()
        if queued != n:
            raise RuntimeError(f"{queued} queued after restart, expected {n}")
        q.cancel(probe.id)  # back to n queued for the next round
        deadline = time.monotonic() + 30
        while q.status().queued != n:
            if time.monotonic() > deadline:
                raise RuntimeError("the probe job's cancel did not reach the queue")
            time.sleep(0.005)
    finally:
        q.close()
    return Round(t1 - t0, t2 - t1, t3 - t2)


def raw_read(root: Path, n: int, decode: bool) -> float:
    """Raw sqlite3: open the file and read the pending range (optionally decoding it)."""
    dec = msgspec.msgpack.Decoder(Pending)
    t0 = time.perf_counter()
    conn = sqlite3.connect(root / "state.db")
    try:
        rows = conn.execute(
            'SELECT key, value FROM "queue" WHERE key >= ? AND key < ? ORDER BY key',
            ("main/pending/", "main/pending0"),
        ).fetchall()
        if decode:
            entries = [dec.decode(v) for _, v in rows]
            del entries
    finally:
        conn.close()
    elapsed = time.perf_counter() - t0
    if len(rows) != n:
        raise RuntimeError(f"raw read found {len(rows)} pending rows, expected {n}")
    return elapsed


def measure(rounds: int, fn: Callable[[], float]) -> list[float]:
    return [fn() for _ in range(rounds)]


def parse(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m bench.restart_bench", description=__doc__)
    p.add_argument("--jobs", type=int, default=int(env("GENQUEUE_BENCH_RESTART_JOBS", "100000")))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=1000, help="asubmits gathered per batch (fill)")
    args, _ = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    return args


def stats_cells(times: list[float]) -> str:
    return f"{min(times):.3f} | {statistics.median(times):.3f} | {max(times):.3f}"


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    n, rounds = args.jobs, args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fill_s = fill(root, n, args.batch)
        size_mb = (root / "state.db").stat().st_size / 1e6
        restarts = [restart_round(root, n) for _ in range(rounds)]
        raw = measure(rounds, lambda: raw_read(root, n, decode=False))
        raw_dec = measure(rounds, lambda: raw_read(root, n, decode=True))

    ready = [r.ready_s for r in restarts]
    base = statistics.median(raw)
    rows = [
        ("genqueue: open() → status() queued == N → submit acked", ready),
        ("  of which `open()` returning", [r.open_s for r in restarts]),
        ("  of which first `status()` (waits for the activation)", [r.status_s for r in restarts]),
        ("  of which one durable `submit()`", [r.submit_s for r in restarts]),
        ("baseline: raw sqlite3 SELECT of the pending range", raw),
        ("baseline: raw sqlite3 SELECT + msgspec decode", raw_dec),
    ]
    print(
        f"\n### Restart benchmark: {n:,} queued jobs, {rounds} rounds "
        f"(state.db {size_mb:,.1f} MB, filled in {fill_s:.1f} s; "
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs)\n"
    )
    print("| measure | min s | median s | max s | median / raw SELECT |")
    print("|---|---:|---:|---:|---:|")
    for name, times in rows:
        print(f"| {name} | {stats_cells(times)} | {statistics.median(times) / base:.2f}x |")
    verdict = "meets" if max(ready) < 3.0 else "misses"
    print(f"\nGoal (issue #7): ready in under 3 s. Slowest round {max(ready):.3f} s: {verdict} it.")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
