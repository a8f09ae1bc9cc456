"""Video storage: where finished videos live and the URL a client fetches them from.

Two backends share the `VideoStore` protocol (video_store.py, with the keys videos live
at):
- `LocalStore` (video_local.py) keeps files in a folder, each synced and renamed into
  place, served at signed URLs;
- `S3Store` (video_s3.py) streams into an S3-compatible bucket (R2, S3, MinIO) with
  aiobotocore, one part in memory at a time.
"""

from __future__ import annotations

from genqueue.storage.video_local import LocalStore
from genqueue.storage.video_s3 import MIN_PART_SIZE, S3Store
from genqueue.storage.video_store import StoredVideo, VideoStore, video_key

__all__ = ["MIN_PART_SIZE", "LocalStore", "S3Store", "StoredVideo", "VideoStore", "video_key"]
