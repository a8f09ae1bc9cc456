"""The fal.ai provider: its queue API client and its models."""

from genqueue.providers.fal.client import FalClient, fal_input
from genqueue.providers.fal.models import DEFAULT_MODEL, MODELS, PRICES, PRICES_DATE

__all__ = ["DEFAULT_MODEL", "MODELS", "PRICES", "PRICES_DATE", "FalClient", "fal_input"]
