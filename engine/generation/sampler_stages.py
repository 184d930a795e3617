"""Step mode's account of one sampling decision: the distribution after each stage, and the pick.

`explain_choice` runs `engine.generation.sampling.choose_token` itself, the function generation
uses, with
an observer that copies out what each stage left behind. The observer reads and never changes,
and it draws no random numbers, so the token explained is the token generation would have picked
from the same logits, history and generator state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from engine.events import SamplerStage, SamplerStages, SamplingParams, TopToken
from engine.generation.sampling import choose_token

SHOWN = 6
"""Rows listed per stage; the rest of each stage's probability is one "others" figure."""

TITLES = {
    "model": "Model",
    "penalty": "Repetition penalty",
    "temperature": "Temperature",
    "top_k": "Top-k",
    "top_p": "Top-p",
    "min_p": "Min-p",
}


def _name(names: Callable[[int], str] | None, token_id: int) -> str:
    return names(token_id) if names is not None else str(token_id)


def _stage(
    key: str,
    setting: str,
    active: bool,
    ids: torch.Tensor,
    probs: torch.Tensor,
    names: Callable[[int], str] | None,
    shown: int,
    note: str = "",
    pick: int | None = None,
) -> SamplerStage:
    """A stage from a distribution sorted most likely first (`ids[i]` has `probs[i]`),
    renormalised over its survivors (the filters only zero what they drop).

    The rows are the `shown` most likely, plus the token `pick` (the one finally chosen) where it
    is further down but still alive: its fate can be followed through every stage.
    """
    probs = probs.double()
    probs = probs / probs.sum()
    alive = int((probs > 0).sum())
    n = min(shown, alive)
    listed = list(range(n))
    if pick is not None:
        where = (ids == pick).nonzero()
        at = int(where[0, 0]) if len(where) else -1
        if at >= n and float(probs[at]) > 0:
            listed.append(at)
    chosen = torch.tensor(listed, dtype=torch.long)
    rows = [
        TopToken(int(t), _name(names, int(t)), float(p))
        for t, p in zip(ids[chosen].tolist(), probs[chosen].tolist(), strict=True)
    ]
    rest = float(probs.sum() - probs[chosen].sum())
    return SamplerStage(key, TITLES[key], setting, active, alive, rows, rest, note)


def _sorted(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, ids = torch.sort(probs, descending=True)
    return ids, values


def explain_choice(
    logits: torch.Tensor,
    history: Sequence[int],
    params: SamplingParams,
    generator: torch.Generator | None,
    names: Callable[[int], str] | None = None,
    shown: int = SHOWN,
    eos_id: int | None = None,
) -> SamplerStages:
    """Choose the next token exactly as the sampler does, recording every stage on the way.

    `logits` are the float32 scores [vocab] the sampler gets; `names(id)` gives a token's text.
    """
    logits = logits.float().cpu()
    p = params
    seen: dict[str, dict] = {}

    def observe(stage: str, **found) -> None:
        seen[stage] = found

    token = choose_token(logits, history, p, generator, observe)

    model = _sorted(torch.softmax(logits, -1))
    stages = [_stage("model", "", True, *model, names, shown, pick=token)]
    penalised = seen["penalty"]["logits"]
    penalty_on = p.repetition_penalty != 1.0
    stages.append(
        _stage(
            "penalty",
            f"{p.repetition_penalty:g}" if penalty_on else "off",
            penalty_on and bool(history),
            *_sorted(torch.softmax(penalised, -1)),
            names,
            shown,
            "" if penalty_on else "1 leaves the model's scores as they are",
            pick=token,
        )
    )
    if p.greedy:
        pick, certain = torch.tensor([token]), torch.ones(1)
        note = "temperature 0 always picks the most likely token: no randomness"
        stages.append(_stage("temperature", "0 (greedy)", True, pick, certain, names, 1, note))
        for key, setting in _filter_settings(p):
            note = "not used when greedy"
            stages.append(_stage(key, setting, False, pick, certain, names, 1, note))
        return SamplerStages(
            stages=stages,
            token_id=token,
            text=_name(names, token),
            pick_prob=1.0,
            pick_rank=1,
            greedy=True,
            is_eos=token == eos_id,
        )

    scaled = seen["temperature"]["scaled"]
    stages.append(
        _stage(
            "temperature",
            f"{p.temperature:g}",
            p.temperature != 1.0,
            *_sorted(torch.softmax(scaled, -1)),
            names,
            shown,
            "below 1 sharpens, above 1 flattens" if p.temperature != 1.0 else "1 changes nothing",
            pick=token,
        )
    )
    ids = seen["top_k"]["ids"]
    settings = dict(_filter_settings(p))
    for key in ("top_k", "top_p", "min_p"):
        active = settings[key] != "off"
        stages.append(
            _stage(
                key,
                settings[key],
                active,
                ids,
                seen[key]["probs"],
                names,
                shown,
                _note(key, p),
                token,
            )
        )
    final = seen["draw"]["probs"].double()
    index, u = seen["draw"]["index"], seen["draw"]["u"]
    total = float(final.sum())
    start = float(final[:index].sum()) / total
    prob = float(final[index]) / total
    return SamplerStages(
        stages=stages,
        token_id=token,
        text=_name(names, token),
        pick_prob=prob,
        pick_rank=index + 1,
        greedy=False,
        draw=u,
        span=(start, start + prob),
        is_eos=token == eos_id,
    )


def _filter_settings(p: SamplingParams) -> list[tuple[str, str]]:
    return [
        ("top_k", str(p.top_k) if p.top_k else "off"),
        ("top_p", f"{p.top_p:g}" if p.top_p < 1.0 else "off"),
        ("min_p", f"{p.min_p:g}" if p.min_p > 0.0 else "off"),
    ]


def _note(key: str, p: SamplingParams) -> str:
    if key == "top_k":
        return f"keeps the {p.top_k} most likely" if p.top_k else "0 keeps every token"
    if key == "top_p":
        if p.top_p >= 1.0:
            return "1 keeps every token"
        return f"keeps the most likely until they hold {p.top_p:g} of the probability"
    if p.min_p <= 0.0:
        return "0 keeps every token"
    return f"drops tokens below {p.min_p:g} × the top token's probability"
