"""The data that crosses boundaries: requests, jobs, results, queue status (msgspec Structs).

Stored records evolve by adding fields with defaults; a field's type never changes.

Requests, jobs and their parts are data only (no field ever refers back to the struct that
holds it), so they are built with `gc=False`: the cyclic garbage collector does not track
them (msgspec's "Disabling Garbage Collection"). A drain makes several per job, and they
were a sixth of what triggered the collector's passes.
"""

from __future__ import annotations

import binascii
from typing import Annotated, Any, Literal, NamedTuple, NoReturn, get_args

import msgspec
from msgspec import Meta

from genqueue.convert import Refused, convert
from genqueue.errors import InvalidRequest
from genqueue.ids import ID_CHARS, JOB_ID, JOB_ID_PATTERN, NAME_PATTERN

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
    "PROMPT_PATTERN",
    "PROVIDERS",
    "TERMINAL",
    "TEXT_PATTERN",
    "AspectRatio",
    "Duration",
    "GenerationParams",
    "GenerationRequest",
    "ImageInput",
    "Job",
    "JobId",
    "JobPage",
    "JobResult",
    "JobStatus",
    "Priority",
    "Prompt",
    "ProviderName",
    "QueueStatus",
    "Resolution",
    "Route",
    "Seed",
    "Submission",
    "Text",
    "VideoOutput",
    "check_across_fields",
    "validate_request",
]

JobStatus = Literal["queued", "processing", "retry_wait", "completed", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

MAX_PROMPT_CHARS = 4000
MAX_SEED = 2**32 - 1  # Veo's seed is a uint32
MAX_FALLBACK = 3  # providers in one fallback list
MAX_NAME_CHARS = 128  # `model`: a name, not a document
# the providers a request may name ("veo" is "veo3"); which this server offers: GET /api/providers
ProviderName = Literal["veo3", "veo", "fal"]
PROVIDERS: tuple[str, ...] = get_args(ProviderName)
# Texts (the ranges in ECMA-262 and Python `re` syntax alike): no C0 control character but
# tab and newline (ESC, BEL, NUL, CR, ...); a prompt also holds something not blank, where
# blank is whitespace as JSON Schema's `\s` sees it (Python's `\s` differs at the edges).
_CONTROL = r"\u0000-\u0008\u000b-\u001f"
_BLANK = r"\t\n \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
# one pass, no backtracking: leading blanks, one character that is not, then the rest
PROMPT_PATTERN = rf"^[{_BLANK}]*[^{_BLANK}\u0000-\u001f][^{_CONTROL}]*$"
TEXT_PATTERN = rf"^[^{_CONTROL}]*$"


# Images travel inline as base64 (Veo's own `{bytesBase64Encoded, mimeType}`). Each may be
# up to 4 MiB decoded (a 1080p JPEG or PNG frame is far less), all of a request's images
# together 10 MiB: the HTTP body limit (genqueue.http.MAX_BODY_BYTES) is sized to fit them.
MAX_IMAGE_BYTES = 4 * 1024 * 1024
MAX_IMAGES_BYTES = 10 * 1024 * 1024
MAX_IMAGE_B64_CHARS = 4 * ((MAX_IMAGE_BYTES + 2) // 3)
MAX_REFERENCE_IMAGES = 3
# Canonical base64 (what binascii's strict mode takes): groups of 4, padding only at the end.
# The schema shows it; binascii checks it (a regex takes 25x as long over 4 MiB).
_BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"

Prompt = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        pattern=PROMPT_PATTERN,
        description="1-4,000 characters, not blank; no control characters but tab and newline",
    ),
]
Text = Annotated[
    str,
    Meta(
        max_length=MAX_PROMPT_CHARS,
        pattern=TEXT_PATTERN,
        description="at most 4,000 characters; no control characters but tab and newline",
    ),
]
JobId = Annotated[
    str,
    Meta(
        pattern=JOB_ID_PATTERN,
        description="1-128 of letters, digits, '-', '_', '.', ':', not only dots",
    ),
]
Priority = Annotated[int, Meta(ge=0, le=10, description="higher starts first")]
Duration = Literal[4, 6, 8]  # seconds; which a model makes: its capability row
AspectRatio = Literal["16:9", "9:16"]
Resolution = Annotated[
    Literal["720p", "1080p", "4k"],
    Meta(description="1080p and 4k need duration 8; which a model makes: its capability row"),
]
Seed = Annotated[int, Meta(ge=0, le=MAX_SEED)]
SampleCount = Annotated[int, Meta(ge=1, le=4)]
Name = Annotated[str, Meta(max_length=MAX_NAME_CHARS)]
ImageMime = Literal["image/jpeg", "image/png", "image/webp"]
PersonGeneration = Literal["allow_all", "allow_adult", "dont_allow"]
Base64 = Annotated[
    str,
    Meta(
        min_length=4,
        max_length=MAX_IMAGE_B64_CHARS,
        extra_json_schema={"pattern": _BASE64},
        description="The image, base64 (4 MiB decoded at most; 10 MiB for all images).",
    ),
]


class ImageInput(msgspec.Struct, gc=False, rename="camel", forbid_unknown_fields=True, frozen=True):
    """An input image: `{bytesBase64Encoded, mimeType}`."""

    bytes_base64_encoded: Base64
    mime_type: ImageMime


class GenerationParams(
    msgspec.Struct, rename="camel", omit_defaults=True, forbid_unknown_fields=True, gc=False
):
    """Video parameters as the API takes them (which of them a model takes: the provider's
    capability table, genqueue.providers.veo.capabilities)."""

    duration: Duration = 8
    aspect_ratio: AspectRatio = "16:9"
    resolution: Resolution = "720p"
    negative_prompt: Text | None = None
    seed: Seed | None = None
    image: ImageInput | None = None  # the first frame
    last_frame: ImageInput | None = None
    reference_images: Annotated[list[ImageInput], Meta(max_length=MAX_REFERENCE_IMAGES)] | None = (
        None
    )
    sample_count: SampleCount = 1
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


class GenerationRequest(msgspec.Struct, gc=False, rename="camel", forbid_unknown_fields=True):
    """`POST /api/generations` and `JobQueue.submit`. The rules of one field are its type
    (and so the OpenAPI schema); `check_across_fields` holds the rules across fields."""

    prompt: Prompt
    id: JobId | None = None
    parameters: GenerationParams = msgspec.field(default_factory=GenerationParams)
    # which provider runs the job (GET /api/providers lists those this server offers)
    # one provider, or an ordered list to fall back along when one is paused (each then
    # runs its default model: `model` must be absent)
    provider: (
        ProviderName | Annotated[list[ProviderName], Meta(min_length=1, max_length=MAX_FALLBACK)]
    ) = "veo3"
    model: Name | None = None
    priority: Priority = 0


class Route(msgspec.Struct, gc=False, frozen=True, rename="camel"):
    """One provider a job may run on, with the model it would use there."""

    provider: str
    model: str
    cost: float = 0.0  # one paid start there


class VideoOutput(msgspec.Struct, gc=False, rename="camel", omit_defaults=True):
    """One of a generation's videos (`sampleCount` > 1 makes several)."""

    video_url: str
    key: str | None = None  # where the store keeps it (URLs are re-signed from it)


class JobResult(msgspec.Struct, gc=False, rename="camel", omit_defaults=True):
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


class Job(msgspec.Struct, gc=False, rename="camel", omit_defaults=True):
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
    """Check a request against every rule: its fields' types (msgspec checks them when it
    decodes or converts, not when a Struct is built in Python) and the rules across them."""
    try:
        convert(msgspec.to_builtins(req), GenerationRequest)
    except Refused as exc:
        raise InvalidRequest(str(exc), field=exc.field) from None
    check_across_fields(req)


def check_across_fields(req: GenerationRequest) -> None:
    """The rules no one field's type can hold (on a request its types already took)."""
    if isinstance(req.provider, list) and len(req.provider) > 1 and req.model is not None:
        _fail("model", "a fallback list of providers runs each one's default model: omit model")
    p = req.parameters
    if p.resolution in ("1080p", "4k") and p.duration != 8:
        _fail("parameters.resolution", f"resolution {p.resolution} needs duration 8")
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
