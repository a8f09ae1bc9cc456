"""The queue's counters agree with job reads (issue 12, item 10).

`tests/test_browser.py::test_the_feed_shows_each_caller_only_what_it_may_see` once saw
`completed == 1` right after both jobs read as completed. A job's terminal record is
readable once its turn's writes are queued, and the `Finished` it tells the queue leaves
only when that turn's commit is released; a status asked in between counted without it.
Now a status is asked only after every write queued so far is committed and its turn's
messages have left, so whatever a reader saw, the status counts.

The window is made wide here, deterministically: an after-commit callback holds the
releaser thread while the job ends, so its `Finished` waits while its record is readable.
"""

from __future__ import annotations

import threading
from pathlib import Path

from helpers_queue import Recorder, poll_until, queue_factory, request

from genqueue.actors.stats import QueueStats
from genqueue.clock import ManualClock


def test_a_status_asked_after_a_job_reads_completed_counts_it(tmp_path: Path) -> None:
    rec = Recorder(hold_all=True)
    with queue_factory(tmp_path) as factory:
        q = factory.open(rec, max_concurrency=1)
        q.submit(request(id="j1"), user_id="alice")
        rec.wait_running("j1")
        assert q.system is not None
        store = q.system.store
        holding, go_on = threading.Event(), threading.Event()

        def hold_the_releaser() -> None:
            holding.set()
            go_on.wait(10)

        store.after_commit(store.write_seq + 1, hold_the_releaser)  # the next commit's
        rec.release("j1")
        assert holding.wait(10)
        poll_until(lambda: q.get("j1").status == "completed", "j1 read as completed")
        seen: list[int] = []
        groups = store._releaser.pending  # white-box: groups handed to the releaser
        asking = threading.Thread(target=lambda: seen.append(q.status().completed))
        asking.start()
        # The status is now queued behind the held release (as an answer before, as a
        # question now): both hand the releaser one more group.
        poll_until(lambda: store._releaser.pending > groups, "the status waiting on the releaser")
        go_on.set()
        asking.join(10)
        assert seen == [1], "the status must count what a read already showed"
        assert q.get("j1").status == "completed"


def test_per_minute_figures_count_the_last_60_seconds_only() -> None:
    """processed_per_minute / failed_per_minute: ends in the last 60 s of the injected clock."""
    clock = ManualClock()
    stats = QueueStats(clock)

    def per_minute() -> tuple[int, int]:
        status = stats.status(
            counters={},
            by_priority={},
            dispatch="alarm",
            queued=0,
            in_flight=0,
            retry_wait=0,
            max_concurrency=1,
            oldest_wait_s=None,
            paused_until=None,
        )
        return status.processed_per_minute, status.failed_per_minute

    for status in ("completed", "completed", "failed", "cancelled"):
        stats.finished(status, 0.0, 1.0)  # type: ignore[arg-type]
    assert per_minute() == (2, 1)
    clock.advance(30)
    stats.finished("completed", 0.0, 1.0)
    assert per_minute() == (3, 1)
    clock.advance(31)  # the first four are over a minute old
    assert per_minute() == (1, 0)
    clock.advance(60)
    assert per_minute() == (0, 0)
