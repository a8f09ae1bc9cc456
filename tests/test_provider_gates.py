"""Each provider its own gate (issue 15): a 429 from fal pauses only fal's jobs, fal's own
concurrency cap and rate limit hold back only fal's jobs, and Veo's jobs go on meanwhile.
The processor is the scriptable Recorder; time is a ManualClock (helpers_queue.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_queue import QueueFactory, Recorder, Watcher, poll_until, queue_factory, request

from genqueue import BudgetExceeded, InvalidRequest, ProviderError
from genqueue.clock import ManualClock


@pytest.fixture
def queues(tmp_path: Path) -> Iterator[QueueFactory]:
    with queue_factory(tmp_path) as factory:
        yield factory


def fal(job_id: str, **fields: object) -> dict[str, object]:
    return request(id=job_id, provider="fal", **fields)


def test_a_fal_429_pauses_only_fal(queues: QueueFactory) -> None:
    clock = ManualClock()
    t0 = clock.now()
    rec = Recorder(clock)
    rec.script["f1"] = [
        ProviderError("too many requests", retryable=True, status=429, retry_after_s=30)
    ]
    q = queues.open(rec, clock=clock, max_concurrency=4, retry_backoff_s=2)
    w = Watcher(q)
    q.submit(fal("f1"))
    w.wait_status("f1", "retry_wait")
    poll_until(lambda: q.status().providers["fal"]["pausedUntil"] == t0 + 30, "fal to pause")
    st = q.status()
    assert st.paused_until is None and st.providers["veo3"]["pausedUntil"] is None
    assert st.providers["fal"]["pausedReason"] == "rate_limit"

    q.submit(fal("f2"))
    q.submit(request(id="v1"))  # Veo: its gate is open
    rec.wait_calls(2)
    w.wait_status("v1", "completed")
    clock.advance(10)  # f1's backoff is over; fal is still paused
    w.wait_status("f1", "queued")
    assert rec.order() == ["f1", "v1"]
    assert q.get("f2").status == "queued"

    clock.advance(20)
    rec.wait_calls(4)
    q.join(timeout_s=20)
    assert sorted(rec.order()[2:]) == ["f1", "f2"]
    assert q.status().providers["fal"]["pausedUntil"] is None


def test_fal_has_its_own_concurrency_cap(queues: QueueFactory) -> None:
    rec = Recorder(hold_all=True)
    q = queues.open(rec, max_concurrency=4, fal_max_concurrency=1)
    for job_id in ("f1", "f2"):
        q.submit(fal(job_id))
    q.submit(request(id="v1"))
    q.submit(request(id="v2"))
    rec.wait_running("f1", "v1", "v2")
    assert q.status().providers["fal"]["inFlight"] == 1
    assert q.get("f2").status == "queued"
    rec.release("f1")
    rec.wait_running("f2")
    rec.release_all()
    q.join(timeout_s=20)
    assert q.status().completed == 4


def test_fal_has_its_own_rate_limit(queues: QueueFactory) -> None:
    clock = ManualClock()
    t0 = clock.now()
    rec = Recorder(clock)
    q = queues.open(rec, clock=clock, max_concurrency=4, fal_rate_limit_per_minute=1)
    for job_id in ("f1", "f2"):
        q.submit(fal(job_id))
    q.submit(request(id="v1"))
    rec.wait_calls(2)
    assert sorted(rec.order()) == ["f1", "v1"]
    clock.advance(60)
    rec.wait_calls(3)
    q.join(timeout_s=20)
    assert [c.at for c in rec.called("f2")] == [t0 + 60]


def test_requests_are_checked_against_the_chosen_providers_model(queues: QueueFactory) -> None:
    q = queues.open(Recorder())
    cases = [
        (fal("a", model="fal-ai/veo3.1/fast", parameters={"resolution": "4k"}), "resolution"),
        (fal("b", parameters={"sampleCount": 2}), "sampleCount"),
        (fal("c", model="veo-3.1-generate-preview"), "model"),
        (request(id="d", provider="kling"), "provider"),
    ]
    for body, field in cases:
        with pytest.raises(InvalidRequest) as caught:
            q.submit(body)
        assert field in (caught.value.field or ""), caught.value
    assert q.status().submitted == 0
    job = q.submit(fal("ok", parameters={"duration": 4, "resolution": "720p"})).job
    assert (job.provider, job.model) == ("fal", "fal-ai/veo3.1")
    assert job.estimated_cost == pytest.approx(4 * 0.40)  # 4 s at $0.40 (audio on)


def test_the_daily_budget_counts_jobs_in_flight(queues: QueueFactory) -> None:
    rec = Recorder(hold_all=True)
    q = queues.open(rec, budget_per_user_day=5.0)
    q.submit(fal("a"), user_id="u1")  # 8 s x $0.40 = $3.20
    with pytest.raises(BudgetExceeded):
        q.submit(fal("b"), user_id="u1")
    q.submit(fal("c"), user_id="u2")  # another user's own budget
    assert q.status().spend["inFlight"] == pytest.approx(6.40)
    rec.release_all()
    q.join(timeout_s=20)
    # the Recorder reports no paid start: nothing committed, nothing left in flight
    assert q.status().spend["inFlight"] == 0
    q.submit(fal("d"), user_id="u1")


def test_a_veo_quota_pause_sends_fallback_jobs_to_fal_while_the_others_wait(
    queues: QueueFactory,
) -> None:
    clock = ManualClock()
    t0 = clock.now()
    rec = Recorder(clock)
    quota = ProviderError(
        "daily quota", retryable=True, status=429, retry_after_s=3600, code="quota_exhausted"
    )
    rec.script["v0"] = [quota]
    q = queues.open(rec, clock=clock, max_concurrency=4)
    w = Watcher(q)
    q.submit(request(id="v0"))
    w.wait_status("v0", "retry_wait")
    poll_until(lambda: q.status().paused_until == t0 + 3600, "Veo to pause for its quota")

    q.submit(request(id="veo-only"))
    both = q.submit(request(id="both", provider=["veo", "fal"])).job
    assert (both.provider, [r.provider for r in both.routes or []]) == ("veo3", ["veo3", "fal"])
    done = w.wait_status("both", "completed")
    assert (done.provider, done.model) == ("fal", "fal-ai/veo3.1")  # who made the video
    assert q.get("veo-only").status == "queued"  # no fallback asked: it waits for Veo
    assert rec.order() == ["v0", "both"]

    clock.advance(3600)
    q.join(timeout_s=20)
    assert q.get("veo-only").provider == "veo3"
    assert sorted(rec.order()[2:]) == ["v0", "veo-only"]


def test_a_fallback_list_must_fit_every_provider_and_names_no_model(queues: QueueFactory) -> None:
    q = queues.open(Recorder())
    body = request(parameters={"personGeneration": "allow_adult"})
    q.submit(body)  # Veo alone takes it
    with pytest.raises(InvalidRequest) as caught:  # fal's Veo endpoints do not
        q.submit({**body, "provider": ["veo3", "fal"]})
    assert caught.value.field == "parameters.personGeneration"
    with pytest.raises(InvalidRequest) as caught:
        q.submit(request(provider=["veo3", "fal"], model="fal-ai/veo3.1"))
    assert caught.value.field == "model"


def test_a_provider_refusing_the_model_sends_the_job_to_the_next_one(
    queues: QueueFactory,
) -> None:
    rec = Recorder()
    refused = ProviderError("no such model", retryable=False, status=404, code="model_not_found")
    rec.script["r"] = [refused]
    q = queues.open(rec, max_attempts=1)
    w = Watcher(q)
    q.submit(request(id="r", provider=["fal", "veo"]))
    done = w.wait_status("r", "completed", "failed")
    assert (done.status, done.provider, done.model) == ("completed", "veo3", q.get("r").model)
    assert done.provider == "veo3" and done.model and done.model.startswith("veo-")
    assert [c.job_id for c in rec.calls] == ["r", "r"]
    # alone (no fallback) the same refusal fails the job
    rec.script["alone"] = [refused]
    q.submit(request(id="alone", provider="fal"))
    assert w.wait_status("alone", "completed", "failed").status == "failed"
