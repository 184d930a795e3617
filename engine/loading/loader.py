"""Open a model folder (or a cached Hub repo id) and return everything generation needs.

This is the single entry point the CLI, the desktop worker and the tests use, so device choice,
dtype choice and thread count are decided in one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.errors import EngineError, Hint, Remedy
from engine.events import RuntimeInfo
from engine.files import require_regular_file
from engine.kernels.quant import check_quant
from engine.loading.checkpoint import load_transformer
from engine.loading.checkpoint_files import detect_layout, read_args
from engine.loading.memory import choose_context
from engine.loading.model_folder import resolve_model
from engine.model.config import ModelArgs
from engine.model.transformer import Transformer
from engine.text.chat import load_chat_template
from engine.text.prefix_rule import prefix_rule
from engine.text.tokenizer import Tokenizer

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
"""The dtypes a user may ask for, by the names the CLI and the settings use."""

Progress = Callable[[float, str], None]


@dataclass
class LoadedModel:
    """A ready model: weights with an allocated KV cache, its tokenizer and how it was opened."""

    model: Transformer
    tokenizer: Tokenizer
    args: ModelArgs
    name: str
    path: Path
    device: torch.device
    dtype: torch.dtype
    chat_template: str | None
    weights_bytes: int
    max_context: int
    """Positions the KV cache holds: the most tokens a prompt plus its reply can use."""
    context_note: str | None = None
    """Set when the context was capped below the model's own to fit memory (shown to the user,
    without advice: `context_hint` says what may be done about it)."""
    quant: str = "none"
    """Weight format: "none" (the dtype), "int8" or "int4" (engine/kernels/quant.py)."""
    runtime: RuntimeInfo = field(default_factory=RuntimeInfo)
    """How it runs: kernel, threads and whether they were measured or cached
    (engine/kernels/tuning.py), the compiled build, and the quantized cache's facts."""
    context_hint: Hint | None = None
    """What the user may do about `context_note` (ask for more context)."""
    file_format: str | None = None
    """The model file's own format where it has one worth naming ("GGUF Q4_K_M")."""
    load_notes: list[str] = field(default_factory=list)
    """One line each for what did not load exactly as the file says (shown with the model)."""

    def describe(self) -> dict:
        """Plain data about the model for status bars and logs (safe to send across threads)."""
        return {
            "name": self.name,
            "path": str(self.path),
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
            "max_context": self.max_context,
            "n_params": _count_weights(self.model),
            "weights_bytes": self.weights_bytes,
            "vocab_size": self.args.vocab_size,
            "n_layers": self.args.n_layers,
            "has_chat_template": self.chat_template is not None,
            "context_note": self.context_note,
            "quant": self.quant,
            "file_format": self.file_format,
            "load_notes": list(self.load_notes),
            **self.runtime.to_dict(),
        }


def gguf_row_weights(qtype: int, row_bytes: int) -> int:
    """Weights in one row of `row_bytes` bytes of GGUF blocks."""
    from engine.gguf.quant_types import GGMLType, block_shape

    weights, nbytes = block_shape(GGMLType(qtype))
    return row_bytes // nbytes * weights


def _count_weights(model: torch.nn.Module) -> int:
    """Weights in the model, counting a quantized layer's integer weights once (not scales)."""
    total = sum(p.numel() for p in model.parameters())
    for name, buffer in model.named_buffers():
        if name.endswith(".weight"):
            total += buffer.numel() * (2 if buffer.dtype == torch.uint8 else 1)
    seen: set[int] = set()  # GGUF blocks: a tied head shares the embedding's
    for module in model.modules():
        raw = getattr(module, "raw", None)
        if isinstance(raw, torch.Tensor) and id(raw) not in seen:
            seen.add(id(raw))
            total += raw.shape[0] * gguf_row_weights(module.qtype, raw.shape[1])
    return total


def _weights_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters and weight buffers (quantized weights, scales), not the KV cache."""
    tensors = list(model.parameters()) + [
        b for name, b in model.named_buffers() if name.rsplit(".", 1)[-1] in _WEIGHT_BUFFERS
    ]
    return sum(t.numel() * t.element_size() for t in tensors)


_WEIGHT_BUFFERS = {"weight", "scales", "scales_zeros", "raw"}


def read_model_args(folder: Path) -> ModelArgs:
    """The model's shape before loading it, for timing kernels on its real matrix sizes.

    Meta's params.json has no vocabulary size; a Llama 2 one stands in (only the head's timing
    would use it).
    """
    layout = detect_layout(folder)
    return read_args(folder, layout, vocab_hint=32000 if layout == "meta" else None)


def dtype_name(dtype: torch.dtype) -> str:
    """The user-facing name of a torch dtype ("bfloat16", not "torch.bfloat16")."""
    return str(dtype).removeprefix("torch.")


def pick_device(name: str | None = None) -> torch.device:
    """The device asked for, or the best one present: CUDA, then Apple MPS, then CPU."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise EngineError(f"unknown device '{name}'; use cpu, cuda or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(
            f"device '{name}' was asked for but no CUDA GPU is available; use --device cpu"
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise EngineError(
            "device 'mps' was asked for but Apple MPS is not available; use --device cpu"
        )
    return torch.device(name)


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The dtype asked for, or a 16-bit one that the device computes well ("auto")."""
    if name in (None, "", "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.bfloat16
    try:
        return DTYPES[name]
    except KeyError:
        raise EngineError(f"unknown dtype '{name}'; use one of {', '.join(DTYPES)}") from None


def load_model(
    path: str | Path,
    dtype: str | None = "auto",
    device: str | None = None,
    progress: Progress | None = None,
    max_context: int | None = None,
    quant: str | None = None,
) -> LoadedModel:
    """Load weights, tokenizer and chat template, and allocate the KV cache.

    `max_context` caps the cache (and so the memory it takes) below the model's own maximum.
    `quant` "int8" or "int4" stores a folder's linear weights quantized (activations stay in
    `dtype`); the quantized weights are cached on disk, so later loads are as quick as a 16-bit
    one. A GGUF file runs its own blocks ("file", its default) or dequantized ("none"); None
    means the default of what `path` is.
    """
    report = progress or (lambda fraction, message: None)
    try:
        wanted = check_quant(quant) if quant not in (None, "", "auto") else None
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    folder = resolve_model(str(path))
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    started = time.perf_counter()
    if folder.is_file():
        opened = _open_gguf(folder, torch_dtype, dev, wanted or "file", report)
    else:
        opened = _open_folder(folder, torch_dtype, dev, wanted or "none", report)
    model, args, tokenizer, runtime = opened.model, opened.args, opened.tokenizer, opened.runtime
    if dev.type == "cpu":
        from engine.kernels.compiled_ops import use_compiled_ops
        from engine.kernels.native import load as load_native

        kernel = load_native()
        if use_compiled_ops(model, kernel):
            runtime["native_ops"] = True
        if kernel is not None:
            from engine.kernels.gguf_step import use_compiled_blocks

            if use_compiled_blocks(model, kernel):
                runtime["native_blocks"] = True
        if kernel is not None and (runtime.get("native_ops") or runtime.get("native_isa")):
            runtime["native"] = kernel.isa  # the compiled build that runs (done line, tooltip)
        elif kernel is None:
            from engine.kernels.native import unavailable_reason

            runtime["native_unavailable"] = unavailable_reason() or "not loaded"

    context = choose_context(args, torch_dtype, dev, max_context)
    report(0.96, "Allocating the KV cache")
    try:
        model.setup_cache(context.length)
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        raise EngineError(
            f"not enough memory for the KV cache of {context.length} tokens on {dev} "
            f"({str(exc).splitlines()[0][:120]})",
            Remedy.LESS_MEMORY,
        ) from None

    weights_bytes = _weights_bytes(model)
    log.info(
        "loaded %s (%s, %s, quant %s, kernel %s, %s threads) in %.2f s",
        folder,
        dev,
        dtype_name(torch_dtype),
        opened.quant,
        runtime.get("kernel"),
        runtime.get("threads"),
        time.perf_counter() - started,
    )
    report(1.0, "Ready")
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        args=args,
        name=model_display_name(folder),
        path=folder,
        device=dev,
        dtype=torch_dtype,
        chat_template=opened.chat_template,
        weights_bytes=weights_bytes,
        max_context=context.length,
        context_note=context.note,
        quant=opened.quant,
        runtime=RuntimeInfo(**{"quant": opened.quant, **runtime}),
        context_hint=context.hint,
        file_format=opened.file_format,
        load_notes=opened.notes,
    )


@dataclass
class _Opened:
    """A built model before its KV cache: what the two kinds of model files have in common."""

    model: Transformer
    args: ModelArgs
    tokenizer: Tokenizer
    chat_template: str | None
    quant: str
    runtime: dict
    file_format: str | None = None
    notes: list[str] = field(default_factory=list)


def _open_folder(
    folder: Path, torch_dtype: torch.dtype, dev: torch.device, quant: str, report: Progress
) -> _Opened:
    """An HF or Meta folder: tokenizer.model, config, weights (quantized if asked)."""
    from engine.kernels.tuning import choose_runtime

    if quant == "file":
        raise EngineError(
            f"--quant file keeps a GGUF file's own blocks; {folder} is a model folder: use none, "
            "int8 or int4"
        )
    detect_layout(folder)  # a clear message for a folder that holds no model at all
    report(0.0, f"Reading {folder.name}")
    tokenizer_file = folder / "tokenizer.model"
    if not (tokenizer_file.exists() or tokenizer_file.is_symlink()):
        raise EngineError(
            f"{tokenizer_file} is missing: a Llama model folder needs its SentencePiece "
            "tokenizer.model"
        )
    require_regular_file(tokenizer_file)
    tokenizer = Tokenizer(tokenizer_file)
    tokenizer.prefix_rule = prefix_rule(folder)

    def weights_progress(fraction: float, message: str) -> None:
        report(0.02 + 0.93 * fraction, message)

    shape_args = read_model_args(folder)
    runtime = choose_runtime(shape_args, torch_dtype, dev, quant)
    args, model = load_transformer(
        folder,
        torch_dtype,
        dev,
        progress=weights_progress,
        quant=quant,
        pack=runtime.get("kernel") != "plain",
    )
    runtime.update(getattr(model, "quant_info", {}))
    if quant != "none":
        from engine.kernels.quant import use_fused_projections

        use_fused_projections(model)
    if runtime.get("kernel") in ("int8native", "int4native"):
        from engine.kernels.quant import use_native

        runtime["native_isa"] = use_native(model)
    if tokenizer.vocab_size > args.vocab_size:
        raise EngineError(
            f"{tokenizer_file} has {tokenizer.vocab_size} tokens but the weights in {folder} only "
            f"{args.vocab_size}: the tokenizer does not belong to this model"
        )
    return _Opened(model, args, tokenizer, load_chat_template(folder), quant, runtime)


def _open_gguf(
    path: Path, torch_dtype: torch.dtype, dev: torch.device, quant: str, report: Progress
) -> _Opened:
    """A GGUF file: its own blocks on the engine's kernels, or dequantized
    (engine/loading/gguf_model.py)."""
    from engine.kernels.tuning import choose_runtime
    from engine.loading.gguf_model import file_runtime, open_gguf

    def weights_progress(fraction: float, message: str) -> None:
        report(0.02 + 0.93 * fraction, message)

    if quant == "none":
        from engine.loading.gguf_model import peek_args

        runtime = choose_runtime(peek_args(path), torch_dtype, dev, "none")
        pack = runtime.get("kernel") != "plain"
    else:
        runtime, pack = {}, False
    opened = open_gguf(path, torch_dtype, dev, quant, weights_progress, pack=pack)
    if quant == "file":
        runtime = file_runtime(opened.model, dev)
    return _Opened(
        opened.model,
        opened.args,
        opened.tokenizer,
        opened.chat_template,
        quant,
        runtime,
        file_format=f"GGUF {opened.quant_name}",
        notes=opened.notes,
    )


def model_display_name(folder: Path) -> str:
    """A readable name: the repo id for Hub cache snapshots, else the folder's name."""
    from engine.loading.builtin import DISPLAY_NAME, builtin_dir

    if folder.resolve() == builtin_dir().resolve():
        return DISPLAY_NAME
    parts = folder.resolve().parts
    # HF cache: .../models--owner--name/snapshots/<commit>
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    return folder.name
