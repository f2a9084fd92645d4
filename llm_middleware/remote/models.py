"""The models a fleet serves: the union of its upstreams' lists, under public names (``model_map``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..engine.outputs import ModelInfo
from ..errors import ModelNotFoundError
from .upstream import Upstream, UpstreamPool

Task = Literal["generate", "embed"]


class ModelNames:
    """Public model names (what clients send) and upstream model ids (what upstreams serve).

    ``model_map`` maps public names to upstream ids; an upstream id that no entry maps to keeps
    its own name.  Several public names may map to one upstream id.
    """

    def __init__(self, model_map: Mapping[str, str] | None) -> None:
        self.model_map = dict(model_map or {})
        for public, upstream in self.model_map.items():
            if not isinstance(public, str) or not isinstance(upstream, str) or not public or not upstream:
                raise ValueError(
                    f"model_map maps public names to upstream model ids (strings), got {public!r}: {upstream!r}"
                )

    def public(self, upstream_id: str) -> list[str]:
        """The public names of ``upstream_id``."""
        return [public for public, upstream in self.model_map.items() if upstream == upstream_id] or [upstream_id]


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A model as the fleet serves it: its public name, the upstream id, and who serves it."""

    name: str
    upstream_id: str
    card: dict[str, Any]
    upstreams: tuple[Upstream, ...]

    @property
    def task(self) -> Task:
        """``embed`` when the upstream's card says so (our own servers do), else ``generate``."""
        return "embed" if self.card.get("task") == "embed" else "generate"

    def info(self) -> ModelInfo:
        """The model as ``Engine.models()`` lists it; ``failed`` while no upstream serving it is in rotation."""
        healthy = any(u.healthy for u in self.upstreams)
        reasons = "; ".join(f"{u.url}: {u.error}" for u in self.upstreams)
        return ModelInfo(
            name=self.name,
            source=self.upstream_id,
            task=self.task,
            created=int(self.card.get("created") or 0),
            max_model_len=int(self.card.get("max_model_len") or 0),
            random_weights=bool(self.card.get("random_weights", False)),
            state="ready" if healthy else "failed",
            error=None if healthy else f"every upstream serving it is out of rotation: {reasons}",
        )


def catalog(pool: UpstreamPool, names: ModelNames) -> list[ServedModel]:
    """Every model any upstream serves (or served before it left rotation), in upstream order."""
    serving: dict[str, list[Upstream]] = {}
    cards: dict[str, dict[str, Any]] = {}
    for upstream in pool.upstreams:
        for upstream_id, card in list(upstream.models.items()):
            serving.setdefault(upstream_id, []).append(upstream)
            cards.setdefault(upstream_id, card)
    return [
        ServedModel(public, upstream_id, cards[upstream_id], tuple(upstreams))
        for upstream_id, upstreams in serving.items()
        for public in names.public(upstream_id)
    ]


def resolve(models: list[ServedModel], name: str | None, task: Task | None) -> ServedModel:
    """The model a request names: ``None``/``"default"`` is the first (of ``task``); an upstream id works too."""
    if not models:
        raise ModelNotFoundError("no upstream serves any model", param="model")
    if name is None or name == "default":
        candidates = [m for m in models if task is None or m.task == task]
        return (candidates or models)[0]
    for model in models:
        if model.name == name:
            return model
    for model in models:
        if model.upstream_id == name:
            return model
    available = ", ".join(m.name for m in models)
    raise ModelNotFoundError(f"the model {name!r} does not exist; available models: {available}", param="model")
