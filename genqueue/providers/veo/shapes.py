"""The data a Veo call takes and gives: our parameters, and Google's JSON shapes.

Google's field names, as google-genai's converters write and read them
(`_GenerateVideosParameters_to_vertex`/`_to_mldev`, `_GenerateVideosResponse_from_*`):
`instances[0].{prompt, image, lastFrame, referenceImages[{image, referenceType}]}`,
`parameters.{sampleCount, durationSeconds, aspectRatio, resolution, negativePrompt,
personGeneration, seed, generateAudio, storageUri}`; an image is `{bytesBase64Encoded,
mimeType}`. Results: the Gemini API's `response.generateVideoResponse.generatedSamples[].video.uri`,
Vertex's `response.videos[].{gcsUri | bytesBase64Encoded, mimeType}`, and on both
`raiMediaFilteredCount` / `raiMediaFilteredReasons`. Unknown fields ("@type") are ignored.
"""

from __future__ import annotations

import msgspec

from genqueue.providers.veo.failures import GoogleError

__all__ = ["Image", "OpResponse", "Operation", "RawOperation", "VideoParams", "VideoRef"]


class Image(msgspec.Struct, frozen=True):
    """An input image: base64 text and its MIME type."""

    data_b64: str
    mime_type: str


class VideoParams(msgspec.Struct, frozen=True):
    """What to generate besides the prompt (Veo's `parameters`, in snake_case)."""

    duration: int = 8
    aspect_ratio: str = "16:9"
    resolution: str = "720p"
    negative_prompt: str | None = None
    person_generation: str | None = None
    sample_count: int = 1
    seed: int | None = None
    generate_audio: bool | None = None
    image: Image | None = None
    last_frame: Image | None = None
    reference_images: tuple[Image, ...] = ()


class VideoRef(msgspec.Struct, frozen=True):
    """A finished video: a URI to download, or the bytes inline (base64)."""

    uri: str | None = None
    data_b64: str | None = None
    mime_type: str = "video/mp4"


class Operation(msgspec.Struct, frozen=True):
    """A Veo long-running operation; `videos` is filled once `done`."""

    name: str
    done: bool
    videos: list[VideoRef] = []


class Started(msgspec.Struct):
    name: str


class _GeminiVideo(msgspec.Struct):
    uri: str | None = None


class _GeminiSample(msgspec.Struct):
    video: _GeminiVideo | None = None


class GeminiResult(msgspec.Struct, rename="camel"):
    generated_samples: list[_GeminiSample] = []
    rai_media_filtered_count: int = 0
    rai_media_filtered_reasons: list[str] = []


class VertexVideo(msgspec.Struct, rename="camel"):
    gcs_uri: str | None = None
    bytes_base64_encoded: str | None = None
    mime_type: str | None = None


class OpResponse(msgspec.Struct, rename="camel"):
    generate_video_response: GeminiResult | None = None  # Gemini API
    videos: list[VertexVideo] = []  # Vertex AI
    rai_media_filtered_count: int = 0
    rai_media_filtered_reasons: list[str] = []

    def video_refs(self) -> list[VideoRef]:
        gemini = self.generate_video_response or GeminiResult()
        refs = [
            VideoRef(uri=s.video.uri) for s in gemini.generated_samples if s.video and s.video.uri
        ]
        for v in self.videos:
            if v.gcs_uri or v.bytes_base64_encoded:
                mime = v.mime_type or "video/mp4"
                refs.append(
                    VideoRef(uri=v.gcs_uri, data_b64=v.bytes_base64_encoded, mime_type=mime)
                )
        return refs

    def filter_reasons(self) -> tuple[list[str], int]:
        gemini = self.generate_video_response or GeminiResult()
        reasons = gemini.rai_media_filtered_reasons + self.rai_media_filtered_reasons
        return reasons, gemini.rai_media_filtered_count + self.rai_media_filtered_count


class RawOperation(msgspec.Struct):
    name: str = ""
    done: bool = False
    error: GoogleError | None = None
    response: OpResponse | None = None


STARTED = msgspec.json.Decoder(Started)
OPERATION = msgspec.json.Decoder(RawOperation)
