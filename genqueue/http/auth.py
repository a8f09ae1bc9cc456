"""API keys: `Authorization: Bearer KEY` against `GENQUEUE_API_KEYS`, in constant time.

`GENQUEUE_API_KEYS` is comma-separated `key=user_id`, with `:admin` appended for an
admin key (`k1=alice,k2=ops:admin`) or `:maxpriority=N` for the highest `priority` the
key may ask for (`k3=bob:maxpriority=5`; more is a 400). Admins are unlimited, so an entry
with both is a configuration error rather than a limit silently ignored. Keys are kept
only as SHA-256 digests and compared with `hmac.compare_digest` against every configured
key, so neither the answer's timing nor a log line tells anything about a key.
"""

from __future__ import annotations

import hashlib
import hmac
import re

import msgspec

from genqueue import NAME_PATTERN, ConfigError
from genqueue.http.errors import ApiError

__all__ = ["ApiKeys", "Caller"]

# A user id becomes a storage prefix and a folder name: the job-id alphabet, not "*".
_USER_ID = re.compile(NAME_PATTERN)
_ADMIN = ":admin"
_MAX_PRIORITY = re.compile(r":maxpriority=([0-9]{1,2})$")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="genqueue"'}


class Caller(msgspec.Struct, frozen=True):
    """Who is calling: the user id its key maps to, and whether it may see everyone's jobs."""

    user_id: str
    admin: bool = False
    max_priority: int | None = None  # None: any priority (0-10)
    key_index: int = 0  # which entry of GENQUEUE_API_KEYS (not secret): per-key limits

    def may_see(self, owner: str) -> bool:
        return self.admin or owner == self.user_id


class ApiKeys:
    """The configured keys; `authenticate(header)` returns the Caller or raises a 401."""

    def __init__(self, entries: list[tuple[bytes, Caller]]):
        self._entries = entries

    @classmethod
    def parse(cls, spec: str) -> ApiKeys:
        """Parse `key=user_id[:admin],...`; a ConfigError never quotes a key."""
        entries: list[tuple[bytes, Caller]] = []
        for n, item in enumerate((s.strip() for s in spec.split(",")), start=1):
            if not item:
                continue
            item, admin, max_priority = _options(item, n)
            key, sep, who = item.rpartition("=")
            key = key.strip()
            user_id = who.strip()
            if not sep or not key:
                raise ConfigError(f"api_keys: entry {n} is not key=user_id")
            if not _USER_ID.fullmatch(user_id):
                raise ConfigError(
                    f"api_keys: entry {n} has a bad user id (1-128 letters, digits, "
                    "'-', '_', '.', ':'; not starting with '.')"
                )
            digest = _digest(key)
            if any(hmac.compare_digest(digest, d) for d, _ in entries):
                raise ConfigError(f"api_keys: entry {n} repeats an earlier key")
            entries.append((digest, Caller(user_id, admin, max_priority, n)))
        return cls(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, header: str | None) -> Caller:
        if not self._entries:
            raise ApiError(
                401,
                "no API keys are configured on this server; set GENQUEUE_API_KEYS "
                "(key=user_id, with :admin for an admin key)",
                headers=_CHALLENGE,
            )
        scheme, _, token = (header or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing Authorization: Bearer <API key>", headers=_CHALLENGE)
        digest = _digest(token)
        found: Caller | None = None
        for known, caller in self._entries:  # no early exit: the time does not depend on which
            if hmac.compare_digest(digest, known):
                found = caller
        if found is None:
            raise ApiError(401, "invalid API key", headers=_CHALLENGE)
        return found


def _options(item: str, n: int) -> tuple[str, bool, int | None]:
    """Strip `:admin` and `:maxpriority=N` (in either order) off the end of an entry."""
    admin, max_priority = False, None
    while True:
        if item.endswith(_ADMIN) and not admin:
            item, admin = item[: -len(_ADMIN)], True
            continue
        found = _MAX_PRIORITY.search(item)
        if found and max_priority is None:
            max_priority = int(found.group(1))
            if max_priority > 10:
                raise ConfigError(f"api_keys: entry {n} has maxpriority above 10 (0-10)")
            item = item[: found.start()]
            continue
        break
    if ":maxpriority" in item:
        raise ConfigError(f"api_keys: entry {n} has a bad maxpriority (an integer from 0 to 10)")
    if admin and max_priority is not None:
        raise ConfigError(
            f"api_keys: entry {n} is an admin key with a maxpriority: admins are unlimited"
        )
    return item.strip(), admin, max_priority


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
