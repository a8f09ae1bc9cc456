"""The fake fal queue in its own process, over TLS (it outlives a `kill -9` of the server).

    python tests/fake_fal_child.py PORT CERT_FILE KEY_FILE FAL_KEY

Steered over HTTPS: `GET /_fake/state`, `POST /_fake/control {"hold": bool}`.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys

from genqueue.providers.fake_fal import FakeFalServer


async def main(port: int, cert: str, key: str, fal_key: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with FakeFalServer(port=port, ssl_context=context, key=fal_key, progress_polls=2):
        print(f"fake fal listening on {port}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]))
