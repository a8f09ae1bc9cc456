"""The SQS batcher: calls of one loop turn share one request; failures reach their callers."""

from __future__ import annotations

import asyncio
from typing import Any

from genqueue.cluster.batch import Batcher, EntryFailed


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
