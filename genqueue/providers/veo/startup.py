"""The check `serve` (and `worker`) make before they start: does the door serve VEO3_MODEL?

Gemini: `GET /v1beta/models/{m}`. Vertex: `GET /v1beta1/publishers/google/models/{m}` (the
publisher-model read of google-genai's `models.get`). A 404 (or a refused credential) stops
the start with a message naming the setting to change; a network failure only warns, so a
server can start while Google is unreachable and its jobs wait and retry.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Literal

import aiohttp
import msgspec

from genqueue.clock import Clock
from genqueue.config import Config
from genqueue.errors import ConfigError, ProviderError
from genqueue.providers.veo.client import Veo3Client
from genqueue.providers.veo.google_auth import Auth, load_adc
from genqueue.providers.veo.settings import VeoSettings, resolve

__all__ = ["ModelCheck", "check_models"]

CHECK_TIMEOUT_S = 20.0


class ModelCheck(msgspec.Struct, frozen=True):
    """`ok`: served (or nothing to check: the built-in fake); `refused`: do not start;
    `unknown`: could not ask (start, with `message` as a warning)."""

    verdict: Literal["ok", "refused", "unknown"]
    message: str = ""


async def check_models(cfg: Config, *, clock: Clock | None = None) -> ModelCheck:
    """Ask the configured door about VEO3_MODEL and every VEO3_MODELS entry."""
    try:
        veo = resolve(cfg)
    except ConfigError as exc:
        return ModelCheck("refused", str(exc))
    if veo.fake:
        return ModelCheck("ok")
    timeout = aiohttp.ClientTimeout(total=CHECK_TIMEOUT_S)
    checking = veo.model
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            client = Veo3Client.for_settings(
                session,
                veo,
                auth=await _auth(veo, clock),
                request_timeout_s=CHECK_TIMEOUT_S,
            )
            for checking in veo.models:
                await client.check_model(checking)
        except ProviderError as exc:
            if exc.retryable:
                return ModelCheck("unknown", f"could not check VEO3_MODEL {veo.model!r}: {exc}")
            return ModelCheck("refused", _refusal(veo, checking, exc))
    return ModelCheck("ok")


async def _auth(veo: VeoSettings, clock: Clock | None) -> Auth | None:
    if veo.dialect != "vertex" or veo.access_token or veo.express:
        return None
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        None, functools.partial(load_adc, veo.credentials_file, clock=clock)
    )


def _refusal(veo: VeoSettings, model: str, exc: ProviderError) -> str:
    setting = "VEO3_MODEL" if model == veo.model else "VEO3_MODELS"
    if exc.code == "auth":
        who = "VEO3_API_KEY" if veo.api_key else "the Vertex credentials"
        return f"Veo refused {who} while checking {setting}={model!r}: {exc.message}"
    if veo.dialect == "gemini":
        return (
            f"{setting}={model!r} is not served by the Gemini API ({exc.message}). Google "
            "serves Veo on Vertex AI: set VEO3_DIALECT=vertex with VERTEX_PROJECT and "
            "VERTEX_LOCATION (credentials: GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth "
            "application-default login`), or VEO3_MODEL to an id the Gemini API still lists "
            "(GET /v1beta/models)."
        )
    return (
        f"{setting}={model!r} is not served on Vertex AI to this project ({exc.message}). "
        "Set VEO3_MODEL to a Veo model your project can use (e.g. veo-3.1-generate-001) and "
        "check VERTEX_PROJECT and VERTEX_LOCATION."
    )
