"""The providers this server offers, each with its models, their capabilities and prices.

Providers are plug-ins: each declares a `ProviderInfo` (name, models with a capability
row and a price, configuration keys, rate-limit defaults) and a client with one interface
(`start`, `poll`, `download`, `cancel`). `Registry.route(request)` checks a request against
the chosen model's row before anything is stored, and `GET /api/providers` shows
`Registry.listing()`.

Names: `veo3` (alias `veo`) and `fal`. With no key at all (the demo start), both run against
built-in fakes; with a Veo key but no FAL_KEY, fal is not offered (a real Veo next to a fake
fal would mix paid and pretend videos).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import msgspec

from genqueue.config import Config
from genqueue.errors import ConfigError, InvalidRequest
from genqueue.models import GenerationParams, GenerationRequest, Route
from genqueue.providers import fal
from genqueue.providers.pricing import Price, job_cost
from genqueue.providers.veo import prices as veo_prices
from genqueue.providers.veo.capabilities import ModelCaps, caps_for
from genqueue.providers.veo.settings import VeoSettings, resolve
from genqueue.providers.veo.validation import check_params, check_request

__all__ = ["ALIASES", "ModelInfo", "ProviderInfo", "ProviderList", "Registry", "Route"]

ALIASES = {"veo": "veo3", "veo3": "veo3", "fal": "fal"}


class ModelInfo(msgspec.Struct, frozen=True, rename="camel"):
    id: str
    capabilities: ModelCaps
    price: Price  # US dollars a second (or the operator's unit, when overridden)
    default: bool = False


class ProviderInfo(msgspec.Struct, frozen=True, rename="camel"):
    name: str
    models: list[ModelInfo]
    config_keys: list[str]
    rate_limit_per_minute: int = 0  # 0: no limit
    prices_date: str = ""
    fake: bool = False

    def model(self, model_id: str) -> ModelInfo | None:
        return next((m for m in self.models if m.id == model_id), None)

    @property
    def default_model(self) -> str:
        return next(m.id for m in self.models if m.default)


def _fail(field: str, message: str) -> NoReturn:
    raise InvalidRequest(message, field=field)


def _veo(cfg: Config, veo: VeoSettings) -> ProviderInfo:
    flat = Price.flat(cfg.veo3_price_per_s) if cfg.veo3_price_per_s else None
    models = [
        ModelInfo(m, caps_for(veo.dialect, m), flat or veo_prices.price_for(m), m == veo.model)
        for m in veo.models
    ]
    return ProviderInfo(
        name="veo3",
        models=models,
        config_keys=[
            "VEO3_API_KEY",
            "VEO3_DIALECT",
            "VEO3_MODEL",
            "VEO3_MODELS",
            "VERTEX_PROJECT",
            "VERTEX_LOCATION",
            "VEO3_PRICE_PER_S",
        ],
        rate_limit_per_minute=cfg.rate_limit_per_minute,
        prices_date="" if flat else veo_prices.PRICES_DATE,
        fake=veo.fake,
    )


def _fal(cfg: Config, *, fake: bool) -> ProviderInfo:
    wanted = [m.strip() for m in cfg.fal_models.split(",") if m.strip()] or list(fal.MODELS)
    if cfg.fal_model not in wanted:
        wanted.insert(0, cfg.fal_model)
    unknown = [m for m in wanted if m not in fal.MODELS]
    if unknown:
        raise ConfigError(
            f"FAL_MODELS / FAL_MODEL: genqueue knows no fal model {unknown[0]!r} "
            f"(it knows {', '.join(fal.MODELS)})"
        )
    flat = Price.flat(cfg.fal_price_per_s) if cfg.fal_price_per_s else None
    models = [
        ModelInfo(m, fal.MODELS[m], flat or fal.PRICES[m], m == cfg.fal_model) for m in wanted
    ]
    return ProviderInfo(
        name="fal",
        models=models,
        config_keys=["FAL_KEY", "FAL_MODEL", "FAL_MODELS", "FAL_QUEUE_RUN_HOST", "FAL_PRICE_PER_S"],
        prices_date="" if flat else fal.PRICES_DATE,
        fake=fake,
    )


class ProviderList(msgspec.Struct, rename="camel"):
    """`GET /api/providers`: what this server offers, in the order `provider` defaults."""

    providers: list[ProviderInfo]
    default_provider: str = "veo3"


class Registry:
    """What this server offers; built once from the Config."""

    def __init__(self, cfg: Config, veo: VeoSettings | None = None):
        self.veo = veo or resolve(cfg)
        self.providers: dict[str, ProviderInfo] = {"veo3": _veo(cfg, self.veo)}
        if cfg.fal_key or self.veo.fake:
            self.providers["fal"] = _fal(cfg, fake=not cfg.fal_key)
        # (provider, model, resolution, audio) -> price a second: every submission asks
        self._prices: dict[tuple[str, str, str, bool], float] = {}

    def listing(self) -> list[ProviderInfo]:
        return list(self.providers.values())

    def names(self, provider: str | Sequence[str]) -> list[str]:
        """The canonical names of a request's `provider` (one, or an ordered fallback list)."""
        asked = [provider] if isinstance(provider, str) else list(provider)
        if not asked:
            _fail("provider", "provider must name at least one provider")
        names: list[str] = []
        for name in asked:
            canonical = ALIASES.get(name)
            if canonical is None or canonical not in self.providers:
                offered = ", ".join(self.providers)
                hint = " (set FAL_KEY to offer fal)" if canonical == "fal" else ""
                _fail(
                    "provider",
                    f"provider {name[:40]!r} is not offered here{hint}; choose from: {offered}",
                )
            if canonical not in names:
                names.append(canonical)
        return names

    def route(self, req: GenerationRequest) -> list[Route]:
        """The providers the job may run on, in the caller's order, each with its model;
        every one must take the request (InvalidRequest naming the field otherwise), so a
        fallback never starts what its provider would refuse."""
        routes: list[Route] = []
        for name in self.names(req.provider):
            info = self.providers[name]
            if name == "veo3":  # Veo's own check, its messages unchanged
                veo = self.veo
                model_id = check_request(
                    req, dialect=veo.dialect, default_model=veo.model, models=veo.models
                )
                routes.append(Route(name, model_id))
                continue
            model_id = req.model if req.model is not None else info.default_model
            model = info.model(model_id)
            if model is None:
                offered = ", ".join(m.id for m in info.models)
                _fail(
                    "model",
                    f"model {model_id[:80]!r} is not offered by {name}; choose one of: {offered}",
                )
            check_params(req.parameters, model.capabilities, f"{model_id} on {name}")
            routes.append(Route(name, model_id))
        return routes

    def start_cost(self, route: Route, params: GenerationParams) -> float:
        """What one paid start of these parameters costs on `route`: seconds x videos x the
        price a second (audio unless turned off: Veo's Gemini door and fal make it)."""
        audio = params.generate_audio is not False
        per_s = self.price_per_s(route, params.resolution, audio)
        return job_cost(per_s, params.duration, 1, params.sample_count)

    def price_per_s(self, route: Route, resolution: str, audio: bool) -> float:
        key = (route.provider, route.model, resolution, audio)
        price = self._prices.get(key)
        if price is None:
            info = self.providers.get(route.provider)
            model = info.model(route.model) if info is not None else None
            price = model.price.for_video(resolution, audio) if model is not None else 0.0
            if len(self._prices) < 1024:  # the offered models' few combinations
                self._prices[key] = price
        return price
