"""The job index: every job, newest first, per user and for all users (one owner of the format).

    job_index: {user_id}/{INDEX_TOP - seq:016}  -> job id
               */{INDEX_TOP - seq:016}          -> job id      (every user's jobs)

The QueueActor adds a job in its submission's turn and removes it in the retention turn
that removes the job; `page` reads it (blocking reads: callers off the event loop run it
in a worker thread). A cursor is the last key's 16 digits: stable while jobs come and go.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection

from genqueue.errors import InvalidRequest
from genqueue.models import NAME_PATTERN, Job, JobPage, JobStatus
from genqueue.storage.state import StateStore

__all__ = ["JobIndex", "check_user_id"]

_TABLE = "job_index"
_TOP = 10**16 - 1
_ALL_USERS = "*"
_CURSOR = re.compile(r"[0-9]{16}")
_USER_ID = re.compile(NAME_PATTERN)
_SCAN_BATCH = 100
_MAX_SCAN = 1000  # index entries one page may read when filtering by status


def check_user_id(user_id: str) -> str:
    """`user_id` if it is a name (the index's key prefix and a folder name); else
    InvalidRequest: "a/b" would be listed inside "a"'s jobs, and "*" is every user's."""
    if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id):
        raise InvalidRequest(
            f"user_id must match {NAME_PATTERN} (letters, digits, '_', ':', '-', '.'; "
            "not starting with '.'), not {user_id!r}",
            field="user_id",
        )
    return user_id


class JobIndex:
    """Writes (in the QueueActor's turns) and pages (anywhere) the job index."""

    def __init__(self, store: StateStore):
        self._table = store.namespace(_TABLE)

    def add(self, job: Job) -> int:
        """Index `job` (its `seq` is set); returns the sequence number of the last write."""
        self._table.put(self._key(job.user_id, job.seq), job.id)
        return self._table.put(self._key(_ALL_USERS, job.seq), job.id)

    def remove(self, job: Job) -> None:
        self._table.delete(self._key(job.user_id, job.seq))
        self._table.delete(self._key(_ALL_USERS, job.seq))

    def page(
        self,
        read: Callable[[str], Job | None],
        *,
        user_id: str | None = None,
        statuses: Collection[JobStatus] | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> JobPage:
        """Up to `limit` jobs of `user_id` (None: every user's) after `cursor`, newest first,
        whose status is among `statuses` (None: any); `read` gives a job's record. A page
        filtered by status reads at most 1000 index entries, so it may hold fewer than
        `limit` jobs and still have a `next_cursor`."""
        if cursor is not None and not _CURSOR.fullmatch(cursor):
            raise InvalidRequest("cursor must be a next_cursor a page returned", field="cursor")
        if limit < 1:
            raise InvalidRequest("limit must be at least 1", field="limit")
        prefix = f"{_ALL_USERS if user_id is None else check_user_id(user_id)}/"
        after = -1 if cursor is None else int(cursor)
        items: list[Job] = []
        scanned = 0
        while after < _TOP - 1:
            batch = self._table.list(prefix, start=f"{prefix}{after + 1:016d}", limit=_SCAN_BATCH)
            for key, job_id in batch:
                after = int(key[len(prefix) :])
                scanned += 1
                job = read(job_id)
                if job is not None and (statuses is None or job.status in statuses):
                    items.append(job)
                if len(items) == limit or scanned >= _MAX_SCAN:
                    more = self._table.list(prefix, start=f"{prefix}{after + 1:016d}", limit=1)
                    return JobPage(items, f"{after:016d}" if more else None)
            if len(batch) < _SCAN_BATCH:
                break
        return JobPage(items, None)

    @staticmethod
    def _key(user: str, seq: int) -> str:
        return f"{user}/{_TOP - seq:016d}"
