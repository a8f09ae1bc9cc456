"""How the state store encodes values: msgspec's MessagePack, one decoder per type, never pickle."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["decoder", "encode"]

_ENCODER = msgspec.msgpack.Encoder()
_DECODERS: dict[Any, msgspec.msgpack.Decoder[Any]] = {}

encode = _ENCODER.encode
"""A value's bytes (msgspec Structs, builtins, and what msgspec supports)."""


def decoder(type_: Any) -> msgspec.msgpack.Decoder[Any]:
    """The decoder of values of `type_` (`Any`: untyped), made once and reused."""
    dec = _DECODERS.get(type_)
    if dec is None:
        dec = _DECODERS[type_] = msgspec.msgpack.Decoder(type_)
    return dec
