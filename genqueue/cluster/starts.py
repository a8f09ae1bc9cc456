"""Paid starts in flight on a worker: the attempt a Veo call belongs to, the Veo client's
spy that marks a start in flight until its checkpoint is stored, and how long SIGTERM
waits for one (`start_grace_s`).

A start's POST may be paid as soon as it leaves: cut before its answer is checkpointed, its
operation is lost and the next worker pays again. So SIGTERM waits for it as long as a
start may take, a lost lease stops the attempt only once the start settled, and a start
cut anyway is counted as an ambiguous start (worker.py).
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from genqueue.cluster.messages import Work
from genqueue.errors import ProviderError

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT_S",
    "RUN",
    "START_MARGIN_S",
    "ClientSpy",
    "StartWatcher",
    "WorkerRun",
    "start_grace_s",
]

# A start's two calls (a 401 refreshes the token and calls again) are each within the Veo
# client's request timeout; then the token refresh and the checkpoint's writes.
START_MARGIN_S = 30.0
DEFAULT_REQUEST_TIMEOUT_S = 60.0  # Veo3Client's, when the service has no client


def start_grace_s(request_timeout_s: float) -> float:
    """How long SIGTERM waits for a paid start in flight to reach its checkpoint."""
    return 2 * request_timeout_s + START_MARGIN_S


@dataclass
class WorkerRun:
    """One attempt a worker holds (its work message, its lease, its task)."""

    work: Work
    handle: str
    progress: int = 0
    starting: bool = False  # a paid start is in flight and not yet checkpointed
    stop_reason: str | None = None  # "cancelled" | "handback" | "lease_lost"
    task: asyncio.Task[None] | None = None
    closing: bool = False  # the outcome is known: being sent, then the message deleted
    lease_until: float = 0.0  # (monotonic) until when the lease surely holds
    stop_after_start: str | None = None  # a stop waiting for the start in flight to settle

    def stop(self, reason: str) -> None:
        if self.stop_reason is None and self.task is not None and not self.closing:
            if self.starting and reason == "lease_lost":
                # Cut now, the paid operation's name would be lost: stop once it is stored.
                self.stop_after_start = reason
                return
            self.stop_reason = reason
            self.task.cancel()


class StartWatcher(Protocol):
    """What the spy tells (the Worker)."""

    def start_settled(self, run: WorkerRun | None) -> None: ...

    def saw_429(self, retry_after_s: float | None, provider: str = "veo3") -> None: ...

    def refuse_start(self, run: WorkerRun) -> bool: ...


RUN: ContextVar[WorkerRun | None] = ContextVar("genqueue_worker_run", default=None)


class ClientSpy:
    """A provider's client, telling the worker when a paid start is in flight (until its
    checkpoint is stored) and of a start's 429 (which the workflow then retries). A poll's
    429 is not told: as on one machine, it is retried and pauses no dispatch (polls of
    jobs already running keep coming after a pause, and would make it a quota pause)."""

    def __init__(self, client: Any, worker: StartWatcher, provider: str = "veo3"):
        self._client = client
        self._worker = worker
        self._provider = provider

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def start(self, *args: Any, **kw: Any) -> Any:
        run = RUN.get()
        if run is not None and self._worker.refuse_start(run):
            # SIGTERM came: nothing sent, nothing paid; the attempt is handed back as is.
            raise asyncio.CancelledError
        if run is not None:
            run.starting = True
        try:
            return await self._client.start(*args, **kw)
        except BaseException as exc:
            self._worker.start_settled(run)  # no operation: nothing to checkpoint
            if isinstance(exc, ProviderError) and exc.status == 429:
                self._worker.saw_429(exc.retry_after_s, self._provider)
            raise
