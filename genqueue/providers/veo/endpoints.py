"""Where each Veo call goes and what a start sends: the request side of the two doors.

- "gemini": the Gemini API, `{base}/v1beta/models/{m}:predictLongRunning`, polled with
  `GET {base}/v1beta/{operation}`;
- "vertex": Vertex AI, `{base}/v1/projects/{p}/locations/{l}/publishers/google/models/{m}
  :predictLongRunning` (express mode: `{base}/v1/publishers/google/models/{m}:…` with an API
  key), polled with `POST {base}/v1/{model resource}:fetchPredictOperation` and
  `{"operationName": name}` as google-genai's `operations.py` does.

The model is one escaped path segment (never a path: `../../v1beta/files` stays inside its
segment). A `gs://` result is fetched from Cloud Storage's JSON API.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from yarl import URL

from genqueue.errors import InvalidRequest, ProviderError
from genqueue.providers.veo.shapes import Image, VideoParams

__all__ = ["Door", "fetchable", "model_segment"]

_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
_LOCATION = re.compile(r"^projects/[^/?#]+/locations/([a-z0-9][a-z0-9-]{0,62})/")


def model_segment(model: str) -> str:
    """The model as one URL path segment; InvalidRequest for what is not a model id."""
    if not _MODEL_ID.fullmatch(model) or model.strip(".") == "":
        raise InvalidRequest(f"{model[:80]!r} is not a Veo model id", field="model")
    return quote(model, safe="")


@dataclass(frozen=True)
class Door:
    """One door's URLs and bodies. `host_for_location`: the API host of a Vertex location
    (given when the host follows VERTEX_LOCATION, i.e. no VEO3_BASE_URL)."""

    base: str
    dialect: Literal["gemini", "vertex"]
    project: str | None
    location: str
    output_gcs_uri: str | None = None
    host_for_location: Callable[[str], str] | None = None

    def model_url(self, segment: str, method: str) -> str:
        if self.dialect == "gemini":
            return f"{self.base}/v1beta/models/{segment}:{method}"
        if not self.project:  # express mode
            return f"{self.base}/v1/publishers/google/models/{segment}:{method}"
        project, location = quote(self.project, safe=""), quote(self.location, safe="")
        return (
            f"{self.base}/v1/projects/{project}/locations/{location}"
            f"/publishers/google/models/{segment}:{method}"
        )

    def check_url(self, segment: str) -> str:
        """Gemini: `GET /v1beta/models/{m}`; Vertex: the publisher-model read google-genai's
        `models.get` makes (its `_api_client` skips the `projects/…` prefix there)."""
        if self.dialect == "gemini":
            return f"{self.base}/v1beta/models/{segment}"
        return f"{self.base}/v1beta1/publishers/google/models/{segment}"

    def poll_request(self, name: str) -> tuple[str, str, dict[str, Any] | None]:
        """The method, URL and body that read the operation `name`."""
        if self.dialect == "gemini":
            return "GET", f"{self.base}/v1beta/{name}", None
        model_resource = name.partition("/operations/")[0]
        url = f"{self._poll_base(name)}/v1/{model_resource}:fetchPredictOperation"
        return "POST", url, {"operationName": name}

    def _poll_base(self, name: str) -> str:
        """The host that knows the operation `name`: its own location's, when hosts follow
        the location (a restart with another VERTEX_LOCATION does not change it); else the
        configured base URL."""
        found = _LOCATION.match(name)
        if self.host_for_location is None or found is None or found[1] == self.location:
            return self.base
        return self.host_for_location(found[1]).rstrip("/")

    def start_body(self, prompt: str, params: VideoParams) -> dict[str, Any]:
        return {"instances": [_instance(prompt, params)], "parameters": self._parameters(params)}

    def _parameters(self, params: VideoParams) -> dict[str, Any]:
        """Only what this door takes: the capability table refused the rest at submit, and a
        parameter the door does not take is refused here too, never silently dropped."""
        out: dict[str, Any] = {
            "aspectRatio": params.aspect_ratio,
            "resolution": params.resolution,
            "durationSeconds": params.duration,
            "negativePrompt": params.negative_prompt,
            "personGeneration": params.person_generation,
            "sampleCount": params.sample_count,
        }
        if self.dialect == "vertex":
            # Vertex documents generateAudio as required for Veo 3 models.
            out["generateAudio"] = True if params.generate_audio is None else params.generate_audio
            out["seed"] = params.seed
            out["storageUri"] = self.output_gcs_uri
        else:
            for name, value in (("seed", params.seed), ("generateAudio", params.generate_audio)):
                if value is not None:  # google-genai: "… parameter is not supported in Gemini API."
                    raise InvalidRequest(
                        f"{name} is not supported on the Gemini API", field=f"parameters.{name}"
                    )
        return {key: value for key, value in out.items() if value is not None}


def _instance(prompt: str, params: VideoParams) -> dict[str, Any]:
    instance: dict[str, Any] = {"prompt": prompt}
    if params.image is not None:
        instance["image"] = _image(params.image)
    if params.last_frame is not None:
        instance["lastFrame"] = _image(params.last_frame)
    if params.reference_images:
        instance["referenceImages"] = [
            {"image": _image(im), "referenceType": "asset"} for im in params.reference_images
        ]
    return instance


def _image(image: Image) -> dict[str, str]:
    return {"bytesBase64Encoded": image.data_b64, "mimeType": image.mime_type}


def fetchable(uri: str | None, gcs_base: str) -> URL:
    """The http(s) URL of a video URI; `gs://bucket/object` maps to the GCS JSON API
    (`/storage/v1/b/{bucket}/o/{object}?alt=media`, the object name escaped whole)."""
    if not uri:
        raise ProviderError("the video has neither a URI nor inline bytes", retryable=False)
    if uri.startswith("gs://"):
        bucket, _, obj = uri.removeprefix("gs://").partition("/")
        if not bucket or not obj:
            raise ProviderError(f"not a gs://bucket/object URI: {uri!r}", retryable=False)
        path = f"/storage/v1/b/{quote(bucket, safe='')}/o/{quote(obj, safe='')}"
        return URL(f"{gcs_base}{path}?alt=media", encoded=True)
    url = URL(uri)
    if url.scheme not in ("http", "https"):
        raise ProviderError(f"cannot download a {url.scheme!r} URI", retryable=False)
    return url
