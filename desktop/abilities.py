"""What the open model's backend can do, as the window reads it: the engine's `Capabilities`
and, for each thing it cannot do, why (a model on a server gives no attention weights, maybe no
log-probabilities). The worker puts both in `ModelInfo.extra` (desktop.worker.with_abilities);
the window greys each feature that is not available and says why, instead of failing later.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.events import ModelInfo

FEATURES = ("step_mode", "branches", "surprisal", "attention")
"""The features the window greys when the backend cannot do them."""
DEFAULT_REASONS = {
    "step_mode": "Step mode is not available for this model",
    "branches": "Branching from another token is not available for this model",
    "surprisal": "The surprisal tint is not available for this model",
    "attention": "Attention weights are not available for this model",
}
"""Said when the backend gives no reason of its own."""


@dataclass(frozen=True)
class Abilities:
    """Which features work with the open model, and why each one that does not, does not."""

    available: dict[str, bool] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def can(self, feature: str) -> bool:
        return self.available.get(feature, True)

    def why_not(self, feature: str) -> str:
        """One sentence (no full stop) saying why `feature` is greyed; "" when it works."""
        if self.can(feature):
            return ""
        note = self.notes.get(feature, "").strip().rstrip(".")
        if not note:
            return DEFAULT_REASONS.get(feature, "Not available for this model")
        return note[0].upper() + note[1:]


ALL = Abilities()
"""No model, or a local one: everything is offered."""


def abilities_of(info: ModelInfo | None) -> Abilities:
    """The abilities the worker reported with `info` (everything, when it reported none)."""
    if info is None:
        return ALL
    raw = info.extra.get("capabilities")
    if not isinstance(raw, dict):
        return ALL
    notes = info.extra.get("capability_notes")
    notes = notes if isinstance(notes, dict) else {}
    return Abilities(
        {name: bool(raw.get(name, True)) for name in FEATURES},
        {str(k): str(v) for k, v in notes.items()},
    )
