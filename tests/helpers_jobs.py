"""A job record built by hand, for tests that call an actor, a board or a stream without a
queue: one place that knows a record's required fields."""

from __future__ import annotations

from typing import Any

from genqueue.models import GenerationParams, Job


def a_job(**fields: Any) -> Job:
    """A Job with its required fields filled in (id "a", generation "g", user "u", prompt
    "p", on veo3, its default model, priority 0, made at time 0); `fields` set any field."""
    required: dict[str, Any] = {
        "id": "a",
        "generation_id": "g",
        "user_id": "u",
        "prompt": "p",
        "parameters": GenerationParams(),
        "provider": "veo3",
        "model": None,
        "priority": 0,
        "created_at": 0.0,
        "updated_at": 0.0,
    }
    return Job(**(required | fields))
