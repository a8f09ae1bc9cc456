"""The fake's video plays: headless Chromium (the browser test's, over the DevTools protocol)
opens it from the fake and its <video> element decodes a frame (readyState >= 2, the
HAVE_CURRENT_DATA of the HTML media spec) of the clip's size, bare and padded to megabytes
with a trailing `free` box. The dashboard's players were black before: the fake's MP4 had
no video track. Also the MP4's structure, box by box, at sizes from the bare clip to past
4 GiB (a 64-bit `free` box), without holding the big ones."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from test_browser import CHROMIUM, chromium
from test_http import run

from genqueue.providers.fake_veo import MIN_VIDEO_SIZE, FakeVeoServer, build_mp4, iter_mp4
from genqueue.providers.fake_veo.video import clip


def boxes(data: bytes) -> list[tuple[bytes, int]]:
    """The top-level boxes (kind, size) of an MP4, checking that they tile the file."""
    found, offset = [], 0
    while offset < len(data):
        size, kind = struct.unpack_from(">I4s", data, offset)
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, offset + 8)
        assert size >= 8, (kind, size)
        found.append((kind, size))
        offset += size
    assert offset == len(data)
    return found


def test_the_clip_is_h264_with_its_index_first() -> None:
    data = clip()
    assert [kind for kind, _ in boxes(data)] == [b"ftyp", b"moov", b"free", b"mdat"]
    assert b"avc1" in data and b"avcC" in data  # an H.264 sample entry and its config
    assert len(data) == MIN_VIDEO_SIZE < 4096  # small enough for the bench's 4 KiB videos


@pytest.mark.parametrize("size", [MIN_VIDEO_SIZE, MIN_VIDEO_SIZE + 8, 300_000])
def test_padding_is_one_free_box_after_the_clip(size: int) -> None:
    data = build_mp4(size)
    assert len(data) == size and data.startswith(clip())
    kinds = [kind for kind, _ in boxes(data)]
    assert kinds == [b"ftyp", b"moov", b"free", b"mdat"] + ([b"free"] if size > len(clip()) else [])


def test_past_4_gib_the_free_box_has_a_64_bit_size() -> None:
    size = MIN_VIDEO_SIZE + 2**32 + 100  # the padding alone is past 4 GiB
    chunks = iter_mp4(size)
    assert next(chunks) == clip()
    header = next(chunks)
    assert header[4:8] == b"free" and struct.unpack(">IxxxxQ", header) == (1, size - len(clip()))


@pytest.mark.parametrize("size", [MIN_VIDEO_SIZE - 1, MIN_VIDEO_SIZE + 7])
def test_sizes_that_cannot_hold_the_clip_and_a_box_are_refused(size: int) -> None:
    with pytest.raises(ValueError, match="video_size must be"):
        FakeVeoServer(video_size=size)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("size", [MIN_VIDEO_SIZE, 3 * 1024 * 1024])
def test_headless_chromium_plays_the_fake_video(size: int, tmp_path: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing (apt-get install -y chromium)", pytrace=False)

    async def body() -> None:
        async with FakeVeoServer(video_size=size) as fake, chromium(tmp_path) as page:
            await page.send("Page.enable")
            # H.264 in MP4 is what Debian's chromium decodes (its ffmpeg has the codec).
            codec = await page.js(
                "document.createElement('video').canPlayType('video/mp4; codecs=\"avc1.42C00B\"')"
            )
            assert codec == "probably"
            await page.send("Page.navigate", url=f"{fake.base_url}/media/clip.mp4")
            ready = "document.querySelector('video').readyState >= 2"
            await page.wait_for(ready, "the video's first frame", timeout_s=30)
            shape = await page.js(
                "(() => { const v = document.querySelector('video');"
                " return [v.videoWidth, v.videoHeight, Math.round(v.duration), v.error]; })()"
            )
            assert shape == [96, 54, 8, None]
            assert fake.downloads >= 1

    run(body(), timeout_s=80)
