"""Child process for the queue crash test: submit jobs, process them slowly, get killed.

    python tests/helpers_queue_crash.py DATA_DIR EVENTS_FILE RUN FIRST TOTAL FINAL

Opens a JobQueue on DATA_DIR (default, FULL durability), submits jobs `job-FIRST` ..
`job-(TOTAL-1)` one by one and prints one line per fact, flushed at once:

    ACK job-0007 True     submit returned (the job is durable); True if it was created
    CALL job-0007 1 0     the processor was called: attempt, run that saved the checkpoint (or -)
    SAVED job-0007        its checkpoint `{"run": RUN}` is stored (`report` returned)
    END job-0007 completed   a terminal event (also appended to EVENTS_FILE, one write a line)

The processor reports a checkpoint (durable before `report` returns), then works a few
ms. With FINAL=0 the child never exits on its own: once drained it waits for the parent
to kill it (or exits when its stdin closes, so it never outlives the parent). With
FINAL=1 it joins the queue, prints `FINAL id status attempts` for every job and `DONE`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any

from genqueue import Config, Job, JobQueue, JobResult

_lock = threading.Lock()


def say(line: str) -> None:
    with _lock:
        os.write(1, (line + "\n").encode())


def main() -> None:
    data_dir, events_file, run_s, first_s, total_s, final_s = sys.argv[1:7]
    run, first, total, final = int(run_s), int(first_s), int(total_s), final_s == "1"
    events_fd = os.open(events_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    async def process(job: Job, report: Any) -> JobResult:
        saved = job.checkpoint["run"] if isinstance(job.checkpoint, dict) else "-"
        say(f"CALL {job.id} {job.attempts} {saved}")
        await report(progress=50, checkpoint={"run": run})
        say(f"SAVED {job.id}")
        await asyncio.sleep(0.004)
        return JobResult(video_url=f"memory://{job.id}.mp4")

    def on_event(job: Job) -> None:
        if job.terminal:
            os.write(events_fd, f"{job.id} {job.status}\n".encode())
            say(f"END {job.id} {job.status}")

    config = Config(data_dir=data_dir, max_concurrency=4)
    queue = JobQueue(config, process)
    queue.subscribe(on_event)
    with queue:
        for i in range(first, total):
            job, created = queue.submit({"id": f"job-{i:04d}", "prompt": f"video {i}"})
            say(f"ACK {job.id} {created}")
        queue.join(timeout_s=60)
        if not final:
            say("DRAINED")
            sys.stdin.read()  # until the parent kills us, or goes away
            return
        for i in range(total):
            job = queue.get(f"job-{i:04d}")
            say(f"FINAL {job.id} {job.status} {job.attempts}")
    say("DONE")


if __name__ == "__main__":
    main()
