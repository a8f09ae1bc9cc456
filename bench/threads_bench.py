"""Where a drain's time goes: the CPU time of each of genqueue's threads, per job.

The queue bench's drain (10,000 no-op jobs, submitted by 64 coroutines, alarm dispatch,
256 in flight, SQLite FULL), after a warm-up drain, in one process. Each thread's CPU time
comes from `/proc/self/task/<tid>/stat` (Linux only); the baseline is the drain's wall
time, measured in the same run, so "cores" is the CPU time of all threads over it. Also:
the cyclic GC's collections and time, and the bytes the process wrote, per job.

Python runs one thread at a time (the GIL), so threads that add up to about one core
while the machine has more are bound by it: what then speeds the drain up is less Python
work per job, not less waiting. Prints markdown tables; asserts nothing.

    python -m bench threads [--jobs N] [--rounds R]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlitedict import SqliteMultithread

from bench.queue_bench import CLIENTS, genqueue_config, submit_from_tasks
from genqueue import Job, JobQueue, JobResult
from genqueue.actors.bridge import LoopThread

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def thread_cpu_s() -> dict[int, float]:
    """CPU seconds (user + system) of each thread of this process, by native id."""
    out: dict[int, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) * TICK_S
    return out


def written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def role(thread: threading.Thread) -> str:
    """A thread's part in the queue (the SQLite worker is sqlitedict's, unnamed)."""
    if isinstance(thread, SqliteMultithread):
        return "SQLite worker"
    for prefix, name in (("_Shard", "job shards"), ("QueueActor", "queue actor")):
        if thread.name.startswith(prefix):
            return name
    names = {"bench-io": "event loop", "state-committer": "committer"}
    return names.get(thread.name, thread.name.replace("state-", ""))


class GcTimer:
    """The cyclic GC's collections and their time while installed."""

    def __init__(self) -> None:
        self.collections = 0
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.collections += 1
            self.seconds += time.perf_counter() - self._started


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench threads", description=__doc__)
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=3)
    args, _ = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    if not Path("/proc/self/task").is_dir():
        print("threads: needs Linux's /proc; skipped")
        return

    async def instant(job: Job, report: Any) -> JobResult:
        return JobResult(video_url="memory://x")

    cpu: dict[str, float] = {}
    wall_s = 0.0
    written = 0
    gc_timer = GcTimer()
    io = LoopThread("bench-io")
    loop = io.start()
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            JobQueue(genqueue_config(Path(tmp), "alarm"), instant, loop=loop) as q,
        ):
            io.run(submit_from_tasks(q, min(args.jobs, 2000), CLIENTS), timeout_s=600)  # warm-up
            q.join(timeout_s=600)
            gc.callbacks.append(gc_timer)
            try:
                for _ in range(args.rounds):
                    roles = {t.native_id: role(t) for t in threading.enumerate()}
                    before, wrote, t0 = thread_cpu_s(), written_bytes(), time.perf_counter()
                    io.run(submit_from_tasks(q, args.jobs, CLIENTS), timeout_s=600)
                    q.join(timeout_s=600)
                    wall_s += time.perf_counter() - t0
                    written += written_bytes() - wrote
                    for tid, s in thread_cpu_s().items():
                        name = roles.get(tid, "other")
                        cpu[name] = cpu.get(name, 0.0) + s - before.get(tid, 0.0)
            finally:
                gc.callbacks.remove(gc_timer)
    finally:
        io.stop()

    jobs = args.jobs * args.rounds
    total = sum(cpu.values())
    drains = f"{args.rounds} drain{'s' if args.rounds != 1 else ''}"
    print(f"## Where a drain's time goes ({drains} of {args.jobs:,} jobs)\n")
    print(f"{jobs / wall_s:,.0f} jobs/s; wall {wall_s * 1e6 / jobs:.0f} µs a job\n")
    print("| thread | CPU s | µs a job | share of wall |")
    print("|---|---:|---:|---:|")
    for name, s in sorted(cpu.items(), key=lambda kv: -kv[1]):  # to a clock tick (10 ms)
        print(f"| {name} | {s:.2f} | {s * 1e6 / jobs:.1f} | {s / wall_s:.0%} |")
    print(f"| all | {total:.2f} | {total * 1e6 / jobs:.1f} | {total / wall_s:.2f} cores |")
    print(
        f"\nCyclic GC: {gc_timer.collections * 1000 / jobs:.1f} collections a 1,000 jobs, "
        f"{gc_timer.seconds / wall_s:.1%} of the wall time. Written: "
        f"{written / jobs / 1024:.1f} KB a job (the SQLite file and its write-ahead log)."
    )


if __name__ == "__main__":
    main()
