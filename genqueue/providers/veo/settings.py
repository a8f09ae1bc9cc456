"""Which Veo door, host, model and credentials a Config means: resolved once, in one place.

- The door (`VEO3_DIALECT`): as set, else `vertex` when a Vertex project is known
  (`VERTEX_PROJECT`, a `VERTEX_ACCESS_TOKEN`, or the `project_id` of the service-account key
  in `GOOGLE_APPLICATION_CREDENTIALS`), else `gemini`. With `VEO3_DIALECT=vertex` and no
  project, gcloud's `application_default_credentials.json` may name it (`quota_project_id`).
  The metadata server is never probed to choose a door: a `serve` with no settings must
  start at once on the built-in fake.
- The host: `VEO3_BASE_URL`, else `https://generativelanguage.googleapis.com` (Gemini),
  `https://{VERTEX_LOCATION}-aiplatform.googleapis.com`, or `https://aiplatform.googleapis.com`
  for the `global` location and for Vertex express mode. google-genai's `_api_client.py`
  builds the same hosts (`f'https://{self.location}-aiplatform.googleapis.com/'`, and
  `'https://aiplatform.googleapis.com/'` when `(api_key and not location) or location ==
  'global'`).
- Vertex express mode: `VEO3_DIALECT=vertex` with a `VEO3_API_KEY` and no project. Calls go to
  `{host}/v1/publishers/google/models/{m}:predictLongRunning` with `x-goog-api-key`, as
  google-genai sends them for `Client(vertexai=True, api_key=...)` (no `projects/…` prefix
  when neither project nor location is set).
- The model: `VEO3_MODEL`, else the door's default; `VEO3_MODELS` lists what a request may
  choose (the default model is always allowed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec

from genqueue.config import Config
from genqueue.errors import ConfigError
from genqueue.providers.veo.capabilities import Dialect

__all__ = [
    "GEMINI_BASE_URL",
    "GEMINI_DEFAULT_MODEL",
    "VERTEX_DEFAULT_MODEL",
    "VeoSettings",
    "adc_project",
    "resolve",
    "vertex_base_url",
]

GEMINI_BASE_URL = "https://generativelanguage.googleapis.com"
# Google retires ids on the Gemini API (the 3.0 ids went on 2026-06-30) and serves the "-001"
# ids only on Vertex (the Gemini API answers 404 "models/veo-3.1-generate-001 is not found for
# API version v1beta"), so each door has its own default; `serve` checks it at start.
GEMINI_DEFAULT_MODEL = "veo-3.1-generate-preview"
VERTEX_DEFAULT_MODEL = "veo-3.1-generate-001"


class VeoSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The resolved Veo settings (secrets included: never log this)."""

    dialect: Dialect
    base_url: str
    model: str
    models: tuple[str, ...]
    api_key: str | None = None
    access_token: str | None = None  # a fixed token (VERTEX_ACCESS_TOKEN)
    project: str | None = None
    location: str = "us-central1"
    credentials_file: str | None = None
    output_gcs_uri: str | None = None
    fake: bool = False  # no credentials at all: the built-in fake serves
    # The host follows the location (Vertex with a project, no VEO3_BASE_URL): an operation
    # is polled at its own location's host (`vertex_base_url`), whatever VERTEX_LOCATION is now.
    location_hosts: bool = False

    @property
    def express(self) -> bool:
        """Vertex with an API key and no project (Vertex AI express mode)."""
        return self.dialect == "vertex" and not self.project and bool(self.api_key)

    def __repr__(self) -> str:  # never shows the key or the token
        return (
            f"VeoSettings(dialect={self.dialect!r}, base_url={self.base_url!r},"
            f" model={self.model!r})"
        )


def vertex_base_url(location: str) -> str:
    if location == "global":
        return "https://aiplatform.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


def adc_project(credentials_file: str | None) -> str | None:
    """The project an ADC file names, read without a network call (None when none does)."""
    path = credentials_file or _gcloud_adc_path()
    if not path:
        return None
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    project = info.get("project_id") or info.get("quota_project_id")
    return str(project) if project else None


def _gcloud_adc_path() -> str | None:
    root = os.environ.get("CLOUDSDK_CONFIG") or str(Path.home() / ".config" / "gcloud")
    path = Path(root) / "application_default_credentials.json"
    return str(path) if path.is_file() else None


def resolve(cfg: Config) -> VeoSettings:
    """The door, host, model and credentials `cfg` means; ConfigError names a bad key."""
    api_key = cfg.veo3_api_key.strip() or None
    token = cfg.vertex_access_token.strip() or None
    creds_file = cfg.google_application_credentials or None
    project = cfg.vertex_project or None
    dialect: Dialect
    if cfg.veo3_dialect:
        dialect = cfg.veo3_dialect
    elif project or token:
        dialect = "vertex"
    elif api_key:
        dialect = "gemini"
    else:
        # Only an ADC file set for this process chooses Vertex: gcloud's own file on a
        # developer's machine must not turn the no-settings start (the fake) into paid calls.
        dialect = "vertex" if creds_file and adc_project(creds_file) else "gemini"
    if dialect == "vertex" and not project and not api_key:
        project = adc_project(creds_file)
        if not project:
            raise ConfigError(
                "VERTEX_PROJECT: the vertex door needs a project (or VEO3_API_KEY for "
                "Vertex express mode)"
            )
    fake = dialect == "gemini" and not api_key
    default_model = GEMINI_DEFAULT_MODEL if dialect == "gemini" else VERTEX_DEFAULT_MODEL
    model = cfg.veo3_model.strip() or default_model
    models = _models(model, cfg.veo3_models)
    if cfg.veo3_base_url:
        base_url = cfg.veo3_base_url.rstrip("/")
    elif dialect == "gemini":
        base_url = GEMINI_BASE_URL
    else:
        location = "global" if project is None else cfg.vertex_location
        base_url = vertex_base_url(location)
    gcs = cfg.vertex_output_gcs_uri.strip() or None
    if gcs is not None and (dialect != "vertex" or not gcs.startswith("gs://")):
        raise ConfigError(
            "VERTEX_OUTPUT_GCS_URI: must be a gs://bucket/prefix URI, used on the vertex door"
        )
    return VeoSettings(
        dialect=dialect,
        base_url=base_url,
        model=model,
        models=models,
        api_key=api_key,
        access_token=token,
        project=project,
        location=cfg.vertex_location,
        credentials_file=creds_file,
        output_gcs_uri=gcs,
        fake=fake,
        location_hosts=dialect == "vertex" and project is not None and not cfg.veo3_base_url,
    )


def _models(model: str, listed: str) -> tuple[str, ...]:
    models = [model]
    for name in (m.strip() for m in listed.split(",")):
        if name and name not in models:
            models.append(name)
    for name in models:
        if "/" in name or not name.isprintable() or any(c.isspace() for c in name):
            raise ConfigError(f"VEO3_MODELS: {name!r} is not a model id")
    return tuple(models)
