"""Property: the caps hold, and the queue follows a simple model, under any sequence of
submits, finishes and cancellations.

A hypothesis state machine drives a real JobQueue (alarm dispatch) whose processor holds
every job on its own asyncio event until the test releases it. After each step the test
waits until the set of running processor coroutines equals what a model predicts: a
greedy dispatcher over jobs ordered by priority then submission, skipping users at their
cap. At every processor call the recorder checks the live counts, so a moment over
`max_concurrency` or `max_per_user` is caught even if it does not last.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from helpers_queue import QueueFactory, Recorder, request
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from genqueue import JobQueue

USERS = ["alice", "bob", "carol"]


@dataclass
class Model:
    """What the queue should be running: greedy, by (priority desc, submission), with caps."""

    max_concurrency: int
    max_per_user: int
    pending: list[tuple[int, int, str, str]] = field(default_factory=list)  # -prio, n, id, user
    running: dict[str, str] = field(default_factory=dict)  # job id -> user

    def user_count(self, user: str) -> int:
        return sum(1 for u in self.running.values() if u == user)

    def dispatch(self) -> None:
        while len(self.running) < self.max_concurrency:
            for entry in sorted(self.pending):
                user = entry[3]
                if not self.max_per_user or self.user_count(user) < self.max_per_user:
                    self.pending.remove(entry)
                    self.running[entry[2]] = user
                    break
            else:
                return


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="genqueue-props-"))
        self.factory = QueueFactory(self.dir)
        self.rec = Recorder(hold_all=True)
        self.q: JobQueue | None = None
        self.model = Model(1, 0)
        self.n = 0

    @initialize(
        max_concurrency=st.integers(min_value=1, max_value=4),
        max_per_user=st.integers(min_value=0, max_value=2),
    )
    def open_queue(self, max_concurrency: int, max_per_user: int) -> None:
        self.model = Model(max_concurrency, max_per_user)
        self.q = self.factory.open(
            self.rec, max_concurrency=max_concurrency, max_per_user=max_per_user
        )

    def queue(self) -> JobQueue:
        assert self.q is not None
        return self.q

    def settle(self) -> None:
        """Wait until the real running set is the model's."""
        self.model.dispatch()
        want = dict(self.model.running)
        self.rec.wait(lambda: self.rec.running == want, f"running == {sorted(want)}", timeout_s=10)

    @rule(user=st.sampled_from(USERS), priority=st.integers(min_value=0, max_value=2))
    def submit(self, user: str, priority: int) -> None:
        self.n += 1
        job_id = f"job-{self.n:03d}"
        job, _ = self.queue().submit(request(id=job_id, priority=priority), user_id=user)
        assert (job.id, job.status) == (job_id, "queued")
        self.model.pending.append((-priority, self.n, job_id, user))
        self.settle()

    @precondition(lambda self: self.model.running)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.model.running)))
        self.rec.release(job_id)
        del self.model.running[job_id]
        self.settle()

    @precondition(lambda self: self.model.running or self.model.pending)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        live = sorted(self.model.running) + sorted(e[2] for e in self.model.pending)
        job_id = data.draw(st.sampled_from(live))
        job = self.queue().cancel(job_id)
        if job_id in self.model.running:
            assert job.status in ("processing", "cancelled")
            del self.model.running[job_id]
        else:
            assert job.status == "cancelled"
            self.model.pending = [e for e in self.model.pending if e[2] != job_id]
        self.settle()

    @invariant()
    def caps_never_exceeded(self) -> None:
        with self.rec.cv:
            assert self.rec.max_running <= self.model.max_concurrency
            if self.model.max_per_user:
                assert max(self.rec.max_per_user.values(), default=0) <= self.model.max_per_user

    @invariant()
    def each_job_is_in_the_state_the_model_says(self) -> None:
        """No job in two states: a running job is `processing` (stored before its processor
        was called), a waiting one `queued`, wherever the queue keeps it."""
        if self.q is None:
            return
        for job_id in self.model.running:
            assert self.q.get(job_id).status == "processing", job_id
        for *_, job_id, _user in self.model.pending:
            assert self.q.get(job_id).status == "queued", job_id

    def teardown(self) -> None:
        try:
            if self.q is not None:
                q = self.q
                self.rec.release_all()
                self.rec.release(*[f"job-{i:03d}" for i in range(1, self.n + 1)])
                q.join(timeout_s=20)
                st_ = q.status()
                assert st_.in_flight == 0 and st_.queued == 0
                assert st_.completed + st_.cancelled == self.n
                # every job that was never cancelled ran exactly once
                calls = self.rec.order()
                assert len(calls) == len(set(calls))
        finally:
            self.factory.close_all()
            shutil.rmtree(self.dir, ignore_errors=True)


QueueMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueCaps = QueueMachine.TestCase
