"""A Veo-compatible HTTP server (aiohttp) for tests and the demo, speaking both doors.

One idea a module: `doors` (which door serves which model, its refusals and parameters),
`operations` (what an operation is and what a poll answers), `app` (FakeVeo: state and
routes), `auth` (who may call), `media` (downloads and Cloud Storage's JSON API),
`faults` (the controls a test arms, also over `POST /_fake/faults`), `google_errors`
(Google's error shapes, the two kinds of 429), `oauth` (a local token endpoint and
throwaway service-account keys), `video` (a real, playable MP4 of any size), `server`
(serving it on loopback, `main.py fake-veo`). Judged by Google's own SDK:
tests/test_fake_veo_sdk.py.
"""

from genqueue.providers.fake_veo.app import FakeVeo
from genqueue.providers.fake_veo.doors import (
    AUDIO_REASON,
    GEMINI_MODELS,
    GOOGLE_MODELS,
    KNOWN_MODELS,
    PROMPT_BLOCK_MESSAGE,
    SAFETY_REASON,
    VERTEX_MODELS,
)
from genqueue.providers.fake_veo.faults import FaultControls, FaultSpec
from genqueue.providers.fake_veo.oauth import ServiceAccountKey, TokenIssuer
from genqueue.providers.fake_veo.operations import OpInfo, RecordedRequest
from genqueue.providers.fake_veo.server import FakeVeoServer, serve_fake_veo
from genqueue.providers.fake_veo.video import MIN_VIDEO_SIZE, build_mp4, iter_mp4

__all__ = [
    "AUDIO_REASON",
    "GEMINI_MODELS",
    "GOOGLE_MODELS",
    "KNOWN_MODELS",
    "MIN_VIDEO_SIZE",
    "PROMPT_BLOCK_MESSAGE",
    "SAFETY_REASON",
    "VERTEX_MODELS",
    "FakeVeo",
    "FakeVeoServer",
    "FaultControls",
    "FaultSpec",
    "OpInfo",
    "RecordedRequest",
    "ServiceAccountKey",
    "TokenIssuer",
    "build_mp4",
    "iter_mp4",
    "serve_fake_veo",
]
