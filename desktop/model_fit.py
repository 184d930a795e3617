"""Will a catalogue model fit this computer's memory? Said before the download, not after it.

Users of the peer apps (GPT4All, LM Studio, Jan) expect the model list to say so: a 13 GB
download that then fails with "not enough memory" costs an hour. The estimate is deliberately
simple and errs on the large side:

    weights   = parameters × bytes per weight (16-bit: 2; 8-bit: ~1.1; 4-bit: ~0.6 — the
                embeddings stay 16-bit and each group of quantized weights keeps its scales)
    KV cache  = 2 (keys, values) × layers × KV width × context × 2 bytes (16-bit cache)
    overhead  = the app, torch and the activations of one forward pass

and it is compared with the memory available now (psutil) and the computer's total:
"fits" (within 85 % of what is free), "tight" (less than that is free, but the computer has the
memory: close other programs) or "won't fit" (more than 90 % of all the memory). Plain Python
and psutil: no Qt, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

BYTES_PER_WEIGHT = {"none": 2.0, "int8": 1.1, "int4": 0.6}
"""Bytes a weight takes in memory once loaded, by weights kind (Models → Weights)."""
WEIGHT_WORDS = {"none": "16-bit", "int8": "8-bit", "int4": "4-bit"}
KV_BYTES = 2
"""The KV cache is kept in the model's 16-bit dtype."""
OVERHEAD_BYTES = 600 * 1024**2
"""The app, torch and one forward pass's activations, beside the weights and the cache."""
FREE_SHARE = 0.85
"""A model fits when it needs at most this share of the memory available now."""
TOTAL_SHARE = 0.90
"""…and cannot fit at all when it needs more than this share of all the memory."""

FITS, TIGHT, WONT_FIT = "fits", "tight", "won't fit"


@dataclass(frozen=True)
class Fit:
    """The verdict for one model and weights kind, with the numbers behind it."""

    verdict: str
    """FITS, TIGHT or WONT_FIT."""
    needed: int
    """Estimated bytes once loaded (weights, KV cache, overhead)."""
    available: int
    total: int
    quant: str
    lighter: tuple[str, int] | None = None
    """A smaller weights kind that would fit, and what it needs (when this one does not)."""

    @property
    def text(self) -> str:
        """One sentence for the chooser, with the numbers."""
        need, free, total = gb(self.needed), gb(self.available), gb(self.total)
        kind = WEIGHT_WORDS[self.quant]
        if self.verdict == FITS:
            said = f"Fits this computer: needs about {need} with {kind} weights; {free} is free."
        elif self.verdict == TIGHT:
            said = (
                f"Tight: needs about {need} with {kind} weights but only {free} of {total} is "
                "free now; close other programs first."
            )
        else:
            said = f"Won't fit: needs about {need} with {kind} weights; this computer has {total}."
        if self.lighter is not None:
            quant, needed = self.lighter
            said += (
                f" With {WEIGHT_WORDS[quant]} weights (Models → Weights) it needs about "
                f"{gb(needed)} and fits."
            )
        return said


def gb(n: float) -> str:
    """Bytes in GB with one decimal (the unit the download sizes use)."""
    return f"{n / 1e9:.1f} GB"


def needed_bytes(entry: Mapping, quant: str = "none") -> int | None:
    """Estimated memory for `entry` (a catalogue row) loaded with `quant` weights; None when
    the row does not give the model's shape."""
    try:
        params = int(entry.get("n_params") or 0)
        layers = int(entry.get("n_layers") or 0)
        kv_dim = int(entry.get("kv_dim") or 0)
        context = int(entry.get("context") or 0)
    except (TypeError, ValueError):
        return None
    if params <= 0:
        return None
    weights = params * BYTES_PER_WEIGHT[quant]
    cache = 2 * layers * kv_dim * context * KV_BYTES
    return int(weights + cache + OVERHEAD_BYTES)


def verdict(needed: int, available: int, total: int) -> str:
    if needed <= available * FREE_SHARE:
        return FITS
    if needed <= total * TOTAL_SHARE:
        return TIGHT
    return WONT_FIT


def memory_now() -> tuple[int, int]:
    """(available, total) bytes of RAM now."""
    import psutil

    memory = psutil.virtual_memory()
    return int(memory.available), int(memory.total)


def fit_hint(
    entry: Mapping, quant: str = "none", memory: tuple[int, int] | None = None
) -> Fit | None:
    """Whether `entry` fits this computer with `quant` weights (and, if not, a lighter kind that
    would); None when the catalogue row does not say how big the model is."""
    needed = needed_bytes(entry, quant)
    if needed is None:
        return None
    available, total = memory_now() if memory is None else memory
    said = verdict(needed, available, total)
    lighter = None
    if said != FITS:
        order = list(BYTES_PER_WEIGHT)
        for smaller in order[order.index(quant) + 1 :]:
            need = needed_bytes(entry, smaller)
            if need is not None and verdict(need, available, total) == FITS:
                lighter = (smaller, need)
                break
    return Fit(said, needed, available, total, quant, lighter)
