"""Video providers: the Veo 3 client and a Veo-compatible fake server for tests and demos."""

__all__: list[str] = []
