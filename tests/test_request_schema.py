"""The OpenAPI request schema is generated from the request's types (issue 13, "Rules
written once"): for near-valid bodies, the document's schema accepts exactly what the
server accepts (the types, the rules across fields, the configured providers and models),
and every refusal names the field at fault."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genqueue import Config, InvalidRequest, parse_request
from genqueue.http.openapi import build_openapi
from genqueue.requests import Routing

jsonschema = pytest.importorskip("jsonschema")

CONFIGS = {
    "demo": Config(),  # fake Veo (Gemini door) and fake fal
    "vertex": Config(vertex_project="p1", vertex_access_token="t", fal_key="k"),
    "veo-only": Config(veo3_api_key="k"),
}
IMAGE = {"bytesBase64Encoded": base64.b64encode(b"\x89PNG fake").decode(), "mimeType": "image/png"}
MODELS = [
    None,
    "veo-3.1-generate-preview",
    "veo-3.1-generate-001",
    "fal-ai/veo3.1",
    "fal-ai/veo3.1/fast",
    "veo-2",
]

PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "duration": st.sampled_from([4, 6, 8, 5, "8", 8.0, 6.5]),
        "aspectRatio": st.sampled_from(["16:9", "9:16", "4:3"]),
        "resolution": st.sampled_from(["720p", "1080p", "4k", "480p"]),
        "negativePrompt": st.sampled_from([None, "blur", "a\tb\nc", "x\x1b", "n" * 4001]),
        "seed": st.sampled_from([None, 0, 2**32 - 1, 2**32, -1]),
        "sampleCount": st.sampled_from([1, 2, 4, 5, 0]),
        "generateAudio": st.sampled_from([None, True, False]),
        "personGeneration": st.sampled_from([None, "allow_adult", "everyone"]),
        "image": st.sampled_from([None, IMAGE, {**IMAGE, "mimeType": "image/gif"}]),
        "lastFrame": st.sampled_from([None, IMAGE, {**IMAGE, "bytesBase64Encoded": "ab=c"}]),
        "referenceImages": st.sampled_from([None, [], [IMAGE], [IMAGE] * 3, [IMAGE] * 4]),
        "fps": st.just(24),
    },
)
BODIES = st.fixed_dictionaries(
    {},
    optional={
        "prompt": st.sampled_from(["a fox", "", " \n\t ", "a\x1bb", "\ufeff", "\x85", "x" * 4001]),
        "id": st.sampled_from([None, "a.b", "..", "a\n", "", "x" * 128, "x" * 129, 7, "a:b-c_d"]),
        "provider": st.sampled_from(
            ["veo3", "veo", "fal", "other", ["fal", "veo3"], ["veo3"], [], ["veo"] * 4, 3]
        ),
        "model": st.sampled_from(MODELS),
        "priority": st.sampled_from([0, 10, 11, -1, 5.0, 1.5, True, "high"]),
        "parameters": PARAMS | st.sampled_from([None, [], "8"]),
    },
)


def _validator(config: Config) -> Any:
    doc = build_openapi(config=config)
    return jsonschema.Draft202012Validator(
        {**doc, "$ref": "#/components/schemas/GenerationRequest"}
    )


VALIDATORS = {name: _validator(cfg) for name, cfg in CONFIGS.items()}
ROUTINGS = {name: Routing(cfg) for name, cfg in CONFIGS.items()}


def server_accepts(config: str, body: Any) -> bool:
    """What POST /api/generations decides (before any queue limit), as JSON bytes."""
    try:
        req = parse_request(json.dumps(body).encode())
        ROUTINGS[config](req)
    except InvalidRequest as exc:
        assert exc.code == "invalid_request" and exc.message
        top = re.split(r"[.\[]", exc.field or "")[0]
        assert top in body or top == "prompt", exc.field  # a field it holds, or the one it lacks
        return False
    return True


@pytest.mark.parametrize("config", sorted(CONFIGS))
@settings(max_examples=300, deadline=None)
@given(body=BODIES)
def test_the_schema_accepts_what_the_server_accepts(config: str, body: dict[str, Any]) -> None:
    body = {"prompt": "a fox", **body} if "prompt" not in body and body else body
    assert VALIDATORS[config].is_valid(body) == server_accepts(config, body), body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"prompt": "x", "parameters": {"referenceImages": [IMAGE, {**IMAGE, "x": 1}]}},
            "parameters.referenceImages[1].x",
        ),
        (
            {"prompt": "x", "parameters": {"image": {"mimeType": "image/png"}}},
            "parameters.image.bytesBase64Encoded",
        ),
        (
            {"prompt": "x", "parameters": {"lastFrame": {**IMAGE, "mimeType": "image/gif"}}},
            "parameters.lastFrame.mimeType",
        ),
        ({"prompt": "x", "provider": ["veo3", "other"]}, "provider[1]"),
        ({"prompt": "x", "priority": 1e400}, "priority"),
        ({"prompt": "x", "parameters": {"seed": 1e30}}, "parameters.seed"),
    ],
)
def test_a_nested_refusal_names_its_path(body: dict[str, Any], field: str) -> None:
    raw = json.dumps(body).replace("Infinity", "1e400").encode()
    with pytest.raises(InvalidRequest) as caught:
        parse_request(raw)
    assert caught.value.field == field and caught.value.code == "invalid_request"
    assert caught.value.message.startswith(field + ": ")


def test_integral_json_numbers_are_integers_and_huge_exponents_stay_numbers() -> None:
    req = parse_request(b'{"prompt": "x", "priority": 1e1, "parameters": {"duration": 4.0}}')
    assert (req.priority, req.parameters.duration) == (10, 4)
    with pytest.raises(InvalidRequest) as caught:
        parse_request(b'{"prompt": "x", "priority": 1e999999999}')  # no billion-digit int
    assert caught.value.field == "priority"
