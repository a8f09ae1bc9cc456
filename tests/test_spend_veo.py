"""What Veo jobs cost, checked against the fake Veo's own record of the operations it
started (its own process, as Google's would be): spend = charged starts x seconds x price.

Google's audio-filter block says "You have not been charged" (tests/test_fake_veo_sdk.py
quotes the shapes), so an operation that ended that way costs nothing, though it was
started; the job's next operation is paid as usual. The price is the operator's flat
override (`VEO3_PRICE_PER_S`), so the figure does not depend on the dated default table.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from helpers_procs import Api, FakeVeoProc, Receiver, Server, run

PRICE_PER_S = 0.5
SECONDS = 8  # the default duration
pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, FakeVeoProc, Receiver]]:
    logs = tmp_path_factory.mktemp("spend-veo")
    veo, receiver = FakeVeoProc(logs), Receiver(logs)
    try:
        yield logs, veo.start(), receiver.start()
    finally:
        veo.stop()
        receiver.stop()


def test_veo_spend_matches_the_fakes_charged_starts(
    parts: tuple[Path, FakeVeoProc, Receiver],
) -> None:
    logs, veo, receiver = parts
    plain, blocked_once = "spend veo: plain", "spend veo: audio-blocked once"

    async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
        first = await api.submit({"prompt": plain})
        assert (await api.wait_all([first["id"]], 30))[first["id"]]["status"] == "completed"
        await veo.faults(session, audio_blocks=1)  # the next operation ends audio-blocked
        second = await api.submit({"prompt": blocked_once})
        done = await api.wait_all([second["id"]], 30)
        assert done[second["id"]]["status"] == "completed", done

        ops = await veo.ops(session, plain) + await veo.ops(session, blocked_once)
        outcomes = sorted(op["outcome"] for op in ops)
        assert outcomes == ["audio_blocked", "success", "success"], ops
        charged = sum(op["outcome"] != "audio_blocked" for op in ops)
        expected = charged * SECONDS * PRICE_PER_S  # 2 x 8 s x 0.5 = 8.0

        spend = (await api.queue_status())["spend"]
        assert spend["total"] == pytest.approx(expected), spend
        assert spend["byProvider"] == {"veo3": pytest.approx(expected)}, spend
        assert spend["inFlight"] == 0, spend
        async with session.get(f"{api.url}/metrics") as resp:
            text = await resp.text()
        line = next(
            x for x in text.splitlines() if x.startswith('genqueue_spend_total{provider="veo3"}')
        )
        assert float(line.split()[-1]) == pytest.approx(expected)

    env = {"VEO3_PRICE_PER_S": str(PRICE_PER_S)}
    with Server(logs, "spend-veo", fake=veo, receiver=receiver, env=env) as server:
        run(server, scenario, 60)
