"""Child process for the kill -9 tests: acknowledge durable writes on stdout, then get killed.

    python tests/helpers_kill.py MODE DB_PATH [ARG]

Modes (every acknowledgement is one line, printed only once the write is durable):
- `flush THREADS`: THREADS threads loop `put` + `flush(seq)`, then print the key.
- `after_commit`: one thread puts; `after_commit(seq, ...)` prints the key.
- `actor`: asks a DurableActor to store a key; prints it when the (gated) reply comes.
- `alarm T0`: with a ManualClock at T0, arms alarms through actors, prints `armed`.

The parent test SIGKILLs the process right after reading some lines, then opens the
file again and checks that every printed key is there. The child never exits on its
own before a deadline (so a kill always lands mid-write), and gives up after it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from genqueue.actors.runtime import DurableActor
from genqueue.actors.system import ActorSystem
from genqueue.clock import ManualClock
from genqueue.storage.state import StateStore

DEADLINE_S = 60.0  # the parent kills us long before this; never outlive a dead parent
_print_lock = threading.Lock()


def ack(line: str) -> None:
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def value_for(key: str) -> dict[str, Any]:
    return {"key": key, "payload": "x" * 64}


def mode_flush(store: StateStore, threads: int) -> None:
    ns = store.namespace("kill")

    def writer(t: int) -> None:
        i = 0
        while True:
            key = f"t{t:02d}/{i:08d}"
            store.flush(ns.put(key, value_for(key)))
            ack(key)
            i += 1

    for t in range(threads):
        threading.Thread(target=writer, args=(t,), daemon=True).start()


def mode_after_commit(store: StateStore) -> None:
    ns = store.namespace("kill")
    window = threading.Semaphore(256)  # bound the acknowledgements in flight

    def writer() -> None:
        i = 0
        while True:
            window.acquire()
            key = f"k{i:08d}"
            seq = ns.put(key, value_for(key))

            def done(key: str = key) -> None:
                ack(key)
                window.release()

            store.after_commit(seq, done)
            i += 1

    threading.Thread(target=writer, daemon=True).start()


class KillPut(DurableActor):
    kind = "killput"

    def receive(self, message: Any) -> Any:
        self.storage.put(message, value_for(message))
        return message


class KillAlarm(DurableActor):
    kind = "killalarm"

    def receive(self, message: Any) -> Any:
        self.set_alarm(message)
        return self.get_alarm()


def mode_actor(store: StateStore) -> None:
    system = ActorSystem(store)
    system.register(KillPut)
    system.start()

    def asker(a: int) -> None:
        i = 0
        while True:
            key = f"{i:08d}"
            system.ask(KillPut, f"a{a}", key)
            ack(f"a{a}/{key}")
            i += 1

    for a in range(4):
        threading.Thread(target=asker, args=(a,), daemon=True).start()


def mode_alarm(store: StateStore, t0: float) -> None:
    system = ActorSystem(store, clock=ManualClock(t0))
    system.register(KillAlarm)
    system.start()
    system.ask(KillAlarm, "due", t0 + 50)  # replaced by the next one: must never fire
    system.ask(KillAlarm, "due", t0 + 100)
    system.ask(KillAlarm, "later", t0 + 300)
    ack("armed")


def kill_after(mode: str, path: Path, acks: int, arg: object = None) -> list[str]:
    """Parent side: run a child in `mode`, SIGKILL it once `acks` lines have come.

    Returns every complete line the child printed before it died (those still in the
    pipe after the kill were acknowledged too).
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), mode, str(path)]
    if arg is not None:
        cmd.append(str(arg))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        while len(lines) < acks:
            line = proc.stdout.readline()
            if not line.endswith("\n"):
                break
            lines.append(line[:-1])
        proc.send_signal(signal.SIGKILL)  # right after the last acknowledgement we read
    finally:
        if proc.poll() is None:
            proc.kill()
        rest, err = proc.communicate(timeout=30)
    assert len(lines) == acks, f"child stopped early (rc={proc.returncode}): {err}"
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err)
    return lines + rest.split("\n")[:-1]  # a last line without its newline was not acked


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    arg = sys.argv[3] if len(sys.argv) > 3 else None
    store = StateStore(path)
    if mode == "flush":
        mode_flush(store, int(arg or 1))
    elif mode == "after_commit":
        mode_after_commit(store)
    elif mode == "actor":
        mode_actor(store)
    elif mode == "alarm":
        mode_alarm(store, float(arg or 0))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    threading.Event().wait(DEADLINE_S)
    os._exit(3)


if __name__ == "__main__":
    main()
