"""Property: the caps hold, and the queue follows a simple model, under any sequence of
submits, finishes and cancellations.

A hypothesis state machine drives a real JobQueue (alarm dispatch) whose processor holds
every job on its own asyncio event until the test releases it. After each step the test
waits until the set of running processor coroutines equals what a model predicts: a
greedy dispatcher over jobs ordered by priority, then round robin between users (in
user-id order, after the user served last at that priority), then submission, skipping
users at their cap. At every processor call the recorder checks the live counts, so a
moment over `max_concurrency` or `max_per_user` is caught even if it does not last.

A second property (issue 12) checks fairness on the real dispatch order alone, without a
model: no user waits behind more than one job of each other active user at its priority.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from helpers_queue import QueueFactory, Recorder, request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from genqueue import JobQueue

USERS = ["alice", "bob", "carol"]


@dataclass
class Model:
    """What the queue should be running: greedy by priority, then round robin between users
    in id order after the user served last at that priority, then submission; with caps."""

    max_concurrency: int
    max_per_user: int
    pending: list[tuple[int, int, str, str]] = field(default_factory=list)  # -prio, n, id, user
    running: dict[str, str] = field(default_factory=dict)  # job id -> user
    last: dict[int, str] = field(default_factory=dict)  # -prio -> the user served last

    def user_count(self, user: str) -> int:
        return sum(1 for u in self.running.values() if u == user)

    def eligible(self, user: str) -> bool:
        return not self.max_per_user or self.user_count(user) < self.max_per_user

    def pick(self) -> tuple[int, int, str, str] | None:
        for prio in sorted({e[0] for e in self.pending}):
            here = sorted(e for e in self.pending if e[0] == prio)
            users = sorted({e[3] for e in here})
            last = self.last.get(prio)
            turn = [u for u in users if last is None or u > last]
            turn += [u for u in users if last is not None and u <= last]
            for user in turn:
                if self.eligible(user):
                    return next(e for e in here if e[3] == user)
        return None

    def dispatch(self) -> None:
        while len(self.running) < self.max_concurrency:
            entry = self.pick()
            if entry is None:
                return
            self.pending.remove(entry)
            self.running[entry[2]] = entry[3]
            self.last[entry[0]] = entry[3]


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


# -- fairness (issue 12): checked on the real dispatch order alone ----------------------------

Submitted = tuple[str, str, int]  # ("submit", user, priority)
Released = tuple[str]  # ("release",): let the running job finish
# Mostly submissions, so backlogs build up; a release lets the running job end.
FAIR_STEPS = st.lists(
    st.sampled_from(
        [("submit", user, priority) for user in USERS for priority in (0, 1)] + [("release",)] * 2
    ),
    min_size=2,
    max_size=40,
)


def run_one_at_a_time(steps: list[Submitted | Released]) -> tuple[list[tuple[str, str]], dict]:
    """Drive a queue at max_concurrency 1 through `steps`, then drain it; return the events
    as they happened (("submit" | "start", job id)) and each job's (user, priority)."""
    folder = Path(tempfile.mkdtemp(prefix="genqueue-fair-"))
    factory, rec = QueueFactory(folder), Recorder(hold_all=True)
    events: list[tuple[str, str]] = []
    jobs: dict[str, tuple[str, int]] = {}
    starts: list[str] = []
    current: str | None = None  # started, not released

    def next_start() -> None:
        nonlocal current
        rec.wait_calls(len(starts) + 1)
        current = rec.order()[len(starts)]
        starts.append(current)
        events.append(("start", current))

    try:
        q = factory.open(rec, max_concurrency=1)
        for step in steps:
            if step[0] == "submit":
                _, user, priority = step  # type: ignore[misc]
                job_id = f"j{len(jobs) + 1:03d}"
                jobs[job_id] = (user, priority)
                events.append(("submit", job_id))
                q.submit(request(id=job_id, priority=priority), user_id=user)
                if current is None:
                    next_start()  # nothing held: it (or another) starts now
            elif current is not None:
                rec.release(current)
                current = None
                if len(starts) < len(jobs):
                    next_start()
        rec.release_all()
        rec.release(*jobs)
        q.join(timeout_s=20)
        while len(starts) < len(jobs):
            next_start()
    finally:
        factory.close_all()
        shutil.rmtree(folder, ignore_errors=True)
    return events, jobs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FAIR_STEPS)
def test_no_user_waits_behind_more_than_one_job_of_each_other_active_user(
    steps: list[Submitted | Released],
) -> None:
    events, jobs = run_one_at_a_time(steps)
    at = {event: i for i, event in enumerate(events)}
    assert sorted(j for kind, j in events if kind == "start") == sorted(jobs)  # each ran once
    for job_id, (user, priority) in jobs.items():
        mine = [j for j in sorted(jobs) if jobs[j] == (user, priority)]
        before = mine[: mine.index(job_id)]
        end = at[("start", job_id)]
        assert all(at[("start", b)] < end for b in before), "FIFO per user and priority"
        for kind, other in events[at[("submit", job_id)] + 1 : end]:
            assert kind == "submit" or jobs[other][1] >= priority, (other, "jumped", job_id)
        # It heads its user's line at its priority from its submission, or from the start of
        # the user's previous job there, until its own start: meanwhile each other user may
        # start at most one job of this priority.
        head = max([at[("submit", job_id)], *(at[("start", b)] for b in before[-1:])])
        others: dict[str, int] = {}
        for kind, other in events[head + 1 : end]:
            o_user, o_priority = jobs[other]
            if kind == "start" and o_priority == priority and o_user != user:
                others[o_user] = others.get(o_user, 0) + 1
        assert all(n <= 1 for n in others.values()), (job_id, user, priority, others, events)
