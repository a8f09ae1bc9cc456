"""The data that crosses boundaries: requests, jobs, results, queue status (msgspec Structs).

Stored records evolve by adding fields with defaults; a field's type never changes.
"""

from __future__ import annotations

import binascii
import re
from typing import Annotated, Any, Literal, NamedTuple, NoReturn

import msgspec
from msgspec import Meta

from genqueue.errors import InvalidRequest

__all__ = [
    "ID_CHARS",
    "JOB_ID",
    "JOB_ID_PATTERN",
    "MAX_IMAGES_BYTES",
    "MAX_IMAGE_BYTES",
    "MAX_NAME_CHARS",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "NAME_PATTERN",
    "PROVIDERS",
    "TERMINAL",
    "GenerationParams",
    "GenerationRequest",
    "ImageInput",
    "Job",
    "JobPage",
    "JobResult",
    "JobStatus",
    "QueueStatus",
    "Route",
    "Submission",
    "VideoOutput",
    "validate_request",
]

JobStatus = Literal["queued", "processing", "retry_wait", "completed", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

MAX_PROMPT_CHARS = 4000
MAX_SEED = 2**32 - 1  # Veo's seed is a uint32
MAX_FALLBACK = 3  # providers in one fallback list
MAX_NAME_CHARS = 128  # `model` and `provider`: names, not documents
# the providers a request may name ("veo" is "veo3"); which this server offers: GET /api/providers
PROVIDERS: tuple[str, ...] = ("veo3", "veo", "fal")
# The id alphabet, written once: job ids (a client may choose one; not made only of dots:
# "." and ".." are path segments, not names), and user ids and path segments, which may
# not start with '.' (they become folder names).
ID_CHARS = r"[A-Za-z0-9._:\-]"
JOB_ID_PATTERN = rf"^(?!\.+$){ID_CHARS}{{1,128}}$"  # as JSON Schema (OpenAPI) spells it too
JOB_ID = re.compile(JOB_ID_PATTERN)
NAME_PATTERN = rf"[A-Za-z0-9_:\-]{ID_CHARS}{{0,127}}"
# C0 control characters a text may not hold: all but \t and \n (ESC, BEL, NUL, CR, ...).
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f]")
# Whitespace as JSON Schema's (ECMA-262) `\S` sees it, so the API and its OpenAPI agree on
# "blank" (Python's str.strip() also strips the \x1c-\x1f separators).
_BLANK = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)


# Images travel inline as base64 (Veo's own `{bytesBase64Encoded, mimeType}`). Each may be
# up to 4 MiB decoded (a 1080p JPEG or PNG frame is far less), all of a request's images
# together 10 MiB: the HTTP body limit (genqueue.http.MAX_BODY_BYTES) is sized to fit them.
MAX_IMAGE_BYTES = 4 * 1024 * 1024
MAX_IMAGES_BYTES = 10 * 1024 * 1024
MAX_IMAGE_B64_CHARS = 4 * ((MAX_IMAGE_BYTES + 2) // 3)
MAX_REFERENCE_IMAGES = 3
ImageMime = Literal["image/jpeg", "image/png", "image/webp"]
PersonGeneration = Literal["allow_all", "allow_adult", "dont_allow"]


class ImageInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True):
    """An input image: `{bytesBase64Encoded, mimeType}`."""

    bytes_base64_encoded: Annotated[str, msgspec.Meta(min_length=4, max_length=MAX_IMAGE_B64_CHARS)]
    mime_type: ImageMime


class GenerationParams(
    msgspec.Struct, rename="camel", omit_defaults=True, forbid_unknown_fields=True
):
    """Video parameters as the API takes them (which of them a model takes: the provider's
    capability table, genqueue.providers.veo.capabilities)."""

    duration: int = 8
    aspect_ratio: str = "16:9"
    resolution: str = "720p"
    negative_prompt: str | None = None
    seed: int | None = None
    image: ImageInput | None = None  # the first frame
    last_frame: ImageInput | None = None
    reference_images: (
        Annotated[list[ImageInput], msgspec.Meta(max_length=MAX_REFERENCE_IMAGES)] | None
    ) = None
    sample_count: Annotated[int, msgspec.Meta(ge=1, le=4)] = 1
    generate_audio: bool | None = None
    person_generation: PersonGeneration | None = None

    def images(self) -> list[tuple[str, ImageInput]]:
        """Every input image with the name of its field."""
        named = [("parameters.image", self.image), ("parameters.lastFrame", self.last_frame)]
        named += [
            (f"parameters.referenceImages[{i}]", im)
            for i, im in enumerate(self.reference_images or [])
        ]
        return [(field, image) for field, image in named if image is not None]


Name = Annotated[str, Meta(max_length=MAX_NAME_CHARS)]


class GenerationRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """`POST /api/generations` and `JobQueue.submit`."""

    prompt: str
    id: str | None = None
    parameters: GenerationParams = msgspec.field(default_factory=GenerationParams)
    # which provider runs the job (GET /api/providers lists those this server offers)
    # one provider, or an ordered list to fall back along when one is paused (each then
    # runs its default model: `model` must be absent)
    provider: Name | Annotated[list[Name], Meta(min_length=1, max_length=MAX_FALLBACK)] = "veo3"
    model: Name | None = None
    priority: int = 0


class Route(msgspec.Struct, frozen=True, rename="camel"):
    """One provider a job may run on, with the model it would use there."""

    provider: str
    model: str
    cost: float = 0.0  # one paid start there


class VideoOutput(msgspec.Struct, rename="camel", omit_defaults=True):
    """One of a generation's videos (`sampleCount` > 1 makes several)."""

    video_url: str
    key: str | None = None  # where the store keeps it (URLs are re-signed from it)


class JobResult(msgspec.Struct, rename="camel", omit_defaults=True):
    """What a finished generation produced; `video_url` is the first of `videos`."""

    video_url: str
    duration: float | None = None
    processing_time: float | None = None
    # Where the video store keeps it (retention deletes it with the job), and whether this
    # server serves it only at signed, expiring URLs (the local store): then `video_url`
    # is stored unsigned and signed afresh whenever the job is read.
    video_key: str | None = None
    private: bool = False
    # every video, when the generation made several (`sampleCount`); the first is video_url
    videos: list[VideoOutput] | None = None


class Job(msgspec.Struct, rename="camel", omit_defaults=True):
    """A job record (owned by its JobActor). Times are Unix seconds."""

    id: str
    generation_id: str
    user_id: str
    prompt: str
    parameters: GenerationParams
    provider: str
    model: str | None
    priority: int
    created_at: float
    updated_at: float
    status: JobStatus = "queued"
    progress: int = 0
    attempts: int = 0
    seq: int = 0
    queue_position: int | None = None
    result: JobResult | None = None
    error: str | None = None
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    checkpoint: Any = None
    # the providers the job may run on, in the caller's order (None: `provider` alone)
    routes: list[Route] | None = None
    # one paid start's price (seconds x videos x the model's price a second), set at submit
    estimated_cost: float = 0.0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class JobPage(msgspec.Struct):
    """One page of `list_jobs`, newest first; pass `next_cursor` back while it is not None."""

    items: list[Job]
    next_cursor: str | None


class Submission(NamedTuple):
    """What `submit` returns: the job, and False for a known client-chosen id (then the job
    is the one stored under that id, unchanged)."""

    job: Job
    created: bool


class QueueStatus(msgspec.Struct, rename="camel"):
    """The plan's queue metrics, as `GET /api/queue/status` shows them."""

    dispatch: str
    queued: int
    queued_by_priority: dict[str, int]
    in_flight: int
    retry_wait: int
    max_concurrency: int
    oldest_wait_s: float | None
    avg_wait_s: float | None
    p95_wait_s: float | None
    avg_processing_s: float | None
    p95_processing_s: float | None
    processed_per_minute: int
    failed_per_minute: int
    submitted: int
    completed: int
    failed: int
    cancelled: int
    retried: int
    success_rate: float | None
    failure_rate: float | None
    retry_rate: float | None
    rate_limit_hits: int
    paused_until: float | None
    # why dispatch is paused: "rate_limit" (a per-minute 429) or "quota" (a daily quota)
    paused_reason: str | None = None
    quota_pauses: int = 0
    provider: dict[str, Any] = msgspec.field(default_factory=dict)
    webhooks: dict[str, Any] = msgspec.field(default_factory=dict)
    # paid starts x seconds x price: `total`, `byProvider`, `byUserToday`, `inFlight`
    spend: dict[str, Any] = msgspec.field(default_factory=dict)
    # each provider's own gate: inFlight, maxConcurrency, rateLimitPerMinute, pausedUntil
    providers: dict[str, Any] = msgspec.field(default_factory=dict)
    # dispatch = "sqs": workers, SQS depths, the dead-letter count (genqueue/cluster/)
    cluster: dict[str, Any] | None = None


def _fail(field: str, message: str) -> NoReturn:
    raise InvalidRequest(message, field=field)


def validate_request(req: GenerationRequest) -> None:
    """Check what msgspec's types cannot: ranges, enums and cross-field rules."""
    if not req.prompt.strip(_BLANK):
        _fail("prompt", "prompt must not be blank")
    if len(req.prompt) > MAX_PROMPT_CHARS:
        _fail("prompt", f"prompt is {len(req.prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    _check_text("prompt", req.prompt)
    if req.id is not None and not JOB_ID.fullmatch(req.id):
        _fail("id", ID_RULE)
    for name in [req.provider] if isinstance(req.provider, str) else req.provider:
        if name not in PROVIDERS:
            _fail("provider", f"provider must be one of {', '.join(PROVIDERS)}")
    if isinstance(req.provider, list) and len(req.provider) > 1 and req.model is not None:
        _fail("model", "a fallback list of providers runs each one's default model: omit model")
    if not 0 <= req.priority <= 10:
        _fail("priority", f"priority must be an integer from 0 to 10, got {req.priority}")
    p = req.parameters
    if p.duration not in (4, 6, 8):
        _fail("parameters.duration", f"duration must be 4, 6 or 8 seconds, got {p.duration}")
    if p.aspect_ratio not in ("16:9", "9:16"):
        _fail("parameters.aspectRatio", f"aspectRatio must be 16:9 or 9:16, got {p.aspect_ratio!r}")
    if p.resolution not in ("720p", "1080p", "4k"):
        _fail(
            "parameters.resolution", f"resolution must be 720p, 1080p or 4k, got {p.resolution!r}"
        )
    if p.resolution in ("1080p", "4k") and p.duration != 8:
        _fail("parameters.resolution", f"resolution {p.resolution} needs duration 8")
    if p.seed is not None and not 0 <= p.seed <= MAX_SEED:
        _fail("parameters.seed", f"seed must be an integer from 0 to {MAX_SEED}")
    if p.negative_prompt is not None:
        if len(p.negative_prompt) > MAX_PROMPT_CHARS:
            _fail("parameters.negativePrompt", "negativePrompt is too long")
        _check_text("parameters.negativePrompt", p.negative_prompt)
    _check_images(p)


def _check_images(p: GenerationParams) -> None:
    total = 0
    for field, image in p.images():
        try:
            size = len(binascii.a2b_base64(image.bytes_base64_encoded, strict_mode=True))
        except (binascii.Error, ValueError):
            _fail(f"{field}.bytesBase64Encoded", "bytesBase64Encoded is not valid base64")
        if size > MAX_IMAGE_BYTES:
            _fail(field, f"an image may be {MAX_IMAGE_BYTES} bytes at most, got {size}")
        total += size
    if total > MAX_IMAGES_BYTES:
        _fail("parameters", f"the images total {total} bytes; the limit is {MAX_IMAGES_BYTES}")


ID_RULE = "id must be 1-128 of letters, digits, '-', '_', '.', ':', not only dots"


def _check_text(field: str, text: str) -> None:
    bad = CONTROL_CHARS.search(text)
    if bad is not None:
        name = field.rsplit(".", 1)[-1]
        _fail(
            field,
            f"{name} holds the control character U+{ord(bad.group()):04X} "
            "(only tab and newline are allowed)",
        )
