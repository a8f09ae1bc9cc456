"""Google's own SDK (google-genai) drives a Veo endpoint through one generation.

Run as a script by tests/test_fake_veo_sdk.py, in whichever environment holds the SDK
version under test (the project's venv: 3.x for Vertex; a cached venv: 2.34.0 for the
Gemini API), so it imports nothing from genqueue. argv[1] is a JSON case:
`{"mode": "vertex" | "express" | "gemini", "base_url", "model", "prompt", "api_version"?,
"project"?, "location"?, "api_key"?, "ca_file"?, "config"?: {GenerateVideosConfig fields}}`.
Vertex credentials come from GOOGLE_APPLICATION_CREDENTIALS (a service-account key), as
Application Default Credentials do for a real deployment.

It does what Google's documentation shows: `client.models.generate_videos(model, source)`, then
`client.operations.get(operation)` until `operation.done`, then fetches each video
(`client.files.download` on the Gemini API; inline `video_bytes`, or the `gs://` object
through Cloud Storage's JSON API with the same credentials, on Vertex). It prints one JSON
object: the operation, what the SDK made of it, and the SHA-256 and size of each video, or
the SDK's exception (`code`, `status`, `message`, `details`).
"""

from __future__ import annotations

import hashlib
import json
import ssl
import sys
import urllib.parse
from typing import Any

from google import genai
from google.genai import errors, types

MAX_POLLS = 50


def make_client(case: dict[str, Any]) -> genai.Client:
    options: dict[str, Any] = {"base_url": case["base_url"]}
    if case.get("api_version"):
        options["api_version"] = case["api_version"]
    if case.get("ca_file"):
        options["client_args"] = {"verify": ssl.create_default_context(cafile=case["ca_file"])}
    http_options = types.HttpOptions(**options)
    if case["mode"] == "gemini":
        return genai.Client(api_key=case["api_key"], http_options=http_options)
    if case["mode"] == "express":
        return genai.Client(vertexai=True, api_key=case["api_key"], http_options=http_options)
    return genai.Client(
        vertexai=True,
        project=case["project"],
        location=case["location"],
        http_options=http_options,
    )


def fetch_gcs(client: genai.Client, case: dict[str, Any], uri: str) -> bytes:
    """A `gs://bucket/object` through the JSON API, with the client's own credentials."""
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    bucket, _, name = uri.removeprefix("gs://").partition("/")
    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    quoted = urllib.parse.quote(name, safe="")
    url = f"{case['base_url']}/storage/v1/b/{bucket}/o/{quoted}?alt=media"
    with AuthorizedSession(credentials) as session:
        resp = session.get(url, timeout=30)
        resp.raise_for_status()
        return bytes(resp.content)


def fetch(client: genai.Client, case: dict[str, Any], video: types.Video) -> bytes:
    if case["mode"] == "gemini":
        return bytes(client.files.download(file=video))
    if video.video_bytes is not None:
        return bytes(video.video_bytes)
    if video.uri and video.uri.startswith("gs://"):
        return fetch_gcs(client, case, video.uri)
    raise AssertionError(f"a Vertex video with neither bytes nor a gs:// URI: {video}")


def drive(case: dict[str, Any]) -> dict[str, Any]:
    client = make_client(case)
    config = types.GenerateVideosConfig(**case.get("config", {}))
    # `source=` is the current form (prompt= alone is deprecated since 3.x; 2.34.0 takes both).
    source = types.GenerateVideosSource(prompt=case["prompt"])
    operation = client.models.generate_videos(model=case["model"], source=source, config=config)
    started = operation.name
    polls = 0
    while not operation.done:
        if polls == MAX_POLLS:
            raise AssertionError(f"not done after {MAX_POLLS} polls")
        operation = client.operations.get(operation)
        polls += 1
    out: dict[str, Any] = {"name": started, "polls": polls, "done": True}
    if operation.error:
        out["error"] = operation.error
        return out
    response = operation.response
    assert response is not None and operation.result is not None
    out["raiMediaFilteredCount"] = response.rai_media_filtered_count
    out["raiMediaFilteredReasons"] = response.rai_media_filtered_reasons
    videos = []
    for generated in response.generated_videos or []:
        video = generated.video
        assert video is not None
        data = fetch(client, case, video)
        videos.append(
            {
                "uri": video.uri,
                "mimeType": video.mime_type,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    out["videos"] = videos
    return out


def main() -> None:
    case = json.loads(sys.argv[1])
    try:
        result = drive(case)
    except errors.APIError as exc:
        result = {
            "exception": {
                "type": type(exc).__name__,
                "code": exc.code,
                "status": exc.status,
                "message": exc.message,
                "details": exc.details,
            }
        }
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
