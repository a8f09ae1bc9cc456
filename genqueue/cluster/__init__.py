"""Several machines (`dispatch = "sqs"`): one coordinator, any number of workers, over SQS.

coordinator.py  the coordinator's processor: an attempt goes out as a work message
consumer.py     the coordinator applies the events (and dead-letter) queue to its jobs
worker.py       `python main.py worker`: receives work into free slots, sends events, hands back
attempt.py      one attempt on a worker: the board's checkpoint, the workflow, its outcome
lease.py        a worker's leases and heartbeats (lost leases, the board's cancel notices)
starts.py       a worker's paid starts in flight: the Veo client's spy, the SIGTERM grace
batch.py        sends and deletes of one loop turn share one SQS batch request
messages.py     what travels on SQS (every message names its job and attempt)
transport.py    the SQS queues and the S3 board (checkpoints, cancel notices)
"""

from __future__ import annotations

from genqueue.config import Config
from genqueue.errors import ConfigError

__all__ = ["check_cluster_config"]


def check_cluster_config(cfg: Config) -> None:
    """`sqs` dispatch needs videos in S3: workers on other machines store them."""
    if cfg.storage != "s3":
        raise ConfigError(
            "GENQUEUE_DISPATCH=sqs requires GENQUEUE_STORAGE=s3 (and S3_BUCKET): workers on "
            "other machines store the videos, so they cannot go to a local folder"
        )
    if not cfg.s3_bucket:
        raise ConfigError("GENQUEUE_DISPATCH=sqs requires S3_BUCKET (GENQUEUE_STORAGE=s3)")
