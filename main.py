"""genqueue's command line: serve | worker | submit | status | jobs | fake-veo.

    python main.py serve [--host H] [--port N] [--data-dir D] [--config FILE]
    python main.py worker [--concurrency N] [--config FILE]   (GENQUEUE_DISPATCH=sqs)
    python main.py submit "PROMPT" [--duration 8] [--aspect-ratio 16:9] [--priority 0] [--wait]
    python main.py status
    python main.py jobs [--status S[,S...]] [--limit N]
    python main.py fake-veo --port N

Client commands talk to GENQUEUE_URL (default http://127.0.0.1:8787) with the key in
GENQUEUE_KEY, or the admin key that `serve` stored in the data directory.
Exit codes: 0 ok, 1 the job failed or was cancelled, 2 bad usage or input,
3 server unreachable (or answering 5xx), 4 key refused, 5 `serve` could not start
(the port is taken, or another server uses the data directory), 130 interrupted.
`serve` exits 0 after SIGTERM or SIGINT: it stops accepting, lets the actors finish
their turn and leaves jobs in flight to be resumed by the next start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import msgspec
import orjson
from yarl import URL

from genqueue import (
    Config,
    ConfigError,
    DataDirInUse,
    GenqueueError,
    InvalidRequest,
    Unauthorized,
    load_config,
)
from genqueue.client import AsyncClient
from genqueue.config import secret_values

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_AUTH = 0, 1, 2, 3, 4
EXIT_CANNOT_SERVE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 5, 130, 141
KEY_FILE = "admin_key"
POLL_S = 0.5  # how often `submit --wait` looks at the job

# What a terminal may act on: C0 controls (ESC, BEL, CR, ...), DEL, C1 controls (CSI
# U+009B opens an escape sequence on its own) and the bidi overrides that reorder what
# is shown. Everything the client commands print goes through `safe`, so a job's prompt,
# an error message or a status key from the server cannot drive an admin's terminal.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def safe(text: str) -> str:
    """`text` with every character a terminal could act on shown escaped (`\\x1b`)."""
    return _UNSAFE.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def say(text: str, file: IO[str] | None = None) -> None:
    """Print one line of output, escaped (`safe`), and flush it."""
    print(safe(text), file=file or sys.stdout, flush=True)


def ensure_api_keys(cfg: Config) -> Config:
    """With no keys configured, make one admin key on first start, store it, print it once."""
    if cfg.api_keys:
        return cfg
    path = Path(cfg.data_dir) / KEY_FILE
    if path.exists():
        key = path.read_text().strip()
        if not key:
            raise CannotServe(f"{path} is empty: delete it to have a new admin key made")
    else:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = "gq_" + secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        say(f"Generated an admin API key (stored in {path}; shown once):")
        say(f"  {key}")

    return msgspec.structs.replace(cfg, api_keys=f"{key}=admin:admin")


class CannotServe(Exception):
    """`serve` cannot start: the port is taken, or the data directory is in use or unusable."""


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything is opened (so a taken port costs nothing)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise CannotServe(f"cannot listen on {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise CannotServe(f"cannot listen on {host}:{port}: {reason}") from exc
    return sock


def veo_model_served(cfg: Config) -> bool:
    """`serve` and `worker` ask Veo whether it serves VEO3_MODEL before they start: False
    (with the reason on stderr) when it says no; a network failure only warns."""
    from genqueue.providers.veo.startup import check_models

    check = asyncio.run(check_models(cfg))
    if check.verdict == "refused":
        print(f"genqueue: cannot start: {check.message}", file=sys.stderr)
        return False
    if check.verdict == "unknown":
        print(f"genqueue: warning: {check.message}", file=sys.stderr)
    return True


def serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from genqueue.http import run_app
    from genqueue.http.app import create_app
    from genqueue.log import setup_logging

    cfg = load_config(args.config, host=args.host, port=args.port, data_dir=args.data_dir)
    if cfg.dispatch == "sqs":
        from genqueue.cluster import check_cluster_config

        check_cluster_config(cfg)
    if not veo_model_served(cfg):
        return EXIT_CANNOT_SERVE
    try:
        with listen(cfg.host, cfg.port) as sock:
            cfg = ensure_api_keys(cfg)
            setup_logging(cfg.log_level, secrets=secret_values(cfg))
            app = create_app(cfg)

            async def announce(_: web.Application) -> None:
                # After the cleanup context opened the queue (and so took the data directory):
                # a refused start never says "serving on".
                url = f"http://{cfg.host}:{cfg.port}"
                say(f"genqueue serving on {url} (data in {cfg.data_dir})")

            app.on_startup.append(announce)
            # SIGTERM and SIGINT end run_app gracefully; it returns once all is closed.
            run_app(
                app,
                sock,
                shutdown_timeout_s=10,
                max_connections=cfg.max_connections,
                header_timeout_s=cfg.header_timeout_s,
            )
    except CannotServe as exc:
        say(f"genqueue: {exc}", file=sys.stderr)
        return EXIT_CANNOT_SERVE
    except DataDirInUse as exc:  # JobQueue.open() holds the one lock per data directory
        holder = f" (held by pid {exc.pid})" if exc.pid is not None else ""
        say(
            f"genqueue: another genqueue server is using the data directory {exc.data_dir}{holder}",
            file=sys.stderr,
        )
        return EXIT_CANNOT_SERVE
    say("genqueue stopped")
    return EXIT_OK


def worker(args: argparse.Namespace) -> int:
    """A generation worker for `GENQUEUE_DISPATCH=sqs`, until SIGTERM or SIGINT."""
    import signal

    from genqueue.cluster import check_cluster_config
    from genqueue.cluster.worker import Worker
    from genqueue.log import setup_logging

    cfg = load_config(args.config)
    check_cluster_config(cfg)
    if not veo_model_served(cfg):
        return EXIT_CANNOT_SERVE
    if args.concurrency is not None and args.concurrency < 1:
        raise ConfigError(f"--concurrency: must be 1 or more, got {args.concurrency}")
    setup_logging(cfg.log_level, secrets=secret_values(cfg))

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        w = Worker(cfg, concurrency=args.concurrency)
        print(f"genqueue worker {w.id}: {w.concurrency} slots", flush=True)
        await w.run(stop)

    asyncio.run(run())
    print("genqueue worker stopped", flush=True)
    return EXIT_OK


# -- client commands --------------------------------------------------------------------------


class ClientError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _client_settings(args: argparse.Namespace) -> tuple[str, str]:
    cfg = load_config(args.config, data_dir=args.data_dir)
    url = os.environ.get("GENQUEUE_URL") or f"http://{cfg.host}:{cfg.port}"
    try:
        parsed = URL(url)
        valid = parsed.scheme in ("http", "https") and bool(parsed.host)
    except ValueError:
        valid = False
    if not valid:
        raise ClientError(f"GENQUEUE_URL is not an http(s) URL: {url!r}", EXIT_USAGE)
    key = os.environ.get("GENQUEUE_KEY", "").strip()
    key_file = Path(cfg.data_dir) / KEY_FILE
    if not key and key_file.is_file():
        key = key_file.read_text().strip()
    return url.rstrip("/"), key


@contextlib.asynccontextmanager
async def _client(args: argparse.Namespace) -> AsyncIterator[AsyncClient]:
    """The HTTP client (JobQueue's methods); its errors become the CLI's exit codes."""
    url, key = _client_settings(args)
    try:
        async with AsyncClient(url, key) as client:
            yield client
    except Unauthorized as exc:
        if exc.status == 403:  # a known key that may not do this: a usage error
            raise ClientError(f"error 403: {exc}", EXIT_USAGE) from exc
        hint = "set GENQUEUE_KEY" if key else "no API key: set GENQUEUE_KEY"
        raise ClientError(f"{exc} ({hint})", EXIT_AUTH) from exc
    except InvalidRequest as exc:  # refused here or by the server
        field = f" (field {exc.field})" if exc.field else ""
        raise ClientError(f"error {exc.status or 400}: {exc.message}{field}", EXIT_USAGE) from exc
    except GenqueueError as exc:
        if exc.status is None or exc.status >= 500:  # unreachable, unavailable, a server error
            raise ClientError(str(exc), EXIT_UNREACHABLE) from exc
        raise ClientError(f"error {exc.status}: {exc}", EXIT_USAGE) from exc


class Progress:
    """`submit --wait`'s progress: a bar redrawn in place on a terminal, else a line per change."""

    def __init__(self, out: IO[str]):
        self.out = out
        self.tty = out.isatty()
        self.last: tuple[str, int] | None = None

    def show(self, status: str, progress: int) -> None:
        if (status, progress) == self.last:
            return
        self.last = (status, progress)
        bar = "#" * (max(0, min(progress, 100)) // 5)
        line = safe(f"[{bar:<20}] {progress:3d}% {status:<10}")
        if self.tty:
            self.out.write("\r" + line)
        else:
            self.out.write(line.rstrip() + "\n")
        self.out.flush()

    def end(self) -> None:
        if self.tty and self.last is not None:
            self.out.write("\n")
            self.out.flush()


async def _submit(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "prompt": args.prompt,
        "priority": args.priority,
        "parameters": {"duration": args.duration, "aspectRatio": args.aspect_ratio},
    }
    async with _client(args) as client:
        job, _ = await client.asubmit(body)
        say(f"submitted {job.id} ({job.status})")
        if not args.wait:
            return EXIT_OK
        progress = Progress(sys.stdout)
        try:
            while not job.terminal:
                progress.show(job.status, job.progress)
                await asyncio.sleep(POLL_S)
                job = await client.aget(job.id)
            progress.show(job.status, job.progress)
        finally:
            progress.end()
    if job.status == "completed" and job.result is not None:
        say(job.result.video_url)
        return EXIT_OK
    say(f"job {job.id} {job.status}: {job.error}", file=sys.stderr)
    return EXIT_JOB_FAILED


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value == value else "nan"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


async def _status(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        st: dict[str, Any] = msgspec.to_builtins(await client.astatus())
    width = max(len(k) for k in st)
    for k, v in st.items():
        say(f"{k:<{width}}  {_shown(v)}")
    return EXIT_OK


async def _jobs(args: argparse.Namespace) -> int:
    statuses = args.status.split(",") if args.status else None
    async with _client(args) as client:
        page = await client.alist_jobs(statuses=statuses, limit=args.limit)
    say(f"{'id':<34} {'status':<11} {'progress':>8}  prompt")
    for job in page.items:
        prompt = " ".join(job.prompt.split())[:40]
        say(f"{job.id:<34} {job.status:<11} {job.progress:>7}%  {prompt}")
    if page.next_cursor:
        say(f"(the newest {len(page.items)}; --limit shows up to 100)")
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
    jp = sub.choices["jobs"]
    jp.add_argument("--status", help="comma-separated: queued, processing, completed, ...")
    jp.add_argument("--limit", type=int, default=20, help="how many, newest first (1-100)")
    w = sub.add_parser("worker", help="run a generation worker (GENQUEUE_DISPATCH=sqs)")
    w.add_argument("--concurrency", type=int, help="jobs at once (GENQUEUE_WORKER_CONCURRENCY)")
    w.add_argument("--config", help="a TOML file")
    f = sub.add_parser("fake-veo", help="run the fake Veo server")
    f.add_argument("--host", default="127.0.0.1")
    f.add_argument("--port", type=int, default=8788)
    f.add_argument("--latency-s", type=float, default=3.0)
    f.add_argument("--video-size", type=int, default=256 * 1024, help="bytes per video")
    f.add_argument("--api-key", help="require this x-goog-api-key (default: any)")
    f.add_argument("--vertex-api-key", help="require this key in Vertex express mode")
    f.add_argument(
        "--google-models",
        action="store_true",
        help="serve on each door exactly the models Google serves there (404 for the rest)",
    )
    f.add_argument(
        "--service-account-key",
        type=Path,
        help="serve POST /token and write a service-account key file for it at this path",
    )
    f.add_argument("--token-lifetime-s", type=float, default=3600.0, help="issued tokens' life")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "worker":
            return worker(args)
        if args.command == "fake-veo":
            from genqueue.providers.fake_veo import GOOGLE_MODELS, KNOWN_MODELS, serve_fake_veo

            try:
                serve_fake_veo(
                    args.host,
                    args.port,
                    latency_s=args.latency_s,
                    video_size=args.video_size,
                    api_key=args.api_key,
                    vertex_api_key=args.vertex_api_key,
                    models=GOOGLE_MODELS if args.google_models else KNOWN_MODELS,
                    service_account_key=args.service_account_key,
                    issuer_options={"lifetime_s": args.token_lifetime_s},
                )
            except OSError as exc:
                say(f"fake Veo: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
                return EXIT_CANNOT_SERVE
            return EXIT_OK
        run = {"submit": _submit, "status": _status, "jobs": _jobs}[args.command]
        return asyncio.run(run(args))
    except ConfigError as exc:
        say(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as exc:
        say(f"genqueue: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `main.py status | head`: the reader left; stay quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
