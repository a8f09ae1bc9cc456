"""A provider's JSON answer read as its type, the same way for every provider's client."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from genqueue.errors import ProviderError

__all__ = ["decode_answer"]

T = TypeVar("T")


def decode_answer(decoder: msgspec.json.Decoder[T], payload: bytes, call: str) -> T:
    """The answer to `call` (e.g. "Veo poll") as its type; a retryable
    `malformed_response` ProviderError when it is not that."""
    try:
        return decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProviderError(
            f"{call} answered malformed JSON: {exc}", retryable=True, code="malformed_response"
        ) from None
