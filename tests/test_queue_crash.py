"""Crash: a child process runs 200 jobs; it is SIGKILLed three times at random moments
and restarted on the same data dir. No acknowledged job is lost, none stays stuck, and
none reaches a terminal state twice.

What is guaranteed, and so asserted:
- `submit` returns only once the job is durable: every acknowledged job survives every
  kill and ends `completed` after the last restart (never created a second time).
- A job event is published only after the change is committed. So a terminal event
  seen in one run means the terminal state was durable: no later run processes that job
  again, and no job has two terminal events across all runs (it may have none: the
  kill can land between the commit and the event).
- Processing is at least once: a job killed mid-processing is called again after the
  restart, with the checkpoint it had saved (`report` is durable before it returns).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

CHILD = Path(__file__).with_name("helpers_queue_crash.py")
TOTAL = 200
KILLS = 3


def run_child(
    data: Path, events: Path, run: int, first: int, kill_after: int | None
) -> list[list[str]]:
    """Run one child; SIGKILL it after `kill_after` lines (None: let it finish)."""
    final = kill_after is None
    args = [sys.executable, str(CHILD), str(data), str(events), str(run), str(first)]
    proc = subprocess.Popen(
        [*args, str(TOTAL), "1" if final else "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    guard = threading.Timer(60, proc.kill)  # a hung child fails the test, never the run
    guard.start()
    lines: list[list[str]] = []
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append(raw.split())
            if not final and (len(lines) >= kill_after or lines[-1] == ["DRAINED"]):
                os.kill(proc.pid, signal.SIGKILL)
                break
        # what the child printed before it died is still in the pipe: it counts too
        lines.extend(raw.split() for raw in proc.stdout)
        proc.wait(timeout=30)
    finally:
        guard.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.stdout is not None:
            proc.stdout.close()
    if final:
        assert proc.returncode == 0, f"the last run failed (exit {proc.returncode})"
        assert lines and lines[-1] == ["DONE"]
    else:
        assert proc.returncode == -signal.SIGKILL
    return lines


def test_sigkill_three_times_loses_nothing_and_ends_nothing_twice(tmp_path):
    seed = int(os.environ.get("GENQUEUE_CRASH_SEED", random.SystemRandom().randrange(2**32)))
    rng = random.Random(seed)
    why = f"(seed {seed}: rerun with GENQUEUE_CRASH_SEED={seed})"
    data = tmp_path / "data"

    acked: list[str] = []
    created: dict[str, int] = defaultdict(int)
    calls: dict[str, list[tuple[int, str]]] = defaultdict(list)  # id -> (run, checkpoint run)
    saves: dict[str, list[int]] = defaultdict(list)  # id -> runs whose checkpoint was stored
    terminal: dict[str, list[tuple[int, str]]] = defaultdict(list)  # from the event files
    final: dict[str, tuple[str, int]] = {}
    kill_points = [rng.randint(1, 400) for _ in range(KILLS)]

    for run in range(KILLS + 1):
        kill_after = kill_points[run] if run < KILLS else None
        events = tmp_path / f"events-{run}.txt"
        lines = run_child(data, events, run, len(acked), kill_after)
        for line in lines:
            match line:
                case ["ACK", job_id, was_created]:
                    if job_id not in acked:
                        acked.append(job_id)
                    created[job_id] += was_created == "True"
                case ["CALL", job_id, _attempt, saved]:
                    calls[job_id].append((run, saved))
                case ["SAVED", job_id]:
                    saves[job_id].append(run)
                case ["FINAL", job_id, status, attempts]:
                    final[job_id] = (status, int(attempts))
        if events.exists():
            for row in events.read_text().splitlines():
                job_id, status = row.split()
                terminal[job_id].append((run, status))

    # Every acknowledged job (all of them, by the end) is there and completed.
    assert acked == [f"job-{i:04d}" for i in range(TOTAL)], why
    # (a job stored by a killed run before its ACK is resubmitted and found: created False)
    assert {job_id for job_id, n in created.items() if n > 1} == set(), why
    not_done = {j: s for j, s in final.items() if s[0] != "completed"}
    assert len(final) == TOTAL and not_done == {}, why

    # No job reaches a terminal state twice, and a published end was durable.
    twice = {j: ev for j, ev in terminal.items() if len(ev) > 1}
    assert twice == {}, why
    assert {ev[0][1] for ev in terminal.values()} <= {"completed"}, why
    redone = {
        j: calls[j] for j, ev in terminal.items() if any(run > ev[0][0] for run, _ in calls[j])
    }
    assert redone == {}, f"processed again after a durable completion: {redone} {why}"

    # Processing is at least once, and a resumed job gets its latest saved checkpoint back.
    assert all(calls[j] for j in acked), why
    for job_id, job_calls in calls.items():
        for run, saved in job_calls:
            earlier_calls = {r for r, _ in job_calls if r < run}
            earlier_saves = [r for r in saves[job_id] if r < run]
            if saved == "-":
                assert not earlier_saves, (job_id, job_calls, why)
            else:
                assert int(saved) in earlier_calls, (job_id, job_calls, why)
                assert int(saved) >= max(earlier_saves, default=-1), (job_id, job_calls, why)
