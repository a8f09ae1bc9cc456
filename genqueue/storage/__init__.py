"""Persistence: the state store (SQLite) and the video stores (local folder, S3)."""
