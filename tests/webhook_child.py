"""Child process for the webhook kill -9 test: complete jobs whose webhooks cannot be sent.

    python tests/webhook_child.py DATA_DIR WEBHOOK_URL N

Runs a JobQueue (instant processor, a manual clock that never moves, so only first
attempts happen), submits N jobs and prints each job id once its completed state,
and so its stored webhook, is durable. The parent SIGKILLs it; it never exits on its own
before a deadline.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from genqueue import Config, Job, JobQueue, JobResult
from genqueue.clock import ManualClock

DEADLINE_S = 60.0
_lock = threading.Lock()


async def instant(job: Job, report: Any) -> JobResult:
    return JobResult(video_url=f"https://cdn.example/{job.id}.mp4", duration=8)


def main() -> None:
    data_dir, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = Config(
        data_dir=data_dir, webhook_url=url, webhook_retry_s="0,1,2", synchronous="NORMAL"
    )
    queue = JobQueue(config, instant, clock=ManualClock(time.time())).open()

    def on_event(job: Job) -> None:
        if job.status == "completed":
            with _lock:
                sys.stdout.write(job.id + "\n")
                sys.stdout.flush()

    queue.subscribe(on_event)
    for i in range(n):
        queue.submit({"prompt": "a cat surfing", "id": f"kill-{i:03d}"})
    threading.Event().wait(DEADLINE_S)
    os._exit(3)


if __name__ == "__main__":
    main()
