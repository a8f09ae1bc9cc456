"""Drive fal's official SDK (fal-client) against a queue host, print what happened as JSON.

Run in a subprocess: fal-client reads FAL_QUEUE_RUN_HOST when it is imported and always
speaks https:// to it (httpx trusts SSL_CERT_FILE). argv[1] is a JSON spec:
{"model", "arguments", "cancel": bool}. Output: {"request_id", "statuses", "result",
"video_bytes", "error": {"status", "detail", "error_type"}}.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import fal_client
import httpx


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    client = fal_client.AsyncClient()  # the key from FAL_KEY, as users run it
    out: dict[str, Any] = {"statuses": []}
    try:
        handle = await client.submit(spec["model"], arguments=spec["arguments"])
        out["request_id"] = handle.request_id
        if spec.get("cancel"):
            await handle.cancel()
        async for status in handle.iter_events(with_logs=True, interval=0.05):
            out["statuses"].append(type(status).__name__)
            if isinstance(status, fal_client.Completed):
                out["completed_error"] = status.error
                out["completed_error_type"] = status.error_type
        result = await handle.get()
        out["result"] = result
        async with httpx.AsyncClient() as http:  # the CDN URL needs no key
            video = await http.get(result["video"]["url"])
            video.raise_for_status()
            out["video_bytes"] = len(video.content)
    except fal_client.FalClientHTTPError as exc:
        out["error"] = {"status": exc.status_code, "detail": str(exc)}
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
