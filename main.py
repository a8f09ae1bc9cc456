"""genqueue's command line: serve | submit | status | jobs | fake-veo.

    python main.py serve [--host H] [--port N] [--data-dir D] [--config FILE]
    python main.py submit "PROMPT" [--duration 8] [--aspect-ratio 16:9] [--priority 0] [--wait]
    python main.py status
    python main.py jobs [--status S]
    python main.py fake-veo --port N

Client commands talk to GENQUEUE_URL (default http://127.0.0.1:8787) with the key in
GENQUEUE_KEY, or the admin key that `serve` stored in the data directory.
Exit codes: 0 ok, 1 the job failed or was cancelled, 2 bad usage or input,
3 server unreachable, 4 key refused.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import orjson

from genqueue.config import SECRET_FIELDS, Config, load_config
from genqueue.errors import ConfigError

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_AUTH = 0, 1, 2, 3, 4
KEY_FILE = "admin_key"


def ensure_api_keys(cfg: Config) -> Config:
    """With no keys configured, make one admin key on first start, store it, print it once."""
    if cfg.api_keys:
        return cfg
    path = Path(cfg.data_dir) / KEY_FILE
    if path.exists():
        key = path.read_text().strip()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = "gq_" + secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        print(f"Generated an admin API key (stored in {path}; shown once):\n  {key}", flush=True)

    return msgspec.structs.replace(cfg, api_keys=f"{key}=admin:admin")


def serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from genqueue.http.app import create_app
    from genqueue.log import setup_logging

    cfg = load_config(args.config, host=args.host, port=args.port, data_dir=args.data_dir)
    cfg = ensure_api_keys(cfg)
    setup_logging(cfg.log_level, secrets=[str(getattr(cfg, f)) for f in SECRET_FIELDS])
    print(f"genqueue serving on http://{cfg.host}:{cfg.port} (data in {cfg.data_dir})", flush=True)
    web.run_app(create_app(cfg), host=cfg.host, port=cfg.port, print=None, shutdown_timeout=10)
    return EXIT_OK


# -- client commands --------------------------------------------------------------------------


class ClientError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _client_settings(args: argparse.Namespace) -> tuple[str, str]:
    cfg = load_config(args.config, data_dir=args.data_dir)
    url = os.environ.get("GENQUEUE_URL") or f"http://{cfg.host}:{cfg.port}"
    key = os.environ.get("GENQUEUE_KEY", "")
    key_file = Path(cfg.data_dir) / KEY_FILE
    if not key and key_file.exists():
        key = key_file.read_text().strip()
    return url.rstrip("/"), key


async def _call(method: str, url: str, key: str, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
            ) as resp,
        ):
            data = await resp.json(content_type=None)
    except (TimeoutError, aiohttp.ClientConnectionError) as exc:
        raise ClientError(f"cannot reach genqueue at {url}: {exc}", EXIT_UNREACHABLE) from exc
    if resp.status == 401:
        raise ClientError("the API key was refused (set GENQUEUE_KEY)", EXIT_AUTH)
    if resp.status >= 400:
        err = (data or {}).get("error", {})
        field = f" (field {err['field']})" if err.get("field") else ""
        raise ClientError(f"error {resp.status}: {err.get('message', data)}{field}", EXIT_USAGE)
    return data


async def _submit(args: argparse.Namespace) -> int:
    url, key = _client_settings(args)
    body: dict[str, Any] = {
        "prompt": args.prompt,
        "priority": args.priority,
        "parameters": {"duration": args.duration, "aspectRatio": args.aspect_ratio},
    }
    job = await _call("POST", f"{url}/api/generations", key, body)
    print(f"submitted {job['id']} ({job['status']})")
    if not args.wait:
        return EXIT_OK
    while job["status"] not in ("completed", "failed", "cancelled"):
        bar = "#" * (job.get("progress", 0) // 5)
        print(f"\r[{bar:<20}] {job.get('progress', 0):3d}% {job['status']:<10}", end="", flush=True)
        await asyncio.sleep(1.0)
        job = await _call("GET", f"{url}/api/generations/{job['id']}", key)
    print(f"\r[{'#' * 20}] {job['status']}" + " " * 12)
    if job["status"] == "completed":
        print(job["result"]["videoUrl"])
        return EXIT_OK
    print(f"job {job['status']}: {job.get('error')}", file=sys.stderr)
    return EXIT_JOB_FAILED


async def _status(args: argparse.Namespace) -> int:
    url, key = _client_settings(args)
    st = await _call("GET", f"{url}/api/queue/status", key)
    width = max(len(k) for k in st)
    for k, v in st.items():
        shown = orjson.dumps(v).decode() if isinstance(v, dict | list) else v
        print(f"{k:<{width}}  {shown}")
    return EXIT_OK


async def _jobs(args: argparse.Namespace) -> int:
    url, key = _client_settings(args)
    query = f"?status={args.status}" if args.status else ""
    page = await _call("GET", f"{url}/api/generations{query}", key)
    print(f"{'id':<34} {'status':<11} {'progress':>8}  prompt")
    for job in page["items"]:
        print(f"{job['id']:<34} {job['status']:<11} {job['progress']:>7}%  {job['prompt'][:40]}")
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py", description="genqueue: durable video jobs")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the HTTP server")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    for name in ("serve", "submit", "status", "jobs"):
        q = s if name == "serve" else sub.add_parser(name)
        q.add_argument("--data-dir")
        q.add_argument("--config", help="a TOML file")
    sp = sub.choices["submit"]
    sp.add_argument("prompt")
    sp.add_argument("--duration", type=int, default=8)
    sp.add_argument("--aspect-ratio", default="16:9")
    sp.add_argument("--priority", type=int, default=0)
    sp.add_argument("--wait", action="store_true")
    sub.choices["jobs"].add_argument("--status")
    f = sub.add_parser("fake-veo", help="run the fake Veo server")
    f.add_argument("--host", default="127.0.0.1")
    f.add_argument("--port", type=int, default=8788)
    f.add_argument("--latency-s", type=float, default=3.0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "fake-veo":
            from genqueue.providers.fake_veo import serve_fake_veo

            serve_fake_veo(args.host, args.port, latency_s=args.latency_s)
            return EXIT_OK
        run = {"submit": _submit, "status": _status, "jobs": _jobs}[args.command]
        return asyncio.run(run(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as exc:
        print(exc, file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
