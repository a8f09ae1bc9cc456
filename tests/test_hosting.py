"""The hosted kind's handle: a stop behind queued mail, sends to a stopped instance."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from genqueue.actors.hosting import HostedActor
from genqueue.actors.system import ActorSystem
from genqueue.clock import ManualClock
from genqueue.storage.state import StateStore

WAIT_S = 10.0


class Recording(HostedActor):
    """Records its turns; 'hold' waits for the test's gate (mail piles up behind it)."""

    kind = "recording"
    gate = threading.Event()
    seen: list[tuple[str, Any]] = []

    def receive(self, message: Any) -> Any:
        if message == "hold":
            assert Recording.gate.wait(WAIT_S)
        Recording.seen.append((self.key, message))
        return None


@pytest.fixture
def system(tmp_path: Path) -> Iterator[ActorSystem]:
    store = StateStore(tmp_path / "state.db")
    system = ActorSystem(store, clock=ManualClock(1_000_000.0))
    system.register(Recording)
    system.start()
    Recording.gate.clear()
    Recording.seen = []
    yield system
    Recording.gate.set()
    system.stop()
    store.close()


def test_a_stop_runs_after_the_mail_already_queued(system: ActorSystem) -> None:
    ref = system.get(Recording, "a")
    system.tell(Recording, "a", "hold")
    system.tell(Recording, "a", 1)
    system.tell(Recording, "a", 2)
    stopped = ref.stop(block=False)
    Recording.gate.set()
    assert stopped.get(timeout=WAIT_S) is True
    assert Recording.seen == [("a", "hold"), ("a", 1), ("a", 2)]
    assert not ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        ref.tell(3)  # as a pykka ActorRef: a stopped actor takes no more mail
    assert ref.stop(block=False).get(timeout=WAIT_S) is False  # already stopped


def test_a_send_after_a_stop_reaches_a_new_instance(system: ActorSystem) -> None:
    first = system.get(Recording, "b")
    system.tell(Recording, "b", 1)
    assert first.stop(block=False).get(timeout=WAIT_S) is True
    system.tell(Recording, "b", 2)  # the system activates a new instance for it
    assert system.ask(Recording, "b", "ping", timeout_s=WAIT_S) is None
    second = system.get(Recording, "b")
    assert second.actor_urn != first.actor_urn
    assert Recording.seen == [("b", 1), ("b", 2), ("b", "ping")]
