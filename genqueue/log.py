"""Structured logs: one JSON object per line (orjson), readable on a terminal, secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

import orjson

__all__ = ["JsonFormatter", "Redactor", "setup_logging"]

_LEVELS = {"WARNING": "WARN", "CRITICAL": "ERROR"}
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_BEARER = re.compile(r"(?i)(bearer\s+|x-goog-api-key[\"':= ]+|whsec_)[A-Za-z0-9+/=._\-]{4,}")


class Redactor:
    """Replaces known secret values (and anything shaped like a bearer token) with ***."""

    def __init__(self, secrets: Iterable[str] = ()):
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _BEARER.sub(lambda m: m.group(1) + "***", text)


class JsonFormatter(logging.Formatter):
    """`{"ts","level","component","event",...fields}`; `human=True` gives one readable line."""

    def __init__(self, redact: Redactor, human: bool = False):
        super().__init__()
        self._redact = redact
        self._human = human

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in _RESERVED}
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": _LEVELS.get(record.levelname, record.levelname),
            "component": record.name.removeprefix("genqueue."),
            "event": record.getMessage(),
            **fields,
        }
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        if self._human:
            extra = " ".join(f"{k}={v}" for k, v in fields.items())
            line = f"{doc['ts']} {doc['level']:<5} {doc['component']}: {doc['event']} {extra}"
            if "error" in doc:
                line += "\n" + doc["error"]
            return self._redact(line.rstrip())
        return self._redact(orjson.dumps(doc, default=str).decode())


def setup_logging(level: str = "INFO", secrets: Iterable[str] = (), stream: Any = None) -> None:
    """Install the JSON (or, on a terminal, human) formatter on the root logger."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    human = hasattr(stream, "isatty") and stream.isatty()
    handler.setFormatter(JsonFormatter(Redactor(secrets), human=human))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel("WARNING" if level == "WARN" else level)
    for noisy in ("aiohttp.access", "botocore", "aiobotocore", "sqlitedict"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
