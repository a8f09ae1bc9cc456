"""Spend bookkeeping (genqueue.actors.spend) and prices (genqueue.providers.pricing)."""

from __future__ import annotations

import pytest

from genqueue import BudgetExceeded, Config
from genqueue.actors.spend import SpendBook, day_of
from genqueue.models import GenerationParams, Route
from genqueue.providers.pricing import Price
from genqueue.providers.registry import Registry

DAY = 86400.0
NOON = 20_000 * DAY + DAY / 2  # some UTC noon


def test_committed_spend_is_kept_per_provider_user_and_day() -> None:
    committed: dict[str, float] = {}
    book = SpendBook(committed)
    book.charge("u1", "fal", 3.2, NOON)
    book.charge("u1", "veo3", 0.8, NOON)
    book.charge("u2", "fal", 1.0, NOON)
    book.charge("u1", "fal", 0.0, NOON)  # nothing paid: nothing recorded
    status = book.as_status(NOON)
    assert status["total"] == pytest.approx(5.0)
    assert status["byProvider"] == {"fal": pytest.approx(4.2), "veo3": pytest.approx(0.8)}
    assert status["byUserToday"] == {"u1": pytest.approx(4.0), "u2": pytest.approx(1.0)}
    # the next day: a new day's budget; two days on, the old per-user figures are dropped
    assert book.as_status(NOON + DAY)["byUserToday"] == {}
    book.charge("u3", "fal", 1.0, NOON + 2 * DAY)
    assert not any(k.endswith(day_of(NOON)) for k in committed)
    assert committed["total"] == pytest.approx(6.0)


def test_the_budget_counts_committed_and_in_flight_spend() -> None:
    book = SpendBook({})
    book.charge("u1", "fal", 2.0, NOON)
    book.reserve("j1", "u1", 2.0)
    book.check("u1", 1.0, 5.0, NOON)  # 2 + 2 + 1 = 5: allowed
    with pytest.raises(BudgetExceeded) as caught:
        book.check("u1", 1.01, 5.0, NOON)
    assert "daily budget of 5.00" in str(caught.value)
    book.check("u2", 5.0, 5.0, NOON)  # another user's own budget
    book.check("u1", 100.0, 0.0, NOON)  # 0: no budget
    book.release("j1")
    book.check("u1", 3.0, 5.0, NOON)
    book.check("u1", 5.0, 5.0, NOON + DAY)  # a new UTC day


def test_prices_by_resolution_and_audio_and_the_override() -> None:
    price = Price(per_s={"720p": 0.4, "4k": 0.6}, per_s_silent={"720p": 0.2, "4k": 0.4})
    assert (price.for_video("720p", True), price.for_video("720p", False)) == (0.4, 0.2)
    assert price.for_video("4k", False) == 0.4
    assert price.for_video("1080p", True) == 0.6  # unlisted: the dearest
    registry = Registry(Config())
    fal = Route("fal", "fal-ai/veo3.1")
    assert registry.start_cost(fal, GenerationParams(duration=8)) == pytest.approx(3.2)
    silent = GenerationParams(duration=6, generate_audio=False)
    assert registry.start_cost(fal, silent) == pytest.approx(1.2)
    fast = Route("fal", "fal-ai/veo3.1/fast")
    assert registry.start_cost(fast, GenerationParams(duration=4)) == pytest.approx(0.6)
    flat = Registry(Config(fal_price_per_s=0.05, veo3_price_per_s=0.5))
    assert flat.start_cost(fal, GenerationParams(duration=8)) == pytest.approx(0.4)
    veo = Route("veo3", "veo-3.1-generate-preview")
    assert flat.start_cost(veo, GenerationParams(duration=8)) == pytest.approx(4.0)
    listing = {p.name: p for p in Registry(Config()).listing()}
    assert listing["fal"].prices_date and listing["veo3"].prices_date
    assert listing["fal"].fake and listing["veo3"].fake  # no keys: the demo's fakes


def test_fal_is_offered_with_its_key_and_not_next_to_a_real_veo_without_one() -> None:
    assert "fal" in Registry(Config(fal_key="k")).providers
    real_veo = Registry(Config(veo3_api_key="google-key"))
    assert list(real_veo.providers) == ["veo3"]
    assert not Registry(Config(veo3_api_key="g", fal_key="k")).providers["fal"].fake
