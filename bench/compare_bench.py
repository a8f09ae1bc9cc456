"""Side-by-side benchmark (issue #7): genqueue beside Huey and arq, in one run on one machine.

For each round (3 by default), every measurement runs in a fresh process of its own
(bench/compare_runs.py), the systems one after another, so each has the same machine and
its peak threads and RSS are its own:

- drain: N jobs (10,000) with an instant processor, every acknowledgement durable: genqueue
  (alarm dispatch, SQLite `synchronous=FULL`), Huey (`SqliteHuey`, a file on the same disk,
  SQLite's default FULL) at its best worker setting, arq against a local redis-server with
  `appendfsync always` (redis acknowledges after the fsync; `--save ''`, no snapshots);
- dispatch latency (submit acknowledged → processor called) p50/p99 at 200 jobs/s: the peers
  at their default polling and tuned to poll every 10 ms and every 1 ms;
- 1,000 jobs of 1 s each at concurrency 500: wall time against the ideal (2 s), peak OS
  threads and peak RSS (VmHWM) of the process that submits and works;
- the plan's comparison matrix for genqueue's `immediate`, `cron` and `alarm` dispatch:
  drain rate, start delay, and with `max_concurrency` 1 whether jobs start one at a time in
  the order submitted;
- restart: from `open()` with 100,000 queued jobs to answering with all of them and
  acknowledging a new submit (bench/restart_bench.py).

The peers' best settings come from a short calibration before the rounds: Huey over thread
workers 1, 2, 4, 8 and process workers 2, 4; arq over `max_jobs` 10 and 100 and 500 polling
every 10 ms, and its default (10, every 0.5 s). arq needs `redis-server` on PATH; without it
arq is skipped with a note. Prints markdown tables with min / median / max over the rounds and
ratios measured in the same run; asserts nothing.

    python -m bench compare [--rounds N] [--quick]
    GENQUEUE_BENCH_QUICK=1 GENQUEUE_BENCH_ROUNDS=1 python -m bench compare   (smoke test)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.compare_table import Results, render

__all__ = ["RedisServer", "Sizes", "main", "measure"]

ROOT = Path(__file__).resolve().parent.parent
MODES = ("alarm", "immediate", "cron")
HUEY_CHOICES = [("thread", 1), ("thread", 2), ("thread", 4), ("thread", 8), ("process", 2)]
HUEY_CHOICES += [("process", 4)]
ARQ_CHOICES = [(10, 0.5), (10, 0.01), (100, 0.01), (500, 0.01)]  # (max_jobs, poll_delay s)
POLLING = {  # name -> (Huey consumer options, arq poll_delay)
    "default": ({}, 0.5),
    "10 ms": ({"initial_delay": 0.01, "backoff": 1.0, "max_delay": 0.01}, 0.01),
    "1 ms": ({"initial_delay": 0.001, "backoff": 1.0, "max_delay": 0.001}, 0.001),
}


@dataclass
class Sizes:
    rounds: int = 3
    drain_jobs: int = 10_000
    latency_jobs: int = 1_000
    rate: float = 200.0
    long_jobs: int = 1_000
    long_concurrency: int = 500
    long_sleep_s: float = 1.0
    fifo_jobs: int = 50
    fifo_work_s: float = 0.01
    restart_jobs: int = 100_000
    calibration_jobs: int = 1_000
    huey_choices: list[tuple[str, int]] = field(default_factory=lambda: list(HUEY_CHOICES))
    arq_choices: list[tuple[int, float]] = field(default_factory=lambda: list(ARQ_CHOICES))

    @classmethod
    def quick(cls, rounds: int = 1) -> Sizes:
        """A smoke test: every row, tiny sizes, a few seconds."""
        return cls(
            rounds=rounds,
            drain_jobs=50,
            latency_jobs=20,
            long_jobs=20,
            long_concurrency=10,
            long_sleep_s=0.2,
            fifo_jobs=6,
            restart_jobs=200,
            calibration_jobs=50,
            huey_choices=[("thread", 1), ("thread", 2)],
            arq_choices=[(10, 0.01)],
        )


# -- processes --------------------------------------------------------------------------------


def measure(spec: dict[str, Any], timeout_s: float = 600) -> dict[str, Any]:
    """Run one measurement in a fresh `python -m bench.compare_bench --child SPEC`."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.compare_bench", "--child", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    raise RuntimeError(f"{spec['system']} {spec['kind']} exited {proc.returncode}: {tail}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A redis-server of our own on a free loopback port, its files in a temp dir."""

    def __init__(self, exe: str):
        self.dir = tempfile.mkdtemp(prefix="genqueue-compare-redis-")
        self.port = free_port()
        self.version = (
            subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
            .stdout.split(" v=")[-1]
            .split()[0]
        )
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir]
        args += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        self.proc = subprocess.Popen(
            [exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    @classmethod
    def start(cls) -> RedisServer | None:
        exe = shutil.which("redis-server")
        return cls(exe) if exe else None

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def cpu_s(self) -> float:
        """redis-server's CPU time so far (user + system)."""
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return 0.0

    def peak_rss_mb(self) -> float | None:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the plan ---------------------------------------------------------------------------------


def calibrate(sizes: Sizes, redis: RedisServer | None, res: Results) -> None:
    """Pick each peer's best drain setting on a short run."""
    n = sizes.calibration_jobs
    rates = {}
    for worker_type, workers in sizes.huey_choices:
        spec = {"kind": "drain", "system": "huey", "jobs": n}
        rates[worker_type, workers] = measure(
            spec | {"workers": workers, "worker_type": worker_type}
        )["rate"]
    res.huey_best = max(rates, key=lambda k: rates[k])
    res.calibration["Huey"] = {f"{w} {t}": r for (t, w), r in rates.items()}
    if redis is None:
        return
    arq_rates = {}
    for max_jobs, poll in sizes.arq_choices:
        spec = {"kind": "drain", "system": "arq", "jobs": n, "redis_port": redis.port}
        arq_rates[max_jobs, poll] = measure(spec | {"max_jobs": max_jobs, "poll_delay": poll})[
            "rate"
        ]
    res.arq_best = max(arq_rates, key=lambda k: arq_rates[k])
    res.calibration["arq"] = {f"max_jobs {m}, poll {p:g} s": r for (m, p), r in arq_rates.items()}


def measure_arq(spec: dict[str, Any], redis: RedisServer) -> dict[str, Any]:
    """An arq measurement, with the CPU time redis-server spent on it as `redis_cpu_s`."""
    before = redis.cpu_s()
    result = measure(spec)
    return result | {"redis_cpu_s": redis.cpu_s() - before}


def one_round(sizes: Sizes, redis: RedisServer | None, res: Results) -> None:
    huey = {"worker_type": res.huey_best[0], "workers": res.huey_best[1]}
    arq = None
    if redis is not None:
        arq = {"redis_port": redis.port, "max_jobs": res.arq_best[0], "poll_delay": res.arq_best[1]}
    drain = {"kind": "drain", "jobs": sizes.drain_jobs}
    for mode in MODES:
        res.add(
            ("drain", f"genqueue {mode}"), measure(drain | {"system": "genqueue", "mode": mode})
        )
    res.add(("drain", "Huey"), measure(drain | {"system": "huey"} | huey))
    if redis and arq:
        res.add(("drain", "arq"), measure_arq(drain | {"system": "arq"} | arq, redis))

    lat = {"kind": "dispatch", "jobs": sizes.latency_jobs, "rate": sizes.rate}
    for mode in MODES:
        res.add(
            ("dispatch", f"genqueue {mode}"), measure(lat | {"system": "genqueue", "mode": mode})
        )
    for name, (options, poll) in POLLING.items():
        spec = lat | {"system": "huey", "polling": options} | huey
        res.add(("dispatch", f"Huey, polling {name}"), measure(spec))
        if redis and arq:
            spec = lat | {"system": "arq"} | arq | {"poll_delay": poll}
            res.add(("dispatch", f"arq, polling {name}"), measure_arq(spec, redis))

    long = {"kind": "long", "jobs": sizes.long_jobs, "sleep_s": sizes.long_sleep_s}
    c = sizes.long_concurrency
    res.add(("long", "genqueue"), measure(long | {"system": "genqueue", "concurrency": c}))
    spec = long | {"system": "huey", "workers": c, "worker_type": "thread"}
    res.add(("long", "Huey"), measure(spec))
    if redis and arq:
        spec = long | {"system": "arq"} | arq | {"max_jobs": c, "poll_delay": 0.01}
        res.add(("long", "arq"), measure_arq(spec, redis))

    fifo = {"kind": "fifo", "system": "genqueue", "jobs": sizes.fifo_jobs}
    for mode in MODES:
        spec = fifo | {"mode": mode, "work_s": sizes.fifo_work_s}
        res.add(("fifo", f"genqueue {mode}"), measure(spec))


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def parse(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m bench compare", description=__doc__)
    p.add_argument("--rounds", type=int, default=int(env("GENQUEUE_BENCH_ROUNDS", "0")) or None)
    p.add_argument("--quick", action="store_true", default=bool(env("GENQUEUE_BENCH_QUICK")))
    p.add_argument("--no-arq", action="store_true", help="skip arq even with redis-server")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args, _ = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    return args


def run(sizes: Sizes, with_arq: bool = True) -> Results:
    res = Results(sizes=sizes, machine=machine())
    redis = RedisServer.start() if with_arq else None
    if redis is None:
        res.notes.append(
            "arq skipped: " + ("--no-arq." if not with_arq else "no `redis-server` on PATH.")
        )
    else:
        res.redis_version = redis.version
    started = time.perf_counter()
    try:
        calibrate(sizes, redis, res)
        for _ in range(sizes.rounds):
            one_round(sizes, redis, res)
        restart = {"kind": "restart", "system": "genqueue", "jobs": sizes.restart_jobs}
        res.restart = measure(restart | {"rounds": max(3, sizes.rounds)})
        if redis is not None:
            res.redis_rss_mb = redis.peak_rss_mb()
    finally:
        if redis is not None:
            redis.stop()
    res.total_s = time.perf_counter() - started
    return res


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.child:
        from bench.compare_runs import run as run_child

        print("RESULT " + json.dumps(run_child(json.loads(args.child))), flush=True)
        return
    sizes = Sizes.quick(args.rounds or 1) if args.quick else Sizes(rounds=args.rounds or 3)
    print(render(run(sizes, with_arq=not args.no_arq)))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
