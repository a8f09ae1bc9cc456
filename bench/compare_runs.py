"""The side-by-side benchmark's measurements: one per fresh process, one system each.

`python -m bench.compare_bench --child SPEC` runs `run(SPEC)` and prints its result as one
`RESULT {json}` line. Each runner imports only the system it measures (this module and
bench.harness import no genqueue), so a peer's threads and memory are its own, and the peak
RSS (VmHWM) of a process that ran nothing else is the figure of that one run.

Every system submits and works in the one process measured: genqueue as embedded (its HTTP
server submits the same way, from coroutines), Huey with its consumer beside the submitting
threads (process workers fork from it), arq with its worker on the submitting event loop.
arq's redis-server is a process of its own, started by the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from bench.harness import (
    HueyRig,
    ThreadSampler,
    huey_latency,
    huey_throughput,
    os_threads,
    peak_rss_mb,
    percentiles,
    submit_from_threads,
)

__all__ = ["CRON_INTERVAL_S", "run"]

Spec = dict[str, Any]
Result = dict[str, Any]

SUBMIT_THREADS = 8  # Huey's submitters are threads (a SqliteHuey enqueue blocks)
CLIENTS = 64  # genqueue's and arq's submitters are coroutines
CRON_INTERVAL_S = 0.05  # genqueue's cron mode: one pass every 50 ms (the queue bench's)


def run(spec: Spec) -> Result:
    """One measurement, plus `cpu_s`: this process's CPU time during it (forked workers too)."""
    before = cpu_s()
    result = RUNNERS[spec["kind"], spec["system"]](spec)
    return result | {"cpu_s": cpu_s() - before}


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def sampled(body: Callable[[], float]) -> Result:
    """Run `body` (it returns the wall time) under a sampler of this process's OS threads."""
    threads_before, rss_before = os_threads(), peak_rss_mb()
    with ThreadSampler(count=os_threads) as sampler:
        wall_s = body()
    return {
        "wall_s": wall_s,
        "peak_threads": sampler.peak,
        "threads_before": threads_before,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before,
    }


# -- genqueue ---------------------------------------------------------------------------------


def genqueue_drain(spec: Spec) -> Result:
    from bench.queue_bench import genqueue_throughput

    row = genqueue_throughput(spec["mode"], spec["jobs"], SUBMIT_THREADS)
    if row.jobs != spec["jobs"]:
        raise RuntimeError(f"genqueue completed {row.jobs} of {spec['jobs']}")
    return {"rate": row.rate}


def genqueue_dispatch(spec: Spec) -> Result:
    from bench.queue_bench import genqueue_latency

    p50, p99, early = genqueue_latency(spec["mode"], spec["jobs"], spec["rate"])
    return {"p50_ms": p50, "p99_ms": p99, "early": early}


def genqueue_long(spec: Spec) -> Result:
    from bench.queue_bench import UNREACHED_CAP, submit_from_tasks
    from genqueue import Config, Job, JobQueue, JobResult
    from genqueue.actors.bridge import LoopThread

    n, sleep_s = spec["jobs"], spec["sleep_s"]

    async def sleeper(job: Job, report: Any) -> JobResult:
        await asyncio.sleep(sleep_s)
        return JobResult(video_url="memory://x")

    def body() -> float:
        io = LoopThread("bench-io")
        loop = io.start()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = Config(
                    data_dir=tmp,
                    max_concurrency=spec["concurrency"],
                    max_queued=UNREACHED_CAP,
                    max_queued_per_user=UNREACHED_CAP,
                )
                with JobQueue(cfg, sleeper, loop=loop) as q:
                    t0 = time.perf_counter()
                    io.run(submit_from_tasks(q, n, CLIENTS), timeout_s=600)
                    q.join(timeout_s=600)
                    wall_s = time.perf_counter() - t0
                    if (done := q.status().completed) != n:
                        raise RuntimeError(f"genqueue completed {done} of {n}")
        finally:
            io.stop()
        return wall_s

    return sampled(body)


def genqueue_fifo(spec: Spec) -> Result:
    """max_concurrency 1, jobs submitted one after another: order of starts, most at once."""
    from bench.queue_bench import UNREACHED_CAP
    from genqueue import Config, Job, JobQueue, JobResult

    n, work_s = spec["jobs"], spec["work_s"]
    started: list[int] = []
    running = peak = 0

    async def process(job: Job, report: Any) -> JobResult:
        nonlocal running, peak
        started.append(int(job.id.rsplit("-", 1)[1]))
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(work_s)
        finally:
            running -= 1
        return JobResult(video_url="memory://x")

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config(
            data_dir=tmp,
            dispatch=spec["mode"],
            max_concurrency=1,
            cron_interval_s=CRON_INTERVAL_S,
            max_queued=UNREACHED_CAP,
            max_queued_per_user=UNREACHED_CAP,
        )
        with JobQueue(cfg, process) as q:
            for i in range(n):
                q.submit({"prompt": "fifo", "id": f"fifo-{i}"})
            q.join(timeout_s=120)
    out_of_place = sum(1 for pos, i in enumerate(started) if pos != i)
    return {"started": len(started), "out_of_place": out_of_place, "peak_in_flight": peak}


def genqueue_restart(spec: Spec) -> Result:
    from bench.restart_bench import fill, raw_read, restart_round

    n = spec["jobs"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fill_s = fill(root, n, batch=1000)
        ready = [restart_round(root, n).ready_s for _ in range(spec["rounds"])]
        raw = [raw_read(root, n, decode=False) for _ in range(spec["rounds"])]
    return {"ready_s": ready, "raw_s": raw, "fill_s": fill_s}


# -- Huey -------------------------------------------------------------------------------------


def quiet_huey() -> None:
    import logging

    logging.getLogger("huey").setLevel(logging.WARNING)


def huey_drain(spec: Spec) -> Result:
    quiet_huey()
    row = huey_throughput(spec["jobs"], SUBMIT_THREADS, spec["workers"], spec["worker_type"])
    return {"rate": row.rate}


def huey_dispatch(spec: Spec) -> Result:
    quiet_huey()
    p50, p99, early = huey_latency(
        spec["jobs"], spec["rate"], spec["workers"], spec["worker_type"], **spec["polling"]
    )
    return {"p50_ms": p50, "p99_ms": p99, "early": early}


def huey_long(spec: Spec) -> Result:
    quiet_huey()
    n = spec["jobs"]

    def body() -> float:
        with (
            tempfile.TemporaryDirectory() as tmp,
            HueyRig(
                Path(tmp), spec["workers"], spec["worker_type"], sleep_s=spec["sleep_s"]
            ) as rig,
        ):
            t0 = time.perf_counter()
            submit_from_threads(n, SUBMIT_THREADS, lambda i: rig.noop())
            rig.counter.wait(n, timeout_s=600)
            return time.perf_counter() - t0

    return sampled(body)


# -- arq --------------------------------------------------------------------------------------


class Tally:
    """Completions on one event loop; `wait(n)` returns once n are done."""

    def __init__(self) -> None:
        self.n = 0
        self.called: dict[int, float] = {}
        self.target = 0
        self.reached = asyncio.Event()

    def hit(self, index: int) -> None:
        now = time.perf_counter()
        self.n += 1
        if index >= 0:
            self.called[index] = now
        if self.n >= self.target:
            self.reached.set()

    async def wait(self, n: int, timeout_s: float = 600) -> None:
        self.target = n
        if self.n < n:
            self.reached.clear()
            await asyncio.wait_for(self.reached.wait(), timeout_s)


async def arq_job(ctx: dict[str, Any], index: int, sleep_s: float) -> None:
    if sleep_s:
        await asyncio.sleep(sleep_s)
    ctx["tally"].hit(index)


@contextlib.asynccontextmanager
async def arq_rig(spec: Spec) -> AsyncIterator[tuple[Any, Tally]]:
    """An arq pool and worker (on this loop) against the parent's redis-server, emptied first."""
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    settings = RedisSettings(host="127.0.0.1", port=spec["redis_port"])
    pool = await create_pool(settings)
    await pool.flushall()
    tally = Tally()
    worker = Worker(
        [func(arq_job, name="job")],
        redis_settings=settings,
        handle_signals=False,
        max_jobs=spec["max_jobs"],
        poll_delay=spec["poll_delay"],
        ctx={"tally": tally},
    )
    task = asyncio.create_task(worker.async_run())
    try:
        yield pool, tally
    finally:
        task.cancel()  # stop polling; let the jobs in hand write their results, then close
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        await worker.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pool.aclose()


async def enqueue_all(pool: Any, n: int, sleep_s: float) -> None:
    todo = iter(range(n))

    async def client() -> None:
        for _ in todo:
            await pool.enqueue_job("job", -1, sleep_s)

    await asyncio.gather(*(client() for _ in range(CLIENTS)))


def arq_drain(spec: Spec) -> Result:
    async def go() -> float:
        async with arq_rig(spec) as (pool, tally):
            t0 = time.perf_counter()
            await enqueue_all(pool, spec["jobs"], 0.0)
            await tally.wait(spec["jobs"])
            return spec["jobs"] / (time.perf_counter() - t0)

    return {"rate": asyncio.run(go())}


def arq_dispatch(spec: Spec) -> Result:
    n, rate = spec["jobs"], spec["rate"]

    async def go() -> tuple[float, float, int]:
        async with arq_rig(spec) as (pool, tally):
            acked: dict[int, float] = {}
            t0 = time.perf_counter()
            for i in range(n):
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await pool.enqueue_job("job", i, 0.0)
                acked[i] = time.perf_counter()
            await tally.wait(n)
            return percentiles(acked, tally.called)

    p50, p99, early = asyncio.run(go())
    return {"p50_ms": p50, "p99_ms": p99, "early": early}


def arq_long(spec: Spec) -> Result:
    async def go() -> float:
        async with arq_rig(spec) as (pool, tally):
            t0 = time.perf_counter()
            await enqueue_all(pool, spec["jobs"], spec["sleep_s"])
            await tally.wait(spec["jobs"])
            return time.perf_counter() - t0

    return sampled(lambda: asyncio.run(go()))


RUNNERS: dict[tuple[str, str], Callable[[Spec], Result]] = {
    ("drain", "genqueue"): genqueue_drain,
    ("dispatch", "genqueue"): genqueue_dispatch,
    ("long", "genqueue"): genqueue_long,
    ("fifo", "genqueue"): genqueue_fifo,
    ("restart", "genqueue"): genqueue_restart,
    ("drain", "huey"): huey_drain,
    ("dispatch", "huey"): huey_dispatch,
    ("long", "huey"): huey_long,
    ("drain", "arq"): arq_drain,
    ("dispatch", "arq"): arq_dispatch,
    ("long", "arq"): arq_long,
}
