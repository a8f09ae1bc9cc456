"""One owner per data directory: `JobQueue.open()` locks it before reading anything.

Two queues on one directory would each recover the other's jobs and run them twice (with
Veo, two paid videos per job). A second opener, in another process or in this one, gets
DataDirInUse naming the directory and the holder's pid, and runs nothing.
"""

from __future__ import annotations

import json
import os
import stat
import time
import urllib.request
from pathlib import Path

import pytest
from helpers_procs import MAIN, Child, child_env, free_port
from helpers_queue import Recorder, queue_factory, request

from genqueue import Config, DataDirInUse, JobQueue
from genqueue.storage.dirlock import LOCK_FILE

KEY = "lock-test-key"
JOBS = 12


def _call(url: str, method: str = "GET", body: object = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {KEY}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


def _serve(tmp_path: Path, data: Path) -> tuple[Child, str]:
    port = free_port()
    env = child_env(
        GENQUEUE_API_KEYS=f"{KEY}=alice:admin",
        GENQUEUE_MAX_CONCURRENCY=str(JOBS),
        GENQUEUE_POLL_INTERVAL_S="0.05",
    )
    args = [MAIN, "serve", "--port", str(port), "--data-dir", str(data)]
    child = Child(args, tmp_path, "serve", env).start()
    url = f"http://127.0.0.1:{port}"
    child.wait_http(f"{url}/healthz")
    return child, url


def test_a_second_process_cannot_open_a_directory_serve_holds(tmp_path: Path) -> None:
    data = tmp_path / "data"
    serve, url = _serve(tmp_path, data)
    rec = Recorder()
    try:
        ids = [_call(f"{url}/api/generations", "POST", {"prompt": f"v{i}"})[1] for i in range(JOBS)]
        # The built-in fake Veo takes 3 s: the jobs are queued or in flight right now.
        second = JobQueue(Config(data_dir=str(data)), rec)
        with pytest.raises(DataDirInUse) as refused:
            second.open()
        assert refused.value.pid == serve.proc.pid if serve.proc else False
        assert str(data) in str(refused.value) and f"pid {refused.value.pid}" in str(refused.value)
        assert second.system is None and second.store is None  # it read nothing
        # The server runs every job, each exactly once (one paid start each at the provider).
        for job in ids:
            assert isinstance(job, dict)
            for _ in range(400):
                status = _call(f"{url}/api/generations/{job['id']}")[1]
                assert isinstance(status, dict)
                if status["status"] == "completed":
                    break
                time.sleep(0.05)  # polling the API, with a deadline (400 looks)
            assert status["status"] == "completed", status
        queue = _call(f"{url}/api/queue/status")[1]
        assert isinstance(queue, dict)
        assert queue["provider"]["starts"] == JOBS and queue["completed"] == JOBS, queue
        assert rec.calls == []  # the refused queue never ran a job
    finally:
        serve.sigkill()
    # kill -9 leaves the lock file, but the kernel dropped the lock: the next open works.
    assert (data / LOCK_FILE).exists()
    with JobQueue(Config(data_dir=str(data)), rec) as after:
        assert after.status().completed == JOBS and rec.calls == []


def test_a_second_queue_in_this_process_is_refused_until_the_first_closes(
    tmp_path: Path,
) -> None:
    rec = Recorder(hold_all=True)
    with queue_factory(tmp_path) as queues:
        first = queues.open(rec)
        job, _ = first.submit(request(id="only-once"))
        rec.wait_running(job.id)
        with pytest.raises(DataDirInUse) as refused:
            queues.open(rec)
        assert refused.value.pid == os.getpid()
        assert str(tmp_path / "data") in str(refused.value)
        first.reopen()  # the path taken after a disk fault keeps the directory
        rec.wait_calls(2)  # the reopened queue resumes the job in flight, as a restart would
        with pytest.raises(DataDirInUse):
            queues.open(rec)
        queues.close(first)  # the job stays in flight on disk; the next owner resumes it
        second = queues.open(rec)
        rec.release_all()
        second.join(timeout_s=20)
        assert second.get(job.id).status == "completed"
        # the first call, its resumption after the reopen, and the second owner's
        assert [c.job_id for c in rec.calls].count(job.id) == 3
        queues.close(second)
        second.open()  # the same object opens again after close
        assert second.get(job.id).status == "completed"
        queues.opened.append(second)


def test_the_data_directory_and_its_files_are_private(tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "data"
    with JobQueue(Config(data_dir=str(data)), Recorder()) as queue:
        queue.submit(request())
        queue.join(timeout_s=20)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir() if p.is_file()}
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert {"state.db", "state.db-wal", "state.db-shm", LOCK_FILE} <= set(modes), modes
    assert all(mode == 0o600 for mode in modes.values()), modes
