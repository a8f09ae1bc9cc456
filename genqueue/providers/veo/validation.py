"""A request checked against the model's row of the capability table, before it is stored.

Everything here is a 400 naming the field: a parameter the door does not take is refused,
never silently dropped (google-genai raises for the same ones on the Gemini API).
"""

from __future__ import annotations

from typing import NoReturn

from genqueue.errors import InvalidRequest
from genqueue.models import GenerationParams, GenerationRequest, ImageInput
from genqueue.providers.veo.capabilities import Dialect, ModelCaps, caps_for
from genqueue.providers.veo.shapes import Image, VideoParams

__all__ = ["check_request", "to_video_params", "validate_params"]

_DOOR_NAME = {"gemini": "the Gemini API", "vertex": "Vertex AI"}


def _fail(field: str, message: str) -> NoReturn:
    raise InvalidRequest(message, field=field)


def check_request(
    req: GenerationRequest, *, dialect: Dialect, default_model: str, models: tuple[str, ...]
) -> str:
    """The model the job will use; InvalidRequest if the request does not fit it."""
    model = req.model if req.model is not None else default_model
    if model not in models:
        allowed = ", ".join(models)
        _fail("model", f"model {model[:80]!r} is not offered here; choose one of: {allowed}")
    check_params(req.parameters, caps_for(dialect, model), f"{model} on {_DOOR_NAME[dialect]}")
    return model


def check_params(p: GenerationParams, caps: ModelCaps, where: str) -> None:
    if p.duration not in caps.durations_s:
        shown = ", ".join(map(str, caps.durations_s))
        _fail("parameters.duration", f"duration must be one of {shown} s for {where}")
    if p.resolution not in caps.resolutions:
        shown = ", ".join(caps.resolutions)
        _fail("parameters.resolution", f"resolution must be one of {shown} for {where}")
    if p.resolution != "720p" and p.duration != caps.high_res_duration_s:
        _fail(
            "parameters.resolution",
            f"resolution {p.resolution} needs duration {caps.high_res_duration_s}",
        )
    if p.aspect_ratio == "9:16" and p.resolution not in caps.portrait_resolutions:
        shown = ", ".join(caps.portrait_resolutions)
        _fail("parameters.aspectRatio", f"9:16 videos may be {shown} for {where}")
    _unsupported("seed", p.seed is not None and not caps.seed, where)
    _unsupported("generateAudio", p.generate_audio is not None and not caps.generate_audio, where)
    if p.sample_count > caps.max_sample_count:
        _fail(
            "parameters.sampleCount",
            f"sampleCount may be at most {caps.max_sample_count} for {where}",
        )
    _unsupported("image", p.image is not None and not caps.image, where)
    _unsupported("lastFrame", p.last_frame is not None and not caps.last_frame, where)
    if p.last_frame is not None and p.image is None:
        _fail("parameters.lastFrame", "lastFrame needs image (the first frame)")
    refs = len(p.reference_images or [])
    if refs > caps.max_reference_images:
        if caps.max_reference_images == 0:
            _unsupported("referenceImages", True, where)
        _fail(
            "parameters.referenceImages",
            f"at most {caps.max_reference_images} referenceImages for {where}",
        )
    if p.person_generation is not None and p.person_generation not in caps.person_generation:
        shown = ", ".join(caps.person_generation)
        _fail("parameters.personGeneration", f"personGeneration must be one of {shown} for {where}")


def _unsupported(name: str, refused: bool, where: str) -> None:
    if refused:
        _fail(f"parameters.{name}", f"{name} is not supported by {where}")


def _image(image: ImageInput | None) -> Image | None:
    return None if image is None else Image(image.bytes_base64_encoded, image.mime_type)


def to_video_params(p: GenerationParams) -> VideoParams:
    refs = tuple(Image(im.bytes_base64_encoded, im.mime_type) for im in p.reference_images or [])
    return VideoParams(
        duration=p.duration,
        aspect_ratio=p.aspect_ratio,
        resolution=p.resolution,
        negative_prompt=p.negative_prompt,
        person_generation=p.person_generation,
        sample_count=p.sample_count,
        seed=p.seed,
        generate_audio=p.generate_audio,
        image=_image(p.image),
        last_frame=_image(p.last_frame),
        reference_images=refs,
    )


def validate_params(params: VideoParams) -> None:
    """Raise InvalidRequest naming the field if no Veo door would take these parameters."""
    if params.duration not in (4, 6, 8):
        _fail("duration", f"duration must be 4, 6 or 8 seconds, not {params.duration!r}")
    if params.aspect_ratio not in ("16:9", "9:16"):
        _fail("aspect_ratio", f"aspect_ratio must be 16:9 or 9:16, not {params.aspect_ratio!r}")
    if params.resolution not in ("720p", "1080p", "4k"):
        _fail("resolution", f"resolution must be 720p, 1080p or 4k, not {params.resolution!r}")
    if params.resolution != "720p" and params.duration != 8:
        _fail(
            "resolution", f"resolution {params.resolution} needs duration 8, not {params.duration}"
        )
    if not 1 <= params.sample_count <= 4:
        _fail("sample_count", "sample_count must be between 1 and 4")
    if params.seed is not None and not 0 <= params.seed < 2**32:
        _fail("seed", "seed must be between 0 and 4294967295")
