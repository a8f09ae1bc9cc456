"""Make the fake Veo's video, a tiny H.264 MP4 that browsers play.

It is written to genqueue/providers/fake_veo/video.mp4.

Run it from the repo root with PyAV installed (`pip install -c constraints.txt '.[media]'`):

    python tools/make_fake_video.py

The output is committed, so neither the fake nor the tests need PyAV. The clip is 96x54,
8 seconds at 2 frames a second (Veo's default length), a colour band sweeping across a dark
field, in H.264 Constrained Baseline with the moov box first ("faststart"), so a player can
start before the end and the fake can pad the file with a trailing `free` box to any size.
Debian's Chromium (the suite's headless browser) decodes it: see tests/test_fake_video.py.
"""

from __future__ import annotations

import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import av

OUT = Path(__file__).resolve().parent.parent / "genqueue/providers/fake_veo/video.mp4"
WIDTH, HEIGHT, FPS, SECONDS = 96, 54, 2, 8


def frame_rgb(index: int, count: int) -> av.VideoFrame:
    """A dark frame with a bright band at a position that moves with `index`."""
    frame = av.VideoFrame(WIDTH, HEIGHT, "rgb24")
    plane = frame.planes[0]
    left = (WIDTH - 16) * index // max(1, count - 1)
    row = bytearray()
    for x in range(WIDTH):
        row += bytes((240, 160, 40) if left <= x < left + 16 else (16, 24, 48))
    row += bytes(plane.line_size - len(row))
    plane.update(bytes(row) * HEIGHT)
    return frame


def encode(path: Path) -> None:
    # faststart rewrites the file at the end, so it needs a real file, not a BytesIO.
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.time_base = Fraction(1, FPS)
        stream.options = {"profile": "baseline", "crf": "38", "preset": "veryslow", "g": "16"}
        count = FPS * SECONDS
        for index in range(count):
            frame = frame_rgb(index, count)
            frame.pts = index
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "video.mp4"
        encode(path)
        data = path.read_bytes()
    OUT.write_bytes(data)
    print(f"{OUT}: {len(data)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
