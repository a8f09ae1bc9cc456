"""GenerationActor: the video-generation workflow (the plan's GenerationWorkflow).

It is the processor of video jobs. Each generation is a coroutine on the I/O loop, started
once the job is stored as processing (by its JobActor's turn, or by the queue's turn that
created it started), whose outcome returns to the job's JobActor as a message:
a thousand generations in flight cost a thousand coroutines, not threads.

    start (a paid call) -> checkpoint the operation name -> poll every
    polling_interval_s -> stream the video from Veo into the VideoStore -> result

The operation name is stored (`report(checkpoint=...)` is durable before it
returns) before the first poll, so after a restart the job resumes polling the
same operation and never pays for a second video.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import secrets
import time
from typing import Any

import msgspec

from genqueue.actors.provider_calls import ProviderCalls
from genqueue.actors.tasks import TASK_CANCELLED
from genqueue.clock import Clock, RealClock
from genqueue.errors import ProviderError, StorageError
from genqueue.models import Job, JobResult, VideoOutput
from genqueue.policies import provider_retry
from genqueue.processor import Report as ReportFn
from genqueue.providers.base import ProviderClient
from genqueue.providers.veo import Operation, VideoRef, to_video_params
from genqueue.retry import RetryPolicy
from genqueue.storage.videos import LocalStore, StoredVideo, VideoStore
from genqueue.storage.videourls import stored_video_key

__all__ = ["GenerationActor", "GenerationCheckpoint"]

log = logging.getLogger("genqueue.generation")
EXPECTED_S = 60.0  # progress estimate: Veo usually takes 11 s to a few minutes
PROGRESS_STEP = 5  # percentage points between progress reports
DEFAULT_RETRY = provider_retry(3)  # 3 more tries of a call, 1 s, 2 s, 4 s apart


def _final(exc: ProviderError, why: str) -> ProviderError:
    return ProviderError(
        f"{exc.message} ({why})", retryable=False, status=exc.status, code=exc.code
    )


class GenerationCheckpoint(msgspec.Struct, omit_defaults=True):
    """What survives a restart: the paid operation, once started."""

    operation: str | None = None
    started_at: float | None = None
    starts: int = 0
    # The stored video's name: a random token, durable before the upload, so a retried
    # upload replaces the same file and nobody can guess the name from the job id. A
    # generation's further videos (`sampleCount`) are `{video_name}-{n}`.
    video_name: str | None = None
    audio_blocks: int = 0  # operations whose audio Veo blocked (not charged)
    spent: float = 0.0  # paid starts x the job's price a start (an uncharged block: none)


class GenerationActor:
    """`await actor(job, report)` runs one generation to a JobResult or a ProviderError."""

    def __init__(
        self,
        client: ProviderClient,
        store: VideoStore,
        *,
        polling_interval_s: float = 5.0,
        operation_timeout_s: float = 900.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        clock: Clock | None = None,
        ambiguous_start: str = "fail",
        audio_block_retries: int = 2,
        lost_operation: str | None = None,
    ):
        self.client = client
        self.ambiguous_start = ambiguous_start
        # A poll's 404 (the operation lost): VEO3_AMBIGUOUS_START unless said otherwise (the
        # built-in fake, free and forgetful across restarts, starts anew).
        self.lost_operation = lost_operation or ambiguous_start
        self.audio_block_retries = audio_block_retries
        self.ambiguous_starts = 0  # starts whose answer was lost (maybe paid)
        self.store = store
        self.polling_interval_s = polling_interval_s
        self.operation_timeout_s = operation_timeout_s  # from the operation's start to its end
        self.retry = retry  # a call's retries; also bounds the operations of one attempt
        self.clock: Clock = clock or RealClock()
        self._calls = ProviderCalls(self.clock, retry)
        self.calls = self._calls.counts  # by kind: start, poll, download, errors
        self._started: dict[str, str] = {}  # job id -> the provider request it runs
        self._cancelling: set[asyncio.Task[None]] = set()

    async def __call__(self, job: Job, report: ReportFn) -> JobResult:
        t0 = time.monotonic()
        ids = {"job_id": job.id, "user_id": job.user_id}
        ckpt = msgspec.convert(job.checkpoint or {}, GenerationCheckpoint)
        log.info("generation started", extra={**ids, "resumed": ckpt.operation is not None})
        try:
            return await self._run(job, ckpt, report, t0, ids)
        except asyncio.CancelledError as exc:
            if TASK_CANCELLED in exc.args:
                self._cancel_remote(job)
            raise
        finally:
            self._started.pop(job.id, None)

    def _cancel_remote(self, job: Job) -> None:
        """The job was cancelled (not the process stopped): ask the provider to cancel the
        request it is running, when it can (fal can; Veo has no cancel)."""
        name = self._started.get(job.id)
        cancel = getattr(self.client, "cancel", None)
        if name is None or cancel is None:
            return
        task = asyncio.get_running_loop().create_task(cancel(name))
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)
        log.info("provider request cancelled", extra={"job_id": job.id, "operation": name})

    async def _run(
        self,
        job: Job,
        ckpt: GenerationCheckpoint,
        report: ReportFn,
        t0: float,
        ids: dict[str, str],
    ) -> JobResult:
        if ckpt.operation is not None:
            self._started[job.id] = ckpt.operation
        try:
            while True:
                fresh = ckpt.operation is None
                if fresh:
                    ckpt = await self._start(job, ckpt, report)
                try:
                    op = await self._poll_until_done(job, ckpt, report, fresh=fresh)
                    break
                except ProviderError as exc:
                    ckpt = await self._after_failed_operation(job, ckpt, exc, report)
            result = await self._store(job, op, ckpt, report, t0)
        except ProviderError as exc:
            log.warning(
                "generation failed", extra={**ids, "error": exc.message, "retryable": exc.retryable}
            )
            raise
        log.info(
            "generation completed",
            extra={
                **ids,
                "video_url": result.video_url,
                "duration_ms": round(1000 * (time.monotonic() - t0)),
            },
        )
        return result

    async def _after_failed_operation(
        self, job: Job, ckpt: GenerationCheckpoint, exc: ProviderError, report: ReportFn
    ) -> GenerationCheckpoint:
        """The checkpoint to go on with (its operation cleared: start anew) when polling
        ended in `exc`, or raise: the job's outcome."""
        if exc.code == "audio_blocked":
            # Not charged and not deterministic: a bounded number of new tries.
            if ckpt.audio_blocks >= self.audio_block_retries:
                raise _final(exc, f"after {ckpt.audio_blocks + 1} operations") from exc
            ckpt = msgspec.structs.replace(
                ckpt,
                operation=None,
                audio_blocks=ckpt.audio_blocks + 1,
                spent=max(0.0, ckpt.spent - job.estimated_cost),  # not charged
            )
            await report(checkpoint=msgspec.to_builtins(ckpt))
            return ckpt
        # A failed operation that may be retried, or one the provider no longer knows
        # (expired, polled at the wrong host, or the built-in fake restarted).
        lost = exc.code == "operation_not_found"
        if not lost and (exc.code != "operation_error" or not exc.retryable):
            raise exc
        if lost:
            self._lost_operation(job, exc)
        if self.retry.gives_up(ckpt.starts):
            # Retries spent: final, or the queue's retry would re-poll the failed operation
            # the checkpoint still names.
            raise _final(exc, f"after {ckpt.starts} operations") from exc
        ckpt = msgspec.structs.replace(ckpt, operation=None)
        await report(checkpoint=msgspec.to_builtins(ckpt))
        return ckpt

    def _lost_operation(self, job: Job, exc: ProviderError) -> None:
        """Veo answered 404 to a poll of an operation it accepted (and may have charged
        for): an ambiguous start, counted, under VEO3_AMBIGUOUS_START ("fail": the job
        fails rather than pay for a second video; "retry": a new operation is started)."""
        self.ambiguous_starts += 1
        log.warning("veo operation lost", extra={"job_id": job.id, "error": exc.message})
        if self.lost_operation == "retry":
            return
        raise ProviderError(
            f"{exc.message}; Veo accepted this operation (and may have charged for it) but no"
            " longer knows it: not started again, to never pay twice"
            " (VEO3_AMBIGUOUS_START=fail): check the Veo console before resubmitting",
            retryable=False,
            status=exc.status,
            code="operation_not_found",
        ) from exc

    async def _start(
        self, job: Job, ckpt: GenerationCheckpoint, report: ReportFn
    ) -> GenerationCheckpoint:
        params = to_video_params(job.parameters)
        t = time.monotonic()
        name = await self._calls.run("start", lambda: self._start_once(job, params))
        log.info(
            "veo operation started",
            extra={
                "job_id": job.id,
                "operation": name,
                "duration_ms": round(1000 * (time.monotonic() - t)),
            },
        )
        ckpt = msgspec.structs.replace(
            ckpt,
            operation=name,
            started_at=self.clock.now(),
            starts=ckpt.starts + 1,
            spent=ckpt.spent + job.estimated_cost,
        )
        self._started[job.id] = name
        await report(progress=5, checkpoint=msgspec.to_builtins(ckpt))  # durable before polling
        return ckpt

    async def _start_once(self, job: Job, params: Any) -> str:
        """One paid start. An ambiguous one (the answer lost after the request went out)
        follows VEO3_AMBIGUOUS_START: "fail" never starts again, "retry" does, knowingly."""
        try:
            return await self.client.start(job.prompt, params, model=job.model)
        except ProviderError as exc:
            if exc.code != "ambiguous_start":
                raise
            self.ambiguous_starts += 1
            log.warning("veo start ambiguous", extra={"job_id": job.id, "error": exc.message})
            if self.ambiguous_start == "retry":
                raise ProviderError(
                    f"{exc.message}; starting again (VEO3_AMBIGUOUS_START=retry)",
                    retryable=True,
                    code="ambiguous_start",
                ) from exc
            raise ProviderError(
                f"{exc.message}; not started again, to never pay twice "
                "(VEO3_AMBIGUOUS_START=fail): check the Veo console before resubmitting",
                retryable=False,
                code="ambiguous_start",
            ) from exc

    async def _poll_until_done(
        self, job: Job, ckpt: GenerationCheckpoint, report: ReportFn, *, fresh: bool
    ) -> Operation:
        """Poll on a fixed grid, `polling_interval_s` apart from the operation's start, so time
        spent in the calls themselves does not push each poll later. A fresh operation is
        first polled one interval after its start (Veo never finishes sooner than ~11 s); a
        resumed one at once, then on the grid."""
        assert ckpt.operation is not None
        started = ckpt.started_at or self.clock.now()
        interval = self.polling_interval_s
        reported = 0
        ticks = 1 if fresh else 0
        while True:
            delay = started + ticks * interval - self.clock.now()
            if delay > 0:
                await self.clock.sleep(delay)
            op = await self._calls.run("poll", lambda: self.client.poll(ckpt.operation or ""))
            if op.done:
                return op
            elapsed = self.clock.now() - started
            if elapsed > self.operation_timeout_s:
                raise ProviderError(
                    f"Veo did not finish within {self.operation_timeout_s:g} s",
                    retryable=False,
                    code="timeout",
                )
            progress = min(90, 5 + int(85 * elapsed / EXPECTED_S))
            if progress >= reported + PROGRESS_STEP:  # each report is a durable write
                await report(progress=progress)
                reported = progress
            # The next grid point after now (polls that fell behind are not made up).
            behind = math.floor((self.clock.now() - started) / interval) if interval > 0 else 0
            ticks = max(ticks + 1, behind + 1)

    async def _store(
        self, job: Job, op: Operation, ckpt: GenerationCheckpoint, report: ReportFn, t0: float
    ) -> JobResult:
        """Every video the operation made (`sampleCount`), each streamed into the store;
        `video_url` is the first."""
        if not op.videos:
            raise ProviderError("Veo finished without a video", retryable=False, code="no_video")
        name = ckpt.video_name
        if name is None:
            name = secrets.token_hex(16)
            ckpt = msgspec.structs.replace(ckpt, video_name=name)
            await report(progress=92, checkpoint=msgspec.to_builtins(ckpt))
        else:
            await report(progress=92)
        stored = []
        for sample, video in enumerate(op.videos):
            sample_name = name if sample == 0 else f"{name}-{sample}"
            upload = functools.partial(self._upload, job, video, sample_name)
            stored.append(await self._calls.run("download", upload))
        return JobResult(
            video_url=stored[0].url,
            duration=float(job.parameters.duration),
            processing_time=round(time.monotonic() - t0, 3),
            video_key=stored[0].key,
            private=stored[0].private,
            videos=[VideoOutput(v.url, v.key) for v in stored] if len(stored) > 1 else None,
        )

    async def _upload(self, job: Job, video: VideoRef, name: str) -> StoredVideo:
        t = time.monotonic()
        chunks = self.client.download(video)
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            try:
                stored = await self.store.put_stream(job.user_id, name, chunks)
            except StorageError as exc:
                # The store refusing (S3 503s, a full disk) is a transient failure of
                # this generation, retried like Veo's; never an "internal error".
                raise ProviderError(
                    f"storing the video failed: {exc}", retryable=True, code="storage_error"
                ) from exc
        log.info(
            "video stored",
            extra={
                "job_id": job.id,
                "key": stored.key,
                "bytes": stored.size_bytes,
                "duration_ms": round(1000 * (time.monotonic() - t)),
            },
        )
        return stored

    async def delete_videos(self, jobs: list[Job]) -> None:
        """Delete the stored videos of `jobs` (retention removed them); failures only warn."""
        storage = "local" if isinstance(self.store, LocalStore) else "s3"
        keys = [stored_video_key(job, storage) for job in jobs]
        # a generation's further videos (sampleCount): the first is the result's own key
        keys += [v.key for job in jobs if job.result for v in (job.result.videos or [])[1:]]
        for key in filter(None, keys):
            try:
                await self.store.delete(key)
            except StorageError as exc:
                log.warning("could not delete a removed job's video", extra={"error": str(exc)})

    def stats(self) -> dict[str, Any]:
        """The plan's API metrics: provider calls per minute, errors, rate-limit hits."""
        return {**self._calls.stats(), "ambiguousStarts": self.ambiguous_starts}
