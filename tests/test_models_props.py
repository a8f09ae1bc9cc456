"""Properties of the models (issue 7, "Fuzzing"): whatever a client sends, a request is
either accepted or refused with InvalidRequest naming the problem (never another error),
and an accepted request's job survives the store's encoding and the API's JSON unchanged."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genqueue.errors import InvalidRequest
from genqueue.jobqueue import parse_request
from genqueue.models import GenerationParams, GenerationRequest, Job

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["prompt", "id", "parameters", "provider", "model", "priority"]
PARAM_FIELDS = ["duration", "aspectRatio", "resolution", "negativePrompt", "seed"]

# Near-valid bodies: the real field names with values that are often right, often not.
PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "duration": st.sampled_from([4, 5, 6, 8, 0, -1, "8"]),
        "aspectRatio": st.sampled_from(["16:9", "9:16", "4:3", ""]),
        "resolution": st.sampled_from(["720p", "1080p", "4k", "8k"]),
        "negativePrompt": st.none() | st.text(max_size=20),
        "seed": st.none() | st.integers(),
        "bogus": JSON,
    },
)
BODIES = st.fixed_dictionaries(
    {},
    optional={
        "prompt": st.text(max_size=40) | JSON,
        "id": st.none() | st.text(max_size=20),
        "parameters": PARAMS | JSON,
        "provider": st.sampled_from(["veo3", "other"]),
        "model": st.none() | st.text(max_size=20),
        "priority": st.integers(min_value=-20, max_value=20) | JSON,
    },
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # the stdlib: integers of any size, as clients send


def accepted_or_refused(body: Any) -> GenerationRequest | None:
    try:
        return parse_request(body)
    except InvalidRequest as exc:
        assert exc.message, "a refusal says what is wrong"
        return None


@settings(max_examples=400, deadline=None)
@given(st.one_of(BODIES, JSON.filter(lambda v: isinstance(v, dict))))
def test_any_dict_is_accepted_or_refused_with_invalid_request(body: dict[str, Any]) -> None:
    req = accepted_or_refused(body)
    if req is not None:
        assert req.prompt.strip()  # an accepted request has something to generate
        assert req.parameters.duration in (4, 6, 8)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200) | JSON.map(_dumps) | BODIES.map(_dumps))
def test_any_bytes_are_accepted_or_refused_with_invalid_request(body: bytes) -> None:
    accepted_or_refused(body)


@settings(max_examples=200, deadline=None)
@given(BODIES, st.floats(min_value=0, max_value=2e9), st.text(min_size=1, max_size=20))
def test_an_accepted_requests_job_survives_storage_and_json(
    body: dict[str, Any], now: float, user: str
) -> None:
    req = accepted_or_refused(body)
    if req is None:
        return
    job = Job(
        id=req.id or "generated-id",
        generation_id=req.id or "generated-id",
        user_id=user,
        prompt=req.prompt,
        parameters=req.parameters,
        provider=req.provider,
        model=req.model,
        priority=req.priority,
        created_at=now,
        updated_at=now,
    )
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(job), type=Job) == job  # the store
    wire = msgspec.json.encode(job)
    assert msgspec.json.decode(wire, type=Job) == job  # the API
    keys = set(orjson.loads(wire))
    assert {"userId", "createdAt", "parameters"} <= keys and "user_id" not in keys


@pytest.mark.parametrize("name", FIELDS)
def test_a_wrong_type_names_the_field(name: str) -> None:
    body: dict[str, Any] = {"prompt": "a cat", name: {"not": "right"}}
    with pytest.raises(InvalidRequest) as caught:
        parse_request(body)
    assert name in str(caught.value.field or caught.value.message)


def test_parameter_defaults_are_valid() -> None:
    assert accepted_or_refused({"prompt": "a cat"}) is not None
    assert GenerationParams().duration == 8
    assert set(PARAM_FIELDS) >= set(msgspec.json.decode(msgspec.json.encode(GenerationParams())))
