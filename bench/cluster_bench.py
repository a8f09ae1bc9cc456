"""Benchmark: `dispatch = "sqs"`, one coordinator and 1, 2, 4 workers, every part a process.

moto's server (SQS and S3 in one process), the fake Veo answering after 2 s, a coordinator
(`main.py serve`) and workers (`main.py worker --concurrency 25`). For each worker count:
400 jobs submitted over HTTP (64 clients), the wall time from the first submit to the last
completion against the ideal for that total concurrency (ceil(jobs / slots) x latency),
SQS requests per job (the coordinator's and the workers' own counts), and peak threads
and RSS of each process (from /proc, sampled every 0.1 s). Then the same jobs in `alarm`
mode on one machine, for the coordinator's CPU per job.

Scale it with GENQUEUE_BENCH_JOBS (400), GENQUEUE_BENCH_WORKERS ("1,2,4"),
GENQUEUE_BENCH_WORKER_CONCURRENCY (25), GENQUEUE_BENCH_LATENCY_S (2.0),
GENQUEUE_BENCH_POLL_S (0.5).
"""

from __future__ import annotations

import asyncio
import contextlib
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-admin"
CLK_TCK = os.sysconf("SC_CLK_TCK")
_MOTO = """
import sys
from moto.server import ThreadedMotoServer
s = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
s.start()
print(s.get_host_and_port()[1], flush=True)
sys.stdin.read()
s.stop()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_status(pid: int) -> dict[str, int]:
    """Threads, peak RSS (VmHWM, KiB) and CPU ticks of a process, from /proc."""
    out = {"threads": 0, "hwm_kb": 0, "cpu_ticks": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                out["hwm_kb"] = int(line.split()[1])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out["cpu_ticks"] = int(fields[11]) + int(fields[12])  # utime + stime
    return out


class Procs:
    """Child processes by role; samples their peak threads while a run lasts."""

    def __init__(self) -> None:
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.peak_threads: dict[str, int] = {}
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.children[name] = proc
        return proc

    def sample(self) -> None:
        def run() -> None:
            while not self._stop.wait(0.1):
                for name, proc in list(self.children.items()):
                    n = _proc_status(proc.pid)["threads"]
                    self.peak_threads[name] = max(self.peak_threads.get(name, 0), n)

        self._sampler = threading.Thread(target=run, daemon=True)
        self._sampler.start()

    def stop(self, name: str) -> None:
        proc = self.children.pop(name)
        if proc.stdin is not None:
            proc.stdin.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def stop_all(self) -> None:
        self._stop.set()
        for name in list(self.children):
            self.stop(name)


def _wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer in {timeout_s} s")


@contextlib.contextmanager
def _infra(latency_s: float) -> Iterator[tuple[str, str]]:
    """moto and the fake Veo, each its own process: (moto endpoint, fake Veo URL)."""
    procs = Procs()
    try:
        moto = procs.start("moto", ["-c", _MOTO], dict(os.environ))
        assert moto.stdout is not None
        endpoint = f"http://127.0.0.1:{int(moto.stdout.readline())}"
        port = _free_port()
        args = [str(ROOT / "main.py"), "fake-veo", "--port", str(port)]
        procs.start("fake", [*args, "--latency-s", str(latency_s), "--video-size", "4096"], {})
        _wait_http(f"http://127.0.0.1:{port}/_fake/stats")
        yield endpoint, f"http://127.0.0.1:{port}"
    finally:
        procs.stop_all()


def _env(moto: str, fake: str, prefix: str, poll_s: float, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GENQUEUE_", "VEO3_", "S3_"))}
    return base | {
        "PYTHONUNBUFFERED": "1",
        "GENQUEUE_API_KEYS": f"{KEY}=ops:admin",
        "GENQUEUE_LOG_LEVEL": "WARN",
        "VEO3_API_KEY": "bench",
        "VEO3_BASE_URL": fake,
        "GENQUEUE_POLL_INTERVAL_S": str(poll_s),
        "GENQUEUE_STORAGE": "s3",
        "S3_BUCKET": prefix,
        "S3_ENDPOINT_URL": moto,
        "SQS_ENDPOINT_URL": moto,
        "GENQUEUE_SQS_PREFIX": prefix,
        "GENQUEUE_SQS_WAIT_S": "2",
        "GENQUEUE_WORKER_LEASE_S": "30",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1",
        **extra,
    }


def _bucket(moto: str, name: str) -> None:
    import botocore.session

    botocore.session.get_session().create_client(
        "s3",
        endpoint_url=moto,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    ).create_bucket(Bucket=name)


async def _drive(url: str, jobs: int, workers: int) -> tuple[float, dict[str, Any]]:
    """Wait for the workers, submit `jobs`, wait for every completion: (wall s, status)."""
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(headers=headers) as http:

        async def status() -> dict[str, Any]:
            async with http.get(f"{url}/api/queue/status") as resp:
                body: dict[str, Any] = await resp.json()
                return body

        while workers and len(((await status()).get("cluster") or {}).get("workers", [])) < workers:
            await asyncio.sleep(0.1)
        todo = iter(range(jobs))

        async def client() -> None:
            for i in todo:
                body = {"prompt": f"cluster bench {i}"}
                async with http.post(f"{url}/api/generations", json=body) as resp:
                    assert resp.status == 202, await resp.text()

        t0 = time.monotonic()
        await asyncio.gather(*(client() for _ in range(64)))
        while True:
            st = await status()
            if st["completed"] + st["failed"] >= jobs:
                return time.monotonic() - t0, st
            await asyncio.sleep(0.05)


def run_cluster(moto: str, fake: str, workers: int, jobs: int, conc: int, poll_s: float) -> Any:
    prefix = f"bench{workers}w{int(time.time())}"
    _bucket(moto, prefix)
    procs = Procs()
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="genqueue-cluster-bench-") as tmp:
        env = _env(moto, fake, prefix, poll_s, GENQUEUE_DISPATCH="sqs")
        env["GENQUEUE_MAX_CONCURRENCY"] = str(workers * conc)
        serve = [str(ROOT / "main.py"), "serve", "--port", str(port), "--data-dir", tmp]
        try:
            coordinator = procs.start("coordinator", serve, env)
            _wait_http(f"http://127.0.0.1:{port}/healthz")
            for i in range(workers):
                args = [str(ROOT / "main.py"), "worker", "--concurrency", str(conc)]
                procs.start(f"worker{i}", args, env)
            procs.sample()
            cpu0 = _proc_status(coordinator.pid)["cpu_ticks"]
            wall_s, st = asyncio.run(_drive(f"http://127.0.0.1:{port}", jobs, workers))
            cpu_s = (_proc_status(coordinator.pid)["cpu_ticks"] - cpu0) / CLK_TCK
            time.sleep(1.0)  # one more heartbeat: the workers' request counts
            st = asyncio.run(_drive(f"http://127.0.0.1:{port}", 0, 0))[1]
            rss = {n: _proc_status(p.pid)["hwm_kb"] / 1024 for n, p in procs.children.items()}
            threads = dict(procs.peak_threads)
        finally:
            procs.stop_all()
    cluster = st["cluster"]
    worker_requests = sum(w.get("sqsRequests", 0) for w in cluster["workers"])
    return {
        "workers": workers,
        "wall_s": wall_s,
        "ideal_s": math.ceil(jobs / (workers * conc)) * float(os.environ.get("_LAT", "2")),
        "completed": st["completed"],
        "sqs_per_job": (cluster["sqsRequests"] + worker_requests) / jobs,
        "coordinator_cpu_ms_per_job": 1000 * cpu_s / jobs,
        "threads": threads,
        "rss_mb": rss,
    }


def run_alarm(moto: str, fake: str, jobs: int, conc: int, poll_s: float) -> Any:
    """The same jobs on one machine (alarm dispatch, S3 videos): the process's CPU per job."""
    prefix = f"benchalarm{int(time.time())}"
    _bucket(moto, prefix)
    procs = Procs()
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="genqueue-cluster-bench-") as tmp:
        env = _env(moto, fake, prefix, poll_s, GENQUEUE_MAX_CONCURRENCY=str(conc))
        serve = [str(ROOT / "main.py"), "serve", "--port", str(port), "--data-dir", tmp]
        try:
            server = procs.start("serve", serve, env)
            _wait_http(f"http://127.0.0.1:{port}/healthz")
            cpu0 = _proc_status(server.pid)["cpu_ticks"]
            wall_s, _ = asyncio.run(_drive(f"http://127.0.0.1:{port}", jobs, 0))
            cpu_s = (_proc_status(server.pid)["cpu_ticks"] - cpu0) / CLK_TCK
        finally:
            procs.stop_all()
    return {"wall_s": wall_s, "cpu_ms_per_job": 1000 * cpu_s / jobs}


def main() -> None:
    jobs = int(os.environ.get("GENQUEUE_BENCH_JOBS", 400))
    counts = [int(n) for n in os.environ.get("GENQUEUE_BENCH_WORKERS", "1,2,4").split(",")]
    conc = int(os.environ.get("GENQUEUE_BENCH_WORKER_CONCURRENCY", 25))
    latency_s = float(os.environ.get("GENQUEUE_BENCH_LATENCY_S", 2.0))
    poll_s = float(os.environ.get("GENQUEUE_BENCH_POLL_S", 0.5))
    os.environ["_LAT"] = str(latency_s)
    with _infra(latency_s) as (moto, fake):
        rows = [run_cluster(moto, fake, n, jobs, conc, poll_s) for n in counts]
        alarm = run_alarm(moto, fake, jobs, max(counts) * conc, poll_s)
    print(
        f"{jobs} jobs, fake Veo latency {latency_s:g} s, polls every {poll_s:g} s, "
        f"workers of concurrency {conc}, moto for SQS and S3\n"
    )
    print(
        "| workers | wall s | ideal s | wall / ideal | SQS requests / job "
        "| coordinator CPU ms / job | peak threads (coord / worker) "
        "| peak RSS MB (coord / worker) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        wt = max((v for k, v in r["threads"].items() if k.startswith("worker")), default=0)
        wr = max((v for k, v in r["rss_mb"].items() if k.startswith("worker")), default=0.0)
        print(
            f"| {r['workers']} | {r['wall_s']:.2f} | {r['ideal_s']:.0f} "
            f"| {r['wall_s'] / r['ideal_s']:.2f}x | {r['sqs_per_job']:.1f} "
            f"| {r['coordinator_cpu_ms_per_job']:.2f} "
            f"| {r['threads'].get('coordinator', 0)} / {wt} "
            f"| {r['rss_mb'].get('coordinator', 0):.0f} / {wr:.0f} |"
        )
    print(
        f"\nalarm mode, one machine, max_concurrency {max(counts) * conc}: "
        f"wall {alarm['wall_s']:.2f} s, CPU {alarm['cpu_ms_per_job']:.2f} ms / job"
    )
    print(json.dumps({"rows": rows, "alarm": alarm}), file=sys.stderr)


if __name__ == "__main__":
    main()
