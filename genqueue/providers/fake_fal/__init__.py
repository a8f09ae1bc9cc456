"""A fake of fal.ai's queue API, judged by fal's own SDK (tests/test_fake_fal_sdk.py)."""

from genqueue.providers.fake_fal.app import FakeFal
from genqueue.providers.fake_fal.server import FakeFalServer

__all__ = ["FakeFal", "FakeFalServer"]
