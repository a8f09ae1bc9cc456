"""Video providers as plug-ins: the registry (registry.py), Veo 3 (veo/), fal.ai (fal/),
and fakes of both for tests and the demo (fake_veo/, fake_fal/)."""

__all__: list[str] = []
