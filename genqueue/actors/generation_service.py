"""GenerationService: one GenerationActor per provider, with its client, over one session
and one video store; a job runs on the actor of its `provider`.

With no key at all it starts the fake Veo server (and the fake fal queue) on loopback, so a
new user sees jobs complete without any account.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from pathlib import Path
from typing import Any

import aiohttp

from genqueue.actors.generation import GenerationActor
from genqueue.clock import Clock
from genqueue.config import Config
from genqueue.errors import ProviderError
from genqueue.models import Job, JobResult
from genqueue.processor import Report as ReportFn
from genqueue.providers.fake_fal import FakeFalServer
from genqueue.providers.fake_veo import FakeVeoServer
from genqueue.providers.fal import FalClient
from genqueue.providers.registry import Registry
from genqueue.providers.veo import Veo3Client
from genqueue.providers.veo.google_auth import Auth, load_adc
from genqueue.providers.veo.settings import vertex_base_url
from genqueue.storage.videos import LocalStore, S3Store, VideoStore

__all__ = ["GenerationService"]

log = logging.getLogger("genqueue.generation")


class GenerationService:
    """The processor of video jobs: routes each to its provider's GenerationActor."""

    def __init__(self, config: Config, *, clock: Clock | None = None, public_base_url: str = ""):
        self.config = config
        self.clock = clock
        self.public_base_url = (
            public_base_url or config.public_base_url or (f"http://{config.host}:{config.port}")
        )
        self.actors: dict[str, GenerationActor] = {}
        self.fake: FakeVeoServer | None = None
        self.fake_fal: FakeFalServer | None = None
        self._stack = contextlib.AsyncExitStack()

    @property
    def actor(self) -> GenerationActor | None:
        """Veo's actor (what a one-provider caller knew as the GenerationActor)."""
        return self.actors.get("veo3")

    async def start(self) -> None:
        cfg = self.config
        registry = Registry(cfg)
        session = await self._stack.enter_async_context(
            aiohttp.ClientSession(
                # aiohttp's default of 100 connections would queue calls of larger batches.
                connector=aiohttp.TCPConnector(limit=max(100, 2 * cfg.max_concurrency)),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        )
        store = self._video_store()
        await store.start()
        self._stack.push_async_callback(store.close)
        clients: dict[str, Any] = {"veo3": await self._veo_client(registry, session)}
        if "fal" in registry.providers:
            clients["fal"] = await self._fal_client(registry, session)
        for name, client in clients.items():
            self.actors[name] = GenerationActor(
                client,
                store,
                polling_interval_s=cfg.poll_interval_s,
                operation_timeout_s=cfg.provider_operation_timeout_s,
                retry=cfg.provider_retry,
                clock=self.clock,
                ambiguous_start=cfg.veo3_ambiguous_start,
                audio_block_retries=cfg.veo3_audio_block_retries,
                # the built-in fake forgets its operations on restart: start anew, counted
                lost_operation="retry" if name == "veo3" and registry.veo.fake else None,
            )

    async def _veo_client(self, registry: Registry, session: aiohttp.ClientSession) -> Veo3Client:
        cfg, veo = self.config, registry.veo
        base_url = veo.base_url
        if veo.fake:
            self.fake = FakeVeoServer(latency_s=3.0)
            await self._stack.enter_async_context(self.fake)
            base_url = self.fake.base_url
            log.warning(
                "no VEO3_API_KEY: using the built-in fake Veo server", extra={"base_url": base_url}
            )
        return Veo3Client.for_settings(
            session,
            veo,
            base_url=base_url,
            auth=await self._adc(veo),
            output_gcs_uri=veo.output_gcs_uri,
            gcs_base_url=cfg.gcs_base_url,
            result_timeout_s=cfg.veo3_result_timeout_s,
            quota_pause_s=cfg.veo3_quota_pause_s,
            host_for_location=vertex_base_url if veo.location_hosts else None,
        )

    async def _fal_client(self, registry: Registry, session: aiohttp.ClientSession) -> FalClient:
        cfg = self.config
        info = registry.providers["fal"]
        if info.fake:
            self.fake_fal = FakeFalServer(latency_s=3.0, key="fake-fal-key")
            fake = await self._stack.enter_async_context(self.fake_fal)
            log.warning(
                "no FAL_KEY: using the built-in fake fal queue", extra={"base_url": fake.base_url}
            )
            return FalClient(session, key=fake.key, base_url=fake.base_url, model=cfg.fal_model)
        return FalClient(
            session,
            key=cfg.fal_key,
            base_url=f"https://{cfg.fal_queue_run_host}",
            model=cfg.fal_model,
        )

    async def _adc(self, veo: Any) -> Auth | None:
        """Application Default Credentials for Vertex without a fixed token or API key
        (loaded in the executor: ADC may read files and probe the metadata server)."""
        if veo.dialect != "vertex" or veo.access_token or veo.express:
            return None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, functools.partial(load_adc, veo.credentials_file, clock=self.clock)
        )

    def _video_store(self) -> VideoStore:
        cfg = self.config
        if cfg.storage == "s3":
            return S3Store(
                bucket=cfg.s3_bucket,
                endpoint_url=cfg.s3_endpoint_url or None,
                region=cfg.aws_region or "auto",
                access_key_id=cfg.aws_access_key_id or None,
                secret_access_key=cfg.aws_secret_access_key or None,
                public_base_url=cfg.s3_public_base_url or None,
                presign_expiry_s=cfg.s3_presign_expiry_s,
            )
        return LocalStore(Path(cfg.data_dir), self.public_base_url)

    async def close(self) -> None:
        await self._stack.aclose()

    async def delete_videos(self, jobs: list[Job]) -> None:
        """Delete the videos of jobs that retention removed (one store for every provider)."""
        if self.actor is not None:
            await self.actor.delete_videos(jobs)

    def stats(self) -> dict[str, Any]:
        """Veo's figures at the top (as before), every provider's under `byProvider`."""
        if self.actor is None:
            return {}
        out = dict(self.actor.stats())
        out["byProvider"] = {name: actor.stats() for name, actor in self.actors.items()}
        return out

    async def __call__(self, job: Job, report: ReportFn) -> JobResult:
        if not self.actors:
            raise RuntimeError("GenerationService.start() was not awaited")
        actor = self.actors.get(job.provider)
        if actor is None:
            raise ProviderError(
                f"provider {job.provider!r} is not configured on this server",
                retryable=False,
                code="provider_not_configured",
            )
        return await actor(job, report)
