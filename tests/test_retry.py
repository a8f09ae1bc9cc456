"""RetryPolicy: the pure backoff shared by alarms, jobs, provider calls and webhooks."""

from __future__ import annotations

import itertools
import math
import random

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genqueue.retry import RetryPolicy


def test_delays_double_from_the_initial_interval() -> None:
    policy = RetryPolicy(initial_interval_s=2.0, backoff_coefficient=2.0, maximum_attempts=7)
    assert [policy.delay_s(n) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0]


def test_the_coefficient_sets_the_growth() -> None:
    policy = RetryPolicy(initial_interval_s=1.0, backoff_coefficient=3.0, maximum_attempts=5)
    assert [policy.delay_s(n) for n in range(1, 5)] == [1.0, 3.0, 9.0, 27.0]
    flat = RetryPolicy(initial_interval_s=5.0, backoff_coefficient=1.0, maximum_attempts=5)
    assert {flat.delay_s(n) for n in range(1, 5)} == {5.0}


def test_delays_stop_at_the_maximum_interval() -> None:
    policy = RetryPolicy(1.0, 2.0, 60.0, 20)
    assert [policy.delay_s(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert policy.delay_s(10_000) == 60.0  # no overflow for a very late attempt


def test_maximum_attempts_counts_the_first_try() -> None:
    policy = RetryPolicy(initial_interval_s=1.0, maximum_attempts=3)
    assert [policy.gives_up(n) for n in range(0, 5)] == [False, False, False, True, True]
    assert policy.maximum_retries == 2
    once = RetryPolicy(maximum_attempts=1)
    assert once.gives_up(1) and once.maximum_retries == 0


def test_a_written_out_schedule_is_followed_then_its_last_wait_repeats() -> None:
    policy = RetryPolicy.schedule((5.0, 300.0, 1800.0))
    assert policy.maximum_attempts == 4
    assert [policy.delay_s(n) for n in (1, 2, 3)] == [5.0, 300.0, 1800.0]
    assert policy.gives_up(4) and not policy.gives_up(3)
    longer = RetryPolicy(intervals_s=(1.0, 2.0), maximum_attempts=5)
    assert [longer.delay_s(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 2.0, 2.0]


def test_jitter_needs_a_random_source() -> None:
    policy = RetryPolicy(initial_interval_s=10.0, maximum_attempts=5, jitter=0.5)
    assert policy.delay_s(1) == 10.0  # no source: pure, no jitter
    seen = {policy.delay_s(1, random.Random(seed)) for seed in range(20)}
    assert len(seen) > 1 and all(5.0 <= d <= 15.0 for d in seen)
    assert policy.delay_s(2, random.Random(7)) == policy.delay_s(2, random.Random(7))


def test_a_zero_interval_stays_zero() -> None:
    policy = RetryPolicy(initial_interval_s=0.0, maximum_attempts=3, jitter=0.5)
    assert policy.delay_s(1, random.Random(1)) == 0.0
    assert policy.delay_s(5000) == 0.0


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="attempt"):
        RetryPolicy().delay_s(0)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"initial_interval_s": -1.0}, "initial_interval_s"),
        ({"initial_interval_s": math.nan}, "initial_interval_s"),
        ({"initial_interval_s": math.inf}, "initial_interval_s"),
        ({"backoff_coefficient": 0.5}, "backoff_coefficient"),
        ({"initial_interval_s": 10.0, "maximum_interval_s": 5.0}, "maximum_interval_s"),
        ({"maximum_interval_s": math.nan}, "maximum_interval_s"),
        ({"maximum_attempts": 0}, "maximum_attempts"),
        ({"intervals_s": (1.0, -2.0)}, "intervals_s"),
        ({"jitter": 1.0}, "jitter"),
    ],
)
def test_a_bad_field_is_refused_by_name(fields: dict[str, float], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        RetryPolicy(**fields)  # type: ignore[arg-type]


def test_it_is_a_frozen_value() -> None:
    policy = RetryPolicy(2.0, 2.0, 60.0, 4)
    same = RetryPolicy(2.0, 2.0, 60.0, 4)
    assert policy == same and hash(policy) == hash(same)
    with pytest.raises(AttributeError):
        policy.maximum_attempts = 9  # type: ignore[misc]
    decoded = msgspec.json.decode(msgspec.json.encode(policy), type=RetryPolicy)
    assert decoded == policy


@given(
    initial_s=st.floats(min_value=0.0, max_value=1e4),
    coefficient=st.floats(min_value=1.0, max_value=10.0),
    headroom=st.floats(min_value=1.0, max_value=1e6),
    attempts=st.integers(min_value=1, max_value=200),
)
def test_delays_never_shrink_and_never_pass_the_cap(
    initial_s: float, coefficient: float, headroom: float, attempts: int
) -> None:
    cap_s = initial_s * headroom
    policy = RetryPolicy(initial_s, coefficient, cap_s, attempts)
    delays = [policy.delay_s(n) for n in range(1, attempts + 2)]
    assert delays[0] == initial_s
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert all(d <= cap_s for d in delays)
    assert not policy.gives_up(attempts - 1) and policy.gives_up(attempts)


@given(
    initial_s=st.floats(min_value=0.0, max_value=1e4),
    coefficient=st.floats(min_value=1.0, max_value=10.0),
    cap_s=st.floats(min_value=1e4, max_value=1e6),
    jitter=st.floats(min_value=0.0, max_value=0.99),
    attempt=st.integers(min_value=1, max_value=100),
    seed=st.integers(),
)
def test_jittered_delays_stay_near_the_plain_one_and_under_the_cap(
    initial_s: float, coefficient: float, cap_s: float, jitter: float, attempt: int, seed: int
) -> None:
    plain = RetryPolicy(initial_s, coefficient, cap_s, 100)
    jittered = RetryPolicy(initial_s, coefficient, cap_s, 100, jitter=jitter)
    base = plain.delay_s(attempt)
    delay = jittered.delay_s(attempt, random.Random(seed))
    assert base * (1 - jitter) <= delay <= min(cap_s, base * (1 + jitter))
