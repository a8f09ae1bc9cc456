"""What the benchmarks share, free of genqueue: a peer's process (Huey, arq) imports this
and carries none of genqueue's modules, so its memory is its own.

Submitting from threads or at a steady rate, counting completions (in this process or in
forked workers), dispatch-latency percentiles, Huey on a SQLite file, and samplers for the
peak threads and RSS of this process.
"""

from __future__ import annotations

import resource
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Counter",
    "HueyRig",
    "Row",
    "SharedCounter",
    "ThreadSampler",
    "huey_latency",
    "huey_throughput",
    "os_threads",
    "paced",
    "peak_rss_mb",
    "percentiles",
    "submit_from_threads",
]


@dataclass
class Row:
    name: str
    setting: str
    jobs: int = 0
    drain_s: float = 0.0
    submit_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    early: int = 0  # called before the submit call had returned (latency counted as 0)

    @property
    def rate(self) -> float:
        return self.jobs / self.drain_s if self.drain_s else 0.0


def submit_from_threads(n: int, threads: int, submit_one: Callable[[int], None]) -> float:
    """Call `submit_one(i)` for i in range(n) from `threads` threads; returns the time taken."""
    chunks = [range(t, n, threads) for t in range(threads)]
    start = threading.Barrier(threads + 1)

    def worker(chunk: range) -> None:
        start.wait()
        for i in chunk:
            submit_one(i)

    pool = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for t in pool:
        t.start()
    t0 = time.perf_counter()
    start.wait()
    for t in pool:
        t.join()
    return time.perf_counter() - t0


def paced(n: int, rate: float, submit_one: Callable[[int], float]) -> dict[int, float]:
    """Submit n jobs at `rate` per second from this thread; returns index -> ack time."""
    acked: dict[int, float] = {}
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        acked[i] = submit_one(i)
    return acked


def percentiles(acked: dict[int, float], called: dict[int, float]) -> tuple[float, float, int]:
    lat = [called[i] - acked[i] for i in acked if i in called]
    early = sum(1 for x in lat if x < 0)
    ms = sorted(max(0.0, x) * 1000 for x in lat)
    if len(ms) < 2:
        return (ms[0] if ms else float("nan")), (ms[0] if ms else float("nan")), early
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return q[49], q[98], early


class Counter:
    """Counts completions; `wait(n)` returns once n are done."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.n = 0
        self.called: dict[int, float] = {}

    def hit(self, index: int | None = None) -> None:
        now = time.perf_counter()
        with self.cv:
            self.n += 1
            if index is not None:
                self.called[index] = now
            self.cv.notify_all()

    def wait(self, n: int, timeout_s: float = 300) -> None:
        with self.cv:
            if not self.cv.wait_for(lambda: self.n >= n, timeout_s):
                raise TimeoutError(f"only {self.n} of {n} done after {timeout_s} s")


class SharedCounter:
    """A Counter that worker *processes* (Huey's process workers, forked) can hit too.

    `time.perf_counter` is CLOCK_MONOTONIC on Linux, one clock for every process; `wait`
    polls every millisecond, which adds at most that to a measured drain.
    """

    def __init__(self, size: int) -> None:
        import multiprocessing

        self._n = multiprocessing.Value("q", 0)
        self._called = multiprocessing.Array("d", [-1.0] * size, lock=False)

    @property
    def n(self) -> int:
        return int(self._n.value)

    @property
    def called(self) -> dict[int, float]:
        return {i: t for i, t in enumerate(self._called) if t >= 0}

    def hit(self, index: int | None = None) -> None:
        now = time.perf_counter()
        with self._n.get_lock():
            self._n.value += 1
        if index is not None and index < len(self._called):
            self._called[index] = now

    def wait(self, n: int, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while self.n < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.n} of {n} done after {timeout_s} s")
            time.sleep(0.001)


# -- Huey -------------------------------------------------------------------------------------


class HueyRig:
    """A SqliteHuey on a file, a task that counts, and a consumer.

    Thread workers by default; `worker_type="process"` forks worker processes (they count
    through a SharedCounter). `size` bounds the task indexes whose call times are kept (process
    workers); `consumer_options` are Huey's polling knobs (`initial_delay`, `backoff`,
    `max_delay`). `sleep_s` makes each task sleep that long before it counts.
    """

    def __init__(
        self,
        root: Path,
        workers: int,
        worker_type: str = "thread",
        size: int = 0,
        sleep_s: float = 0.0,
        **consumer_options: float,
    ):
        from huey import SqliteHuey

        self.huey = SqliteHuey("bench", filename=str(root / "huey.db"), immediate=False)
        self.counter: Counter | SharedCounter = (
            SharedCounter(size) if worker_type == "process" else Counter()
        )
        counter = self.counter

        @self.huey.task()
        def noop(index: int | None = None) -> None:
            if sleep_s:
                time.sleep(sleep_s)
            counter.hit(index)

        self.noop = noop
        self.consumer = self.huey.create_consumer(
            workers=workers, worker_type=worker_type, periodic=False, **consumer_options
        )

    def __enter__(self) -> HueyRig:
        # Consumer.start() installs signal handlers: put ours back afterwards.
        saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        self.consumer.start()
        for s, handler in saved.items():
            signal.signal(s, handler)
        return self

    def __exit__(self, *exc: object) -> None:
        self.consumer.stop(graceful=True)
        self.huey.storage.close()


def huey_throughput(n: int, threads: int, workers: int, worker_type: str = "thread") -> Row:
    with tempfile.TemporaryDirectory() as tmp, HueyRig(Path(tmp), workers, worker_type) as rig:
        t0 = time.perf_counter()
        submit_s = submit_from_threads(n, threads, lambda i: rig.noop())
        rig.counter.wait(n)
        drain_s = time.perf_counter() - t0
    return Row("Huey SqliteHuey", f"{workers} {worker_type} workers", n, drain_s, submit_s)


def huey_latency(
    n: int, rate: float, workers: int, worker_type: str = "thread", **consumer_options: float
) -> tuple[float, float, int]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        HueyRig(Path(tmp), workers, worker_type, size=n, **consumer_options) as rig,
    ):

        def submit(i: int) -> float:
            rig.noop(i)
            return time.perf_counter()

        acked = paced(n, rate, submit)
        rig.counter.wait(n)
        return percentiles(acked, rig.counter.called)


# -- this process -----------------------------------------------------------------------------


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024


def os_threads() -> int:
    """The threads of this process as the OS counts them (Python's own and any other)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except OSError:
        pass
    return threading.active_count()


class ThreadSampler:
    """The most threads alive at once, sampled on a thread of its own.

    `count` says what a thread is: Python's threads by default; the compare bench passes one
    that reads the OS's count from /proc, which also sees threads Python did not start.
    """

    def __init__(self, period_s: float = 0.005, count: Callable[[], int] = threading.active_count):
        self.period_s = period_s
        self.count = count
        self.peak = count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="thread-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.peak = max(self.peak, self.count())

    def __enter__(self) -> ThreadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
