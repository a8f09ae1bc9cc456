"""State store and actor runtime: durable writes, ask round trips, alarm delivery.

    python -m bench state

Prints one markdown table. Every write counted below is acknowledged only once it
is committed at the same journal (WAL) and synchronous (FULL) level as the raw
sqlite3 rows beside it, measured in the same run on the same disk.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genqueue.actors.runtime import AlarmInfo, DurableActor
from genqueue.actors.system import ActorSystem
from genqueue.storage.state import StateStore

RUN_S = 2.0  # wall time of each throughput measurement
VALUE = {"id": "job-0000", "status": "queued", "prompt": "p" * 160, "attempts": 0}
PAYLOAD = b"x" * 220  # about the encoded size of VALUE


def _timed(duration_s: float, step: Callable[[], int]) -> float:
    """Call `step` (returns rows done) until `duration_s` passes; rows per second."""
    done, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < duration_s:
        done += step()
    return done / elapsed


def raw_sqlite(path: Path, per_commit: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (key TEXT PRIMARY KEY, value BLOB)")
    counter = iter(range(10**9))

    def batch() -> int:
        conn.execute("BEGIN")
        for _ in range(per_commit):
            conn.execute("REPLACE INTO t VALUES (?, ?)", (f"k{next(counter):09d}", PAYLOAD))
        conn.execute("COMMIT")
        return per_commit

    try:
        return _timed(RUN_S, batch)
    finally:
        conn.close()


def store_writers(path: Path, writers: int) -> tuple[float, float]:
    """Threads doing put + flush; returns (acknowledged writes/s, writes per commit)."""
    store = StateStore(path)
    ns = store.namespace("bench")
    store.flush()
    stop = threading.Event()
    start = threading.Barrier(writers + 1)
    counts = [0] * writers

    def writer(w: int) -> None:
        start.wait()
        i = 0
        while not stop.is_set():
            store.flush(ns.put(f"w{w:02d}/{i:09d}", VALUE))
            i += 1
        counts[w] = i

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for th in threads:
        th.start()
    start.wait()
    commits0, t0 = store.commits, time.perf_counter()
    time.sleep(RUN_S)
    stop.set()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t0
    commits = store.commits - commits0
    store.close()
    return sum(counts) / elapsed, sum(counts) / max(commits, 1)


def store_tasks(path: Path, writers: int) -> tuple[float, float]:
    """Writers as asyncio tasks (as HTTP handlers are): put, then await the commit.

    The acknowledgement resolves a future through `call_soon_threadsafe`, as the HTTP path
    does; no OS thread per writer.
    """
    store = StateStore(path)
    ns = store.namespace("bench")
    store.flush()
    counts = [0] * writers

    async def writer(w: int, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        i = 0
        while time.perf_counter() < deadline:
            fut: asyncio.Future[None] = loop.create_future()
            seq = ns.put(f"w{w:02d}/{i:09d}", VALUE)
            store.after_commit(seq, lambda f=fut: loop.call_soon_threadsafe(_settle, f))
            await fut
            i += 1
        counts[w] = i

    async def run() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(writer(w, t0 + RUN_S) for w in range(writers)))
        return time.perf_counter() - t0

    commits0 = store.commits
    elapsed = asyncio.run(run())
    commits = store.commits - commits0
    store.close()
    return sum(counts) / elapsed, sum(counts) / max(commits, 1)


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Echo(DurableActor):
    kind = "echo"

    def receive(self, message: Any) -> Any:
        if message == "write":
            self.storage.put("last", VALUE)
        return message


class Ticker(DurableActor):
    """Re-arms its alarm at `now` until it has fired `rounds` times."""

    kind = "ticker"
    rounds = 5
    fired: Callable[[], None] = staticmethod(lambda: None)

    def receive(self, message: Any) -> Any:
        self.left = self.rounds
        self.set_alarm(self.clock.now())

    def alarm(self, info: AlarmInfo) -> None:
        Ticker.fired()
        self.left -= 1
        if self.left:
            self.set_alarm(self.clock.now())


def ask_latency(path: Path, message: str, n: int = 3000) -> tuple[float, float]:
    store = StateStore(path)
    system = ActorSystem(store)
    system.register(Echo)
    system.start()

    async def main() -> list[float]:
        await system.ask_async(Echo, "e", "warm")
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await system.ask_async(Echo, "e", message)
            out.append(time.perf_counter() - t0)
        return out

    try:
        lat = sorted(asyncio.run(main()))
    finally:
        system.stop()
        store.close()
    return lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6


def alarm_rate(path: Path, actors: int = 500) -> float:
    store = StateStore(path)
    system = ActorSystem(store, idle_timeout_s=3600)
    system.register(Ticker)
    system.start()
    total = actors * Ticker.rounds
    lock, all_fired = threading.Lock(), threading.Event()
    fired = [0]

    def on_fire() -> None:
        with lock:
            fired[0] += 1
            if fired[0] == total:
                all_fired.set()

    Ticker.fired = staticmethod(on_fire)
    try:
        for a in range(actors):  # activate first: measure delivery, not thread start-up
            system.get(Ticker, f"t{a}")
        t0 = time.perf_counter()
        for a in range(actors):
            system.tell(Ticker, f"t{a}", "arm")
        all_fired.wait(60)
        return fired[0] / (time.perf_counter() - t0)
    finally:
        system.stop()
        store.close()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="genqueue-bench-") as tmp:
        d = Path(tmp)
        raw1 = raw_sqlite(d / "raw1.db", 1)
        raw64 = raw_sqlite(d / "raw64.db", 64)
        rows: list[tuple[str, str, str]] = [
            ("raw sqlite3, 1 write per commit (WAL, FULL)", f"{raw1:,.0f} writes/s", "1.00x"),
            (
                "raw sqlite3, 64 writes per commit (WAL, FULL)",
                f"{raw64:,.0f} writes/s",
                f"{raw64 / raw1:.2f}x",
            ),
        ]
        for writers in (1, 8, 64):
            rate, group = store_writers(d / f"store{writers}.db", writers)
            rows.append(
                (
                    f"StateStore put+flush, {writers} writer thread{'s' if writers > 1 else ''}",
                    f"{rate:,.0f} acked writes/s ({group:.1f} per commit)",
                    f"{rate / raw1:.2f}x",
                )
            )
        rate, group = store_tasks(d / "tasks64.db", 64)
        rows.append(
            (
                "StateStore put + await commit, 64 asyncio writers",
                f"{rate:,.0f} acked writes/s ({group:.1f} per commit)",
                f"{rate / raw1:.2f}x",
            )
        )
        p50, p99 = ask_latency(d / "ask.db", "read")
        rows.append(("ask_async round trip, no write", f"p50 {p50:,.0f} µs, p99 {p99:,.0f} µs", ""))
        p50, p99 = ask_latency(d / "askw.db", "write")
        rows.append(
            (
                "ask_async round trip, one durable write",
                f"p50 {p50:,.0f} µs, p99 {p99:,.0f} µs",
                "",
            )
        )
        rate = alarm_rate(d / "alarms.db")
        rows.append(("alarms delivered (500 actors, set at now)", f"{rate:,.0f} alarms/s", ""))
    print(
        f"State store and runtime (cpus={os.cpu_count()}, sqlite {sqlite3.sqlite_version}; "
        "ratio vs raw 1 write per commit)\n"
    )
    print("| measure | result | ratio |")
    print("|---|---|---|")
    for name, result, ratio in rows:
        print(f"| {name} | {result} | {ratio} |")


if __name__ == "__main__":
    main()
