"""A cluster of real processes for `dispatch = "sqs"`: moto (SQS and S3 on one port), the
fake Veo, the verifying webhook receiver, a coordinator (`main.py serve`) and workers
(`main.py worker`), each its own process on loopback."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import botocore.session
from helpers_procs import (
    MAIN,
    S3_CREDENTIALS,
    Child,
    FakeVeoProc,
    Receiver,
    Server,
    child_env,
    make_bucket,
    s3_env,
)

LEASE_S = 3  # short: a dead worker's job is resumed within 3 s


def sqs_client(endpoint: str) -> Any:
    return botocore.session.get_session().create_client(
        "sqs",
        endpoint_url=endpoint,
        region_name=S3_CREDENTIALS["AWS_REGION"],
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


class Cluster:
    """One prefix and one bucket of their own on a shared moto; start what a test needs."""

    def __init__(
        self,
        logs: Path,
        moto: str,
        fake: FakeVeoProc,
        receiver: Receiver,
        *,
        env: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
    ):
        self.logs, self.moto, self.fake, self.receiver = logs, moto, fake, receiver
        self.prefix = "gq" + uuid.uuid4().hex[:8]
        self.bucket = self.prefix + "-videos"
        make_bucket(moto, self.bucket)
        self.env = {
            "GENQUEUE_DISPATCH": "sqs",
            "SQS_ENDPOINT_URL": moto,
            "GENQUEUE_SQS_PREFIX": self.prefix,
            "GENQUEUE_WORKER_LEASE_S": str(LEASE_S),
            "GENQUEUE_SQS_WAIT_S": "1",
            "VEO3_API_KEY": "dummy-veo-key",
            "VEO3_BASE_URL": fake.url,
            "GENQUEUE_POLL_INTERVAL_S": "0.05",
            **s3_env(moto, self.bucket),
            **(env or {}),
        }
        self.config = config
        self.data_dir = logs / f"{self.prefix}-coordinator"
        self.workers: dict[str, Child] = {}

    def coordinator(self, name: str = "coordinator", **env: str) -> Server:
        return Server(
            self.logs,
            name,
            fake=self.fake,
            receiver=self.receiver,
            data_dir=self.data_dir,
            env=self.env | env,
            config=self.config,
        )

    def worker(self, name: str, concurrency: int = 8, **env: str) -> Child:
        args = [MAIN, "worker", "--concurrency", str(concurrency)]
        child = Child(args, self.logs, name, child_env(**(self.env | env))).start()
        self.workers[name] = child
        return child

    def stop_workers(self) -> None:
        for child in self.workers.values():
            child.stop()

    def sqs(self) -> Any:
        return sqs_client(self.moto)

    def queue_url(self, name: str) -> str:
        url: str = self.sqs().get_queue_url(QueueName=f"{self.prefix}-{name}.fifo")["QueueUrl"]
        return url
