"""How much context fits: the KV cache's size, estimated before it is allocated.

The cache is preallocated for the whole context (engine.model.kv_cache), so its size is known up
front:
2 (keys, values) x layers x kv heads x head dim x positions x bytes per value, plus the rotary
tables. A config may claim millions of positions; allocating for all of them would ask the system
for terabytes. The default context is therefore capped to what fits in the memory available now.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from engine.errors import EngineError, Hint, Remedy, cli_text
from engine.model.config import ModelArgs

log = logging.getLogger(__name__)

MEMORY_SHARE = 0.5
"""Share of the currently available memory the KV cache may take (the rest: activations, the
app, other programs)."""
DEFAULT_CONTEXT_CEILING = 131_072
"""The default context never exceeds this: Llama 2 was trained on 4,096 positions, and a config
claiming billions is broken, not generous. An explicit --max-context may go higher if it fits."""
CONTEXT_GRANULE = 256
"""A capped context is rounded down to a multiple of this (when it is at least this big)."""


def bytes_per_position(args: ModelArgs, dtype: torch.dtype) -> int:
    """KV-cache bytes for one position across all layers, plus its rotary table rows (float32)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    kv = 2 * args.n_layers * args.n_kv_heads * args.head_dim * itemsize
    rotary = 2 * (args.head_dim // 2) * 4
    return kv + rotary


def available_bytes(device: torch.device) -> int | None:
    """Memory that can be allocated now on `device`, or None when it cannot be told."""
    try:
        if device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
            return int(free)
        if device.type == "cpu":
            import psutil

            return int(psutil.virtual_memory().available)
    except (ImportError, RuntimeError, OSError) as exc:  # pragma: no cover - best effort
        log.debug("cannot tell the free memory of %s: %s", device, exc)
    return None


@dataclass(frozen=True)
class ContextChoice:
    """The context the cache is allocated for, and a note for the user when it was capped."""

    length: int
    note: str | None = None
    """What happened, without advice (the window shows it as it is)."""
    hint: Hint | None = None
    """What the user may do about it (asking for more context), for `cli_text`."""


def choose_context(
    args: ModelArgs,
    dtype: torch.dtype,
    device: torch.device,
    requested: int | None,
    available: int | None = None,
) -> ContextChoice:
    """The model's context, or `requested`, checked against the memory available.

    The default is capped (with a note saying so); an explicit request that cannot fit is an
    error, since the user asked for that much.
    """
    model_max = args.max_seq_len
    length = model_max if requested is None else min(requested, model_max)
    if length < 2:
        raise EngineError(f"max context {length} is too small; use at least 2 tokens")
    ceiling_note = None
    if requested is None and length > DEFAULT_CONTEXT_CEILING:
        length = DEFAULT_CONTEXT_CEILING
        ceiling_note = f"context capped to {length} tokens (the model's config claims {model_max})"
    free = available_bytes(device) if available is None else available
    per_position = bytes_per_position(args, dtype)
    fits = length if free is None else int(free * MEMORY_SHARE) // per_position
    if length <= fits:
        if ceiling_note:
            hint = Hint(Remedy.MORE_CONTEXT)
            log.info("%s", cli_text(ceiling_note, hint))
            return ContextChoice(length, ceiling_note, hint)
        return ContextChoice(length)
    need = _gib(length * per_position)
    if requested is not None or fits < 2:
        raise EngineError(
            f"a context of {length} tokens needs {need} for the KV cache but only "
            f"{_gib(free)} of memory is available",
            Remedy.SMALLER_CONTEXT,
            fits=fits,
        )
    capped = fits // CONTEXT_GRANULE * CONTEXT_GRANULE if fits >= CONTEXT_GRANULE else fits
    note = (
        f"context capped to {capped} tokens (the model allows {model_max}): the KV cache for all "
        f"of them would need {need} and {_gib(free)} of memory is available"
    )
    log.info("%s", note)
    return ContextChoice(capped, note)


def _gib(n: float) -> str:
    if n >= 2**40:
        return f"{n / 2**40:.1f} TiB"
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"
