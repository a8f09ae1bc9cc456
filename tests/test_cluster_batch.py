"""The SQS batcher: calls of one loop turn share one request; failures reach their callers."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from genqueue.cluster.batch import MAX_BATCH_BYTES, Batcher, EntryFailed
from genqueue.cluster.transport import Queues
from genqueue.config import Config


def test_calls_of_one_turn_share_requests_of_ten() -> None:
    requests: list[list[dict[str, Any]]] = []

    async def send(entries: list[dict[str, Any]]) -> dict[str, Any]:
        requests.append(entries)
        return {"Successful": [{"Id": e["Id"]} for e in entries]}

    async def main() -> None:
        b = Batcher(send)
        await asyncio.gather(*(b.submit({"n": i}) for i in range(23)))
        await b.submit({"n": 99})  # alone in its turn

    asyncio.run(main())
    assert [len(r) for r in requests] == [10, 10, 3, 1]
    assert [e["n"] for r in requests for e in r] == [*range(23), 99]


def test_a_refused_entry_fails_alone_and_a_failed_request_fails_all() -> None:
    async def send(entries: list[dict[str, Any]]) -> dict[str, Any]:
        if any(e["n"] == "boom" for e in entries):
            raise ConnectionError("down")
        return {"Failed": [{"Id": e["Id"], "Code": "Bad"} for e in entries if e["n"] == 1]}

    async def main() -> list[Any]:
        b = Batcher(send)
        first = await asyncio.gather(
            *(b.submit({"n": i}) for i in range(3)), return_exceptions=True
        )
        second = await asyncio.gather(
            b.submit({"n": "boom"}), b.submit({"n": 5}), return_exceptions=True
        )
        return [*first, *second]

    results = asyncio.run(main())
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], EntryFailed) and "Bad" in str(results[1])
    assert all(isinstance(r, ConnectionError) for r in results[3:])


def test_a_batch_is_flushed_before_its_bodies_pass_the_total_limit() -> None:
    requests: list[list[int]] = []

    async def send(entries: list[dict[str, Any]]) -> dict[str, Any]:
        sizes = [len(e["MessageBody"]) for e in entries]
        if sum(sizes) > MAX_BATCH_BYTES:
            raise AssertionError(f"a batch of {sum(sizes)} bytes")
        requests.append(sizes)
        return {}

    async def main() -> None:
        b = Batcher(send)
        big, small = "x" * 100_000, "y" * 10
        await asyncio.gather(*(b.submit({"MessageBody": big}) for _ in range(5)))
        await asyncio.gather(b.submit({"MessageBody": small}), b.submit({"MessageBody": big}))

    asyncio.run(main())
    assert [len(r) for r in requests] == [2, 2, 1, 2]


def test_a_batch_refused_as_too_long_is_split_down_to_single_entries() -> None:
    class TooLong(Exception):
        pass

    requests: list[int] = []

    async def send(entries: list[dict[str, Any]]) -> dict[str, Any]:
        requests.append(len(entries))
        if len(entries) > 1:  # an endpoint with a smaller limit than ours
            raise TooLong("AWS.SimpleQueueService.BatchRequestTooLong")
        return {}

    async def main() -> None:
        b = Batcher(send)
        await asyncio.gather(*(b.submit({"MessageBody": "x" * 1000}) for _ in range(4)))

    asyncio.run(main())
    assert sorted(requests) == [1, 1, 1, 1, 2, 2, 4]


def test_five_large_work_messages_sent_together_all_go_through(
    moto_endpoint: str, tmp_path: Path
) -> None:
    """Real SQS (moto's server): five messages of 240,000 bytes sent in one turn."""
    cfg = Config(
        data_dir=str(tmp_path),
        dispatch="sqs",
        storage="s3",
        s3_bucket="b",
        sqs_endpoint_url=moto_endpoint,
        sqs_prefix="batch-" + uuid.uuid4().hex[:8],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        aws_region="us-east-1",
    )

    async def main() -> tuple[list[object], int]:
        queues = Queues(cfg)
        await queues.start()
        try:
            body = "x" * 240_000  # each under the coordinator's MAX_WORK_BYTES (250,000)
            results = await asyncio.gather(
                *(queues.send("work", body, f"job-{i}", f"job-{i}.1") for i in range(5)),
                return_exceptions=True,
            )
            got = 0
            while got < 5:
                msgs = await queues.receive("work", 10, 1)
                if not msgs:
                    break
                got += len(msgs)
                for m in msgs:
                    await queues.delete("work", m.handle)
            return results, got
        finally:
            await queues.close()

    results, got = asyncio.run(main())
    assert all(r is None for r in results), [repr(r)[:120] for r in results]
    assert got == 5
