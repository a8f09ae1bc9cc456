"""SQS and the S3 board through aiobotocore: the only things that join the machines.

Three FIFO queues, created if missing by whichever process starts first (CreateQueue with
the same attributes is idempotent):
    {prefix}-work.fifo    one message per dispatch (group: the job; deduplication id
                          `{job}.{attempt}.{dispatch}`, so a dispatch re-sent within SQS's
                          5-minute window after a coordinator crash is dropped by SQS itself);
                          visibility = the worker lease; redrive to the DLQ after
                          `sqs_max_receives` receives
    {prefix}-events.fifo  worker -> coordinator (group: the job, so one job's events
                          arrive in the order they were sent)
    {prefix}-dlq.fifo     work messages whose workers kept dying

The board is three prefixes in the videos bucket, `_genqueue/{prefix}/`, each keyed by
the generation id (one job record: never an earlier record with the same client id):
    checkpoints/{generation_id}  the latest checkpoint of a job record, written by the
                          worker before it reports it: what a resuming worker reads
    inputs/{generation_id}  a job's parameters when its images make the work message too
                          large for SQS (written before the send, deleted when the job ends)
    cancel/{generation_id}.{attempt}  a cancel (or timeout) of a running attempt, for its
                          worker
Retention deletes a removed job's objects (`forget`), with its videos.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import uuid
from typing import Any

import msgspec
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import ClientError

from genqueue.cluster.batch import Batcher
from genqueue.config import Config

__all__ = ["Board", "BoardCheckpoint", "Queues", "Received"]

log = logging.getLogger("genqueue.cluster")


class Received(msgspec.Struct, frozen=True):
    body: str
    handle: str
    receive_count: int
    group: str


class BoardCheckpoint(msgspec.Struct, frozen=True):
    attempt: int
    checkpoint: Any


def _client(cfg: Config, service: str, endpoint: str) -> Any:
    extra: dict[str, Any] = {}
    if service == "s3":
        extra = {
            "signature_version": "s3v4",
            "s3": {"addressing_style": "path" if endpoint else "auto"},
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
    region = cfg.aws_region or ("auto" if service == "s3" else "us-east-1")
    return AioSession().create_client(
        service,
        region_name=region,
        endpoint_url=endpoint or None,
        aws_access_key_id=cfg.aws_access_key_id or None,
        aws_secret_access_key=cfg.aws_secret_access_key or None,
        config=AioConfig(
            retries={"mode": "standard", "max_attempts": 5},
            max_pool_connections=64,
            connect_timeout=10,
            read_timeout=max(30, cfg.sqs_wait_s + 10),
            **extra,
        ),
    )


class Queues:
    """The three queues of one prefix; counts the requests it makes (`requests`)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.lease_s = max(1, math.ceil(cfg.worker_lease_s))
        self.events_visibility_s = max(2, min(30, self.lease_s))
        self.urls: dict[str, str] = {}
        self.requests = 0
        self._stack = contextlib.AsyncExitStack()
        self._sqs: Any = None
        self._batchers: dict[tuple[str, str], Batcher] = {}

    async def start(self) -> None:
        self._sqs = await self._stack.enter_async_context(
            _client(self.cfg, "sqs", self.cfg.sqs_endpoint_url)
        )
        prefix = self.cfg.sqs_prefix
        dlq = await self._ensure(f"{prefix}-dlq.fifo", {})
        self.urls["dlq"] = dlq
        attrs = await self._call("get_queue_attributes", QueueUrl=dlq, AttributeNames=["QueueArn"])
        redrive = {
            "deadLetterTargetArn": attrs["Attributes"]["QueueArn"],
            "maxReceiveCount": str(self.cfg.sqs_max_receives),
        }
        self.urls["work"] = await self._ensure(
            f"{prefix}-work.fifo",
            {"VisibilityTimeout": str(self.lease_s), "RedrivePolicy": json.dumps(redrive)},
        )
        self.urls["events"] = await self._ensure(
            f"{prefix}-events.fifo", {"VisibilityTimeout": str(self.events_visibility_s)}
        )

    async def close(self) -> None:
        await self._stack.aclose()

    async def _ensure(self, name: str, attributes: dict[str, str]) -> str:
        attrs = {"FifoQueue": "true", **attributes}
        try:
            url: str = (await self._call("create_queue", QueueName=name, Attributes=attrs))[
                "QueueUrl"
            ]
        except ClientError as exc:
            # Made by a process configured differently (another lease): use it as it is.
            if "QueueAlreadyExists" not in str(exc) and "QueueNameExists" not in str(exc):
                raise
            url = (await self._call("get_queue_url", QueueName=name))["QueueUrl"]
            log.warning("queue %s exists with other attributes; using it as it is", name)
        return url

    async def _call(self, op: str, **kw: Any) -> Any:
        self.requests += 1
        return await getattr(self._sqs, op)(**kw)

    def _batcher(self, op: str, queue: str) -> Batcher:
        batcher = self._batchers.get((op, queue))
        if batcher is None:
            url = self.urls[queue]

            async def send(entries: list[dict[str, Any]]) -> dict[str, Any]:
                resp: dict[str, Any] = await self._call(op, QueueUrl=url, Entries=entries)
                return resp

            batcher = self._batchers[(op, queue)] = Batcher(send)
        return batcher

    async def send(self, queue: str, body: str, group: str, dedup: str | None = None) -> None:
        """Send one message (sends of one loop turn share a SendMessageBatch)."""
        await self._batcher("send_message_batch", queue).submit(
            {
                "MessageBody": body,
                "MessageGroupId": group,
                "MessageDeduplicationId": dedup or uuid.uuid4().hex,
            }
        )

    async def receive(
        self, queue: str, max_n: int, wait_s: int, visibility_s: int | None = None
    ) -> list[Received]:
        kw: dict[str, Any] = {}
        if visibility_s is not None:
            kw["VisibilityTimeout"] = visibility_s
        resp = await self._call(
            "receive_message",
            QueueUrl=self.urls[queue],
            MaxNumberOfMessages=max(1, min(10, max_n)),
            WaitTimeSeconds=wait_s,
            AttributeNames=["ApproximateReceiveCount", "MessageGroupId"],
            **kw,
        )
        return [
            Received(
                m["Body"],
                m["ReceiptHandle"],
                int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
                m.get("Attributes", {}).get("MessageGroupId", ""),
            )
            for m in resp.get("Messages", [])
        ]

    async def delete(self, queue: str, handle: str) -> None:
        """Delete one message (deletes of one loop turn share a DeleteMessageBatch)."""
        await self._batcher("delete_message_batch", queue).submit({"ReceiptHandle": handle})

    async def set_visibility(self, queue: str, handle: str, visibility_s: int) -> None:
        await self._call(
            "change_message_visibility",
            QueueUrl=self.urls[queue],
            ReceiptHandle=handle,
            VisibilityTimeout=visibility_s,
        )

    async def extend(self, queue: str, handles: list[str], visibility_s: int) -> set[str]:
        """Renew the visibility of `handles` (10 a request); the handles SQS refused."""
        refused: set[str] = set()
        for i in range(0, len(handles), 10):
            chunk = handles[i : i + 10]
            resp = await self._call(
                "change_message_visibility_batch",
                QueueUrl=self.urls[queue],
                Entries=[
                    {"Id": str(n), "ReceiptHandle": h, "VisibilityTimeout": visibility_s}
                    for n, h in enumerate(chunk)
                ],
            )
            refused.update(chunk[int(f["Id"])] for f in resp.get("Failed", []))
        return refused

    async def depths(self) -> dict[str, dict[str, int]]:
        """Approximate counts per queue: visible and in flight (not visible)."""
        out: dict[str, dict[str, int]] = {}
        for name, url in self.urls.items():
            attrs = (
                await self._call(
                    "get_queue_attributes",
                    QueueUrl=url,
                    AttributeNames=[
                        "ApproximateNumberOfMessages",
                        "ApproximateNumberOfMessagesNotVisible",
                    ],
                )
            )["Attributes"]
            out[name] = {
                "visible": int(attrs.get("ApproximateNumberOfMessages", 0)),
                "inFlight": int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
            }
        return out


class Board:
    """Checkpoints and cancel notices in the videos bucket (S3 reads its own writes)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.bucket = cfg.s3_bucket
        self.root = f"_genqueue/{cfg.sqs_prefix}/"
        self.requests = 0
        self._stack = contextlib.AsyncExitStack()
        self._s3: Any = None

    async def start(self) -> None:
        self._s3 = await self._stack.enter_async_context(
            _client(self.cfg, "s3", self.cfg.s3_endpoint_url)
        )

    async def close(self) -> None:
        await self._stack.aclose()

    async def _get(self, key: str) -> bytes | None:
        self.requests += 1
        try:
            resp = await self._s3.get_object(Bucket=self.bucket, Key=self.root + key)
            async with resp["Body"] as body:
                data: bytes = await body.read()
                return data
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    async def _put(self, key: str, body: bytes) -> None:
        self.requests += 1
        await self._s3.put_object(Bucket=self.bucket, Key=self.root + key, Body=body)

    async def put_checkpoint(self, generation_id: str, attempt: int, checkpoint: Any) -> None:
        await self._put(
            f"checkpoints/{generation_id}",
            msgspec.json.encode(BoardCheckpoint(attempt, checkpoint)),
        )

    async def get_checkpoint(self, generation_id: str) -> BoardCheckpoint | None:
        data = await self._get(f"checkpoints/{generation_id}")
        return None if data is None else msgspec.json.decode(data, type=BoardCheckpoint)

    async def put_input(self, generation_id: str, body: bytes) -> None:
        await self._put(f"inputs/{generation_id}", body)

    async def get_input(self, generation_id: str) -> bytes | None:
        return await self._get(f"inputs/{generation_id}")

    async def delete_input(self, generation_id: str) -> None:
        await self.delete_key(f"{self.root}inputs/{generation_id}")

    async def delete_key(self, key: str) -> None:
        """Delete one object of the bucket (a missing one is no error)."""
        self.requests += 1
        await self._s3.delete_object(Bucket=self.bucket, Key=key)

    async def forget(self, generation_id: str) -> None:
        """Every object of one job record: its checkpoint, its input, its cancel notices."""
        await self.delete_key(f"{self.root}checkpoints/{generation_id}")
        await self.delete_input(generation_id)
        for key in await self._list(f"{self.root}cancel/{generation_id}."):
            await self.delete_key(key)

    async def cancel(self, generation_id: str, attempt: int) -> None:
        await self._put(f"cancel/{generation_id}.{attempt}", b"")

    async def is_cancelled(self, generation_id: str, attempt: int) -> bool:
        return await self._get(f"cancel/{generation_id}.{attempt}") is not None

    async def uncancel(self, generation_id: str, attempt: int) -> None:
        await self.delete_key(f"{self.root}cancel/{generation_id}.{attempt}")

    async def cancels(self) -> set[tuple[str, int]]:
        """Every (generation id, attempt) with a cancel notice."""
        found: set[tuple[str, int]] = set()
        prefix = self.root + "cancel/"
        for key in await self._list(prefix):
            generation_id, _, attempt = key[len(prefix) :].rpartition(".")
            if attempt.isdigit():
                found.add((generation_id, int(attempt)))
        return found

    async def _list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token: str | None = None
        while True:
            self.requests += 1
            kw = {"ContinuationToken": token} if token else {}
            resp = await self._s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix, **kw)
            keys += [obj["Key"] for obj in resp.get("Contents", [])]
            token = resp.get("NextContinuationToken")
            if not token:
                return keys
