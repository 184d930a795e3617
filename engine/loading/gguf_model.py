"""Open a GGUF file as a Loopchat model: shape from the metadata, tokenizer from the vocabulary,
weights either as the file's own quantized blocks (`quant="file"`) or dequantized (`"none"`).

Why no permutation of wq/wk: llama.cpp's converter turns Hugging Face's half-split rotary rows
back into Meta's interleaved order (its `permute` is the inverse of transformers' conversion
script), and llama.cpp rotates adjacent pairs for Llama. A GGUF file's Q/K rows are therefore
exactly Meta's, which the model runs with `rope_interleaved=True` (as for a Meta checkpoint); the
test against transformers' GGUF loader (which un-permutes to its own layout) checks it.

Why the blocks are used in place: the file's tensors are memory-mapped (privately, never written)
and `GGUFLinear` reads them as they are, so a Q4_K_M file opens without a quantization pass, takes
the file's size in memory, and a second open is as fast as the first (the pages are cached by the
OS, not by Loopchat). Types without a compiled product are converted to Q8_0 blocks while loading
(one line in the load note says so).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import EngineError
from engine.gguf.compat import quant_name, unsupported_reason
from engine.gguf.dequant import dequantize
from engine.gguf.quant_types import GGMLType
from engine.gguf.reader import GGUFFile, TensorInfo
from engine.gguf.vocab import sentencepiece_proto
from engine.loading.checkpoint import build_model, check_layer_count, check_sources
from engine.loading.checkpoint_files import TensorSource
from engine.model.config import ModelArgs
from engine.model.transformer import Transformer
from engine.text.tokenizer import Tokenizer

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

GGUF_QUANTS = ("file", "none")
"""Weight formats a GGUF file opens in: its own blocks, or dequantized into the dtype."""
FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
GGUF_CONTEXT_DEFAULT = 4096
"""Context when a file does not say (Llama 2's)."""

_LAYER_NAMES = {
    "attn_norm.weight": "attention_norm.weight",
    "attn_q.weight": "attention.wq.weight",
    "attn_k.weight": "attention.wk.weight",
    "attn_v.weight": "attention.wv.weight",
    "attn_output.weight": "attention.wo.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn_gate.weight": "feed_forward.w1.weight",
    "ffn_down.weight": "feed_forward.w2.weight",
    "ffn_up.weight": "feed_forward.w3.weight",
}
_TOP_NAMES = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}
_IGNORED = {"rope_freqs.weight"}
"""Llama 3.1's rotary frequency factors; refused below when they are not all one."""


def our_name(name: str) -> str:
    """The engine's name for a GGUF tensor name (unknown names come back as they are, and are
    then reported as unexpected by the strict check)."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    match = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"layers.{int(match.group(1))}.{_LAYER_NAMES[match.group(2)]}"
    return name


def _int(meta: Mapping[str, Any], key: str, path: Path, default: int | None = None) -> int:
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        if value is None:
            raise EngineError(f"{path}: the metadata lacks {key}; the file is not a complete model")
        raise EngineError(f"{path}: metadata {key} is {value!r}, not a whole number")
    if not 0 < value < 2**31:
        raise EngineError(f"{path}: metadata {key} is {value}; it must be positive and sensible")
    return value


def _float(meta: Mapping[str, Any], key: str, path: Path, default: float) -> float:
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EngineError(f"{path}: metadata {key} is {value!r}, not a finite number")
    return float(value)


def gguf_args(meta: Mapping[str, Any], path: Path) -> ModelArgs:
    """ModelArgs from a llama-architecture file's metadata (checked against the tensors later)."""
    reason = unsupported_reason(meta)
    if reason:
        raise EngineError(f"{path}: {reason}")
    arch = "llama"
    heads = _int(meta, f"{arch}.attention.head_count", path)
    dim = _int(meta, f"{arch}.embedding_length", path)
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = len(tokens) if isinstance(tokens, list) else 0
    vocab = _int(meta, f"{arch}.vocab_size", path, default=vocab or None)
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise EngineError(
            f"{path}: rope scaling '{scaling}' is not supported (Llama 2 has none); "
            "Loopchat runs Llama 2-family models"
        )
    args = ModelArgs(
        dim=dim,
        n_layers=_int(meta, f"{arch}.block_count", path),
        n_heads=heads,
        n_kv_heads=_int(meta, f"{arch}.attention.head_count_kv", path, default=heads),
        vocab_size=vocab,
        hidden_dim=_int(meta, f"{arch}.feed_forward_length", path),
        norm_eps=_float(meta, f"{arch}.attention.layer_norm_rms_epsilon", path, 1e-5),
        rope_theta=_float(meta, f"{arch}.rope.freq_base", path, 10000.0),
        max_seq_len=_int(meta, f"{arch}.context_length", path, default=GGUF_CONTEXT_DEFAULT),
        bos_id=_int(meta, "tokenizer.ggml.bos_token_id", path, default=1) if vocab else 1,
        eos_id=_int(meta, "tokenizer.ggml.eos_token_id", path, default=2) if vocab else 2,
        rope_interleaved=True,
    )
    rotary = meta.get(f"{arch}.rope.dimension_count", args.head_dim)
    if rotary != args.head_dim:
        raise EngineError(
            f"{path}: rotary embeddings over {rotary} of {args.head_dim} head dimensions are not "
            "Llama 2's; Loopchat runs Llama 2-family models"
        )
    return args


def peek_args(path: Path) -> ModelArgs:
    """The model's shape from the metadata alone (for timing kernels before loading)."""
    with GGUFFile(path) as gguf:
        return gguf_args(gguf.metadata, path)


def file_runtime(model: nn.Module, device: torch.device) -> dict[str, Any]:
    """Kernel and threads for a model running a file's own blocks.

    Nothing to measure: there is one kernel per block type (the compiled one, or torch's
    dequantize-and-multiply where no build is there), so only the thread count is chosen, as for
    the measured formats: LOOPCHAT_THREADS, else the physical cores, with the decode governor."""
    from engine.kernels.quant import use_native
    from engine.kernels.threads import forced_threads, physical_cores
    from engine.kernels.tuning import cpu_model

    if device.type != "cpu":
        return {"kernel": "gguftorch", "threads": None, "kernel_source": "device"}
    forced = forced_threads()
    threads = forced or physical_cores()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    isa = use_native(model)
    runtime: dict[str, Any] = {
        "kernel": "ggufnative" if isa else "gguftorch",
        "kernel_source": "format",
        "threads": threads,
        "threads_source": "LOOPCHAT_THREADS" if forced else "cores",
        "cpu": cpu_model(),
        "thread_governor": not forced and physical_cores() > 1,
    }
    if isa:
        runtime["native_isa"] = isa
    return runtime


def gguf_tokenizer(gguf: GGUFFile) -> Tokenizer:
    """The SentencePiece tokenizer rebuilt from the file's vocabulary, with llama.cpp's prefix
    rule for GGUF files: a space prefix after every special token (Meta's chat format)."""
    proto = sentencepiece_proto(gguf.metadata, str(gguf.path))
    tokenizer = Tokenizer.from_proto(proto, gguf.path)
    tokenizer.prefix_rule = "always"
    return tokenizer


def gguf_chat_template(meta: Mapping[str, Any]) -> str | None:
    template = meta.get("tokenizer.chat_template")
    return template if isinstance(template, str) and template.strip() else None


def _sources(gguf: GGUFFile) -> dict[str, TensorInfo]:
    """The file's tensors by the engine's names; the output head falls back to the embedding."""
    infos: dict[str, TensorInfo] = {}
    for name, info in gguf.tensors.items():
        if name in _IGNORED:
            _check_rope_freqs(gguf, info)
            continue
        infos[our_name(name)] = info
    if "output.weight" not in infos and "tok_embeddings.weight" in infos:
        infos["output.weight"] = infos["tok_embeddings.weight"]  # tied head (as llama.cpp does)
    return infos


def _check_rope_freqs(gguf: GGUFFile, info: TensorInfo) -> None:
    if info.qtype not in FLOAT_TYPES:
        raise EngineError(f"{gguf.path}: rope_freqs.weight has type {info.qtype.name}")
    factors = dequantize(gguf.raw(info.name), info.qtype, info.shape)
    if not torch.all(factors == 1):
        raise EngineError(
            f"{gguf.path}: the file scales its rotary frequencies (Llama 3.1 style); Loopchat runs "
            "Llama 2-family models"
        )


def _read_dequantized(gguf: GGUFFile, info: TensorInfo, dtype: torch.dtype) -> torch.Tensor:
    return dequantize(gguf.raw(info.name), info.qtype, info.shape, dtype)


def _float_sources(
    gguf: GGUFFile, infos: Mapping[str, TensorInfo], dtype: torch.dtype
) -> dict[str, TensorSource]:
    """Sources for build_model that dequantize a tensor when it is read (--quant none).

    Dequantized straight into `dtype` (float32 arithmetic, as gguf-py; then one cast), so the peak
    is one float32 tensor beside the model, never a float32 model."""
    origin = str(gguf.path)
    return {
        ours: TensorSource(
            info.name,
            info.shape,
            dtype,
            (lambda info=info: _read_dequantized(gguf, info, dtype)),
            origin,
        )
        for ours, info in infos.items()
    }


@dataclass
class GGUFOpened:
    """What `open_gguf` hands the loader."""

    args: ModelArgs
    model: Transformer
    tokenizer: Tokenizer
    chat_template: str | None
    quant_name: str
    """The file's quantization as people name it ("Q4_K_M")."""
    notes: list[str] = field(default_factory=list)
    """One line each for what did not run as in the file (types converted to Q8_0)."""
    file: GGUFFile | None = None


def open_gguf(
    path: Path,
    dtype: torch.dtype,
    device: torch.device,
    quant: str,
    report: Progress,
    pack: bool = True,
) -> GGUFOpened:
    """Read, check and build a GGUF model. `quant` is "file" or "none" (GGUF_QUANTS)."""
    if quant not in GGUF_QUANTS:
        raise EngineError(
            f"{path.name} is a GGUF file: its weights run as in the file (--quant file) or "
            f"dequantized (--quant none), not as {quant}"
        )
    report(0.0, f"Reading {path.name}")
    gguf = GGUFFile(path)
    try:
        args = gguf_args(gguf.metadata, path)
        tokenizer = gguf_tokenizer(gguf)
        infos = _sources(gguf)
        name = quant_name(gguf.metadata, gguf.tensors)
        if quant == "none":
            model = build_model(
                args,
                _float_sources(gguf, infos, dtype),
                path,
                path,
                dtype,
                device,
                report,
                pack=pack,
            )
            notes: list[str] = []
        else:
            model, notes = _file_model(gguf, args, infos, dtype, device, report)
    except BaseException:
        gguf.close()
        raise
    if quant == "none":
        gguf.close()  # every weight is a private copy now
    if tokenizer.vocab_size > args.vocab_size:
        raise EngineError(
            f"{path}: the vocabulary has {tokenizer.vocab_size} tokens but the weights only "
            f"{args.vocab_size}: the file is inconsistent"
        )
    return GGUFOpened(
        args=args,
        model=model,
        tokenizer=tokenizer,
        chat_template=gguf_chat_template(gguf.metadata),
        quant_name=name,
        notes=notes,
        file=gguf if quant == "file" else None,
    )


def _file_model(
    gguf: GGUFFile,
    args: ModelArgs,
    infos: Mapping[str, TensorInfo],
    dtype: torch.dtype,
    device: torch.device,
    report: Progress,
) -> tuple[Transformer, list[str]]:
    """The model with the file's own blocks in GGUFLinear/GGUFEmbedding layers (mapped, not
    copied); norms and float weights materialised in `dtype`; other block types as Q8_0."""
    from engine.kernels.gguf_linear import KERNEL_TYPES, GGUFEmbedding, GGUFLinear
    from engine.kernels.linear import Linear

    with torch.device("meta"):
        model = Transformer(args)
    expected = dict(model.state_dict())
    sources = _float_sources(gguf, infos, dtype)  # names and shapes; nothing is read here
    check_layer_count(args, sources, gguf.path, gguf.path)
    check_sources(expected, sources, gguf.path, gguf.path)

    converted: dict[str, int] = {}
    blocks: dict[str, torch.Tensor] = {}  # one raw view per file tensor (a tied head shares it)

    def raw_of(info: TensorInfo) -> tuple[torch.Tensor, GGMLType]:
        if info.qtype in KERNEL_TYPES:
            if info.name not in blocks:
                blocks[info.name] = gguf.raw(info.name).to(device)
            return blocks[info.name], info.qtype
        converted[info.qtype.name] = converted.get(info.qtype.name, 0) + 1
        key = info.name + "/q8_0"
        if key not in blocks:
            blocks[key] = quantize_q8_0(dequantize(gguf.raw(info.name), info.qtype, info.shape))
            blocks[key] = blocks[key].to(device)
        return blocks[key], GGMLType.Q8_0

    total = len(expected)
    for i, (ours, param) in enumerate(expected.items()):
        info = infos[ours]
        owner_name, _, leaf = ours.rpartition(".")
        owner = model.get_submodule(owner_name)
        parent_name, _, child = owner_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if param.dim() == 1:  # a norm's weight: small, float
            tensor = _read_dequantized(gguf, info, dtype).to(device)
            setattr(owner, leaf, nn.Parameter(tensor, requires_grad=False))
        elif info.qtype in FLOAT_TYPES:
            tensor = _read_dequantized(gguf, info, dtype).to(device)
            if isinstance(owner, nn.Embedding):
                owner.weight = nn.Parameter(tensor, requires_grad=False)
            else:
                layer = Linear(tensor.shape[1], tensor.shape[0])
                layer.weight = nn.Parameter(tensor, requires_grad=False)
                setattr(parent, child, layer)
        else:
            raw, qtype = raw_of(info)
            rows, cols = info.shape
            if isinstance(owner, nn.Embedding):
                module: nn.Module = GGUFEmbedding(rows, cols, qtype, dtype)
            else:
                module = GGUFLinear(cols, rows, qtype, dtype)
            module.raw = raw
            setattr(parent, child, module)
        if i % 8 == 0 or i == total - 1:
            report((i + 1) / total, f"Mapping weights {i + 1}/{total}")
    model.requires_grad_(False)
    model.eval()
    notes = [
        f"{count} {name} tensor{'s' if count > 1 else ''} run as Q8_0 (Loopchat has no {name} "
        "kernel yet)"
        for name, count in sorted(converted.items())
    ]
    return model, notes


Q8_0_BLOCK = 32


def quantize_q8_0(weight: torch.Tensor) -> torch.Tensor:
    """Q8_0 blocks of a float [rows, cols] weight, [rows, cols / 32 * 34] bytes (llama.cpp's
    rule: d = max|w| / 127 as float16, q = round(w / d)); the engine's fallback for block types
    without a compiled product: 8 bits keep every 2-6-bit value within half a step of 1/127."""
    rows, cols = weight.shape
    blocks = weight.float().reshape(rows, cols // Q8_0_BLOCK, Q8_0_BLOCK)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    d = (amax / 127).to(torch.float16)
    inverse = torch.where(d.float() > 0, 1.0 / d.float(), torch.zeros_like(amax))
    q = torch.round(blocks * inverse).clamp(-127, 127).to(torch.int8)
    out = torch.cat([d.view(torch.uint8), q.view(torch.uint8)], dim=-1)  # [rows, nb, 34]
    return out.reshape(rows, -1).contiguous()
