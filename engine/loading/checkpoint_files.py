"""Read Llama checkpoint files of either layout, strictly, without loading a tensor too soon.

* Hugging Face: config.json + model.safetensors (or shards + model.safetensors.index.json).
* Meta: params.json + consolidated.NN.pth (torch.load with weights_only=True, mmap=True).

Why a module of its own: engine/loading/checkpoint.py builds the model and copies or packs its
weights; this one only finds and reads what a folder holds: its layout (`detect_layout`), its
ModelArgs (`read_args`), each safetensors header checked the way the format defines it, Meta's
shards merged, Hugging Face names mapped to ours, and every tensor as a `TensorSource` that reads
it through its own short-lived private memory mapping, on demand.
"""

from __future__ import annotations

import math
import pickle
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from engine.errors import EngineError
from engine.files import member_name, parse_json, require_regular_file
from engine.model.config import ModelArgs, read_json

Layout = Literal["hf", "meta"]

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
}

# Hugging Face parameter names -> ours (Meta's names).
_HF_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_HF_TOP_NAMES = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
_IGNORED = re.compile(r"(rotary_emb\.inv_freq|^rope\.freqs)$")
"""Buffers some checkpoints carry that the model recomputes."""

# Meta's model-parallel shards split each weight along one dimension (fairscale layers).
_META_SPLIT_DIM = {
    "tok_embeddings.weight": 1,
    "output.weight": 0,
    "wq.weight": 0,
    "wk.weight": 0,
    "wv.weight": 0,
    "wo.weight": 1,
    "w1.weight": 0,
    "w3.weight": 0,
    "w2.weight": 1,
}


def detect_layout(folder: Path) -> Layout:
    """Which checkpoint layout a folder holds, or a message saying what a model folder needs."""
    if not folder.is_dir():
        raise EngineError(f"{folder} is not a folder; choose a model folder")
    has_config = (folder / "config.json").is_file()
    has_safetensors = any(folder.glob("*.safetensors"))
    has_params = (folder / "params.json").is_file()
    has_pth = any(folder.glob("consolidated.*.pth"))
    if has_config and has_safetensors:
        return "hf"
    if has_params and has_pth:
        return "meta"
    if has_config and any(folder.glob("pytorch_model*.bin")):
        raise EngineError(
            f"{folder} has only pytorch_model*.bin weights (pickle files); Loopchat loads "
            "*.safetensors: download the model's safetensors files"
        )
    if has_config:
        raise EngineError(f"{folder} has config.json but no *.safetensors weights")
    if has_params:
        raise EngineError(f"{folder} has params.json but no consolidated.*.pth weights")
    raise EngineError(
        f"{folder} holds no model: expected config.json + *.safetensors (Hugging Face layout) "
        "or params.json + consolidated.*.pth (Meta layout), each with tokenizer.model"
    )


# ----------------------------------------------------------------------------------------------
# Reading tensors


@dataclass(frozen=True)
class TensorSource:
    """Where one checkpoint tensor lives, and how to read it without loading its neighbours."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    read: Callable[[], torch.Tensor]
    origin: str


MAX_HEADER_BYTES = 100 * 2**20
"""safetensors' own limit for the JSON header."""


def _safetensors_header(path: Path) -> tuple[dict, int, int]:
    """Parse and validate a safetensors header; return (entries, data start, file size).

    The header is checked the way the format defines it, before any tensor is read: each entry a
    known dtype, a shape of non-negative ints and two int offsets 0 <= begin <= end matching the
    shape; the tensors, sorted by offset, must tile the data section exactly (contiguous, no
    overlap, no gap, nothing after). Otherwise a crafted or damaged file would load garbage
    weights silently or fail later with a TypeError.
    """
    require_regular_file(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise EngineError(f"{path} is truncated (no safetensors header); download it again")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > min(size - 8, MAX_HEADER_BYTES):
                raise EngineError(f"{path} is not a valid safetensors file (bad header length)")
            raw = f.read(header_len)
    except OSError as exc:
        raise EngineError(f"{path} cannot be read ({exc.strerror or exc})") from None
    try:
        header = parse_json(raw.decode("utf-8"), str(path))
    except (EngineError, UnicodeDecodeError):
        raise EngineError(f"{path} is corrupt (unreadable safetensors header)") from None
    if not isinstance(header, dict):
        raise EngineError(f"{path} is corrupt (safetensors header is not an object)")
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    spans = []
    for name, entry in header.items():
        begin, end = _check_entry(path, name, entry)
        spans.append((begin, end, name))
    _check_tiling(path, sorted(spans), size - data_start)
    return header, data_start, size


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_entry(path: Path, name: str, entry: object) -> tuple[int, int]:
    """One header entry's (begin, end), or an error naming the tensor and what is wrong."""
    where = f"{path}: tensor '{name}'"
    if not isinstance(entry, dict):
        raise EngineError(f"{where} has no header entry (the file is corrupt)")
    dtype_name = entry.get("dtype")
    if not isinstance(dtype_name, str) or dtype_name not in SAFETENSORS_DTYPES:
        raise EngineError(
            f"{where} has unsupported or missing dtype {dtype_name!r} in its header "
            f"(Loopchat reads {', '.join(SAFETENSORS_DTYPES)})"
        )
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise EngineError(
            f"{where} has shape {shape!r} in its header; a shape is a list of non-negative "
            "integers (the file is corrupt)"
        )
    offsets = entry.get("data_offsets")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_int(o) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise EngineError(
            f"{where} has data_offsets {offsets!r}; they must be two integers "
            "0 <= begin <= end (the file is corrupt)"
        )
    begin, end = offsets
    if end - begin != math.prod(shape) * SAFETENSORS_DTYPES[dtype_name].itemsize:
        raise EngineError(f"{path} is corrupt: tensor '{name}' has inconsistent offsets")
    return begin, end


def _check_tiling(path: Path, spans: list[tuple[int, int, str]], data_size: int) -> None:
    """Tensors sorted by offset must cover the data section exactly, one after the other."""
    position = 0
    for begin, end, name in spans:
        if begin != position:
            problem = "overlaps the previous one" if begin < position else "leaves a gap before it"
            raise EngineError(
                f"{path} is corrupt: tensor '{name}' starts at byte {begin} and {problem} "
                f"(expected {position})"
            )
        position = end
    if position > data_size:
        raise EngineError(
            f"{path} is truncated: its tensors need {position} bytes of data but the file has "
            f"{max(data_size, 0)}; download it again"
        )
    if position < data_size:
        raise EngineError(
            f"{path} is corrupt: {data_size - position} bytes after the last tensor belong to "
            "no tensor"
        )


def _safetensors_sources(path: Path) -> Iterator[TensorSource]:
    """Tensors of one safetensors file, each read through its own short-lived private mmap.

    The caller copies the tensor into the model's memory right away; dropping the view unmaps the
    file, so the checkpoint's pages never pile up next to the copies.
    """
    header, data_start, size = _safetensors_header(path)
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        shape = tuple(int(d) for d in entry["shape"])

        def read(begin=begin, end=end, dtype=dtype, shape=shape) -> torch.Tensor:
            storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
            raw = torch.empty(0, dtype=torch.uint8).set_(storage)[
                data_start + begin : data_start + end
            ]
            if (data_start + begin) % dtype.itemsize:
                raw = raw.clone()  # unaligned: one copy so it can be viewed as `dtype`
            return raw.view(dtype).view(shape)

        yield TensorSource(name, shape, dtype, read, str(path))


def _hf_sources(folder: Path) -> Iterator[TensorSource]:
    index = folder / "model.safetensors.index.json"
    if index.exists() or index.is_symlink():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise EngineError(f"{index} has no weight_map")
        paths = {member_name(folder, name, index.name) for name in weight_map.values()}
        for path in paths:
            if not path.exists():
                raise EngineError(
                    f"{path} is missing (listed in {index.name}); the download is incomplete"
                )
        files = sorted(paths)
    else:
        files = sorted(folder.glob("*.safetensors"))
    for path in files:
        yield from _safetensors_sources(path)


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    require_regular_file(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise EngineError(
            f"{path} needs arbitrary code to unpickle ({first[:120]}); Loopchat only loads "
            "plain tensors — use the official checkpoint or its safetensors version"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise EngineError(
            f"{path} is not a readable PyTorch checkpoint ({exc}); download it again"
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise EngineError(f"{path} does not hold a plain dictionary of tensors")
    return data


def _meta_shards(folder: Path) -> list[Path]:
    shards = sorted(folder.glob("consolidated.*.pth"))
    numbers = [int(p.suffixes[0][1:]) for p in shards if p.suffixes[0][1:].isdigit()]
    if numbers != list(range(len(shards))):
        raise EngineError(
            f"{folder}: consolidated.*.pth shards are not numbered 00..{len(shards) - 1:02d}"
        )
    return shards


def _meta_state(folder: Path) -> dict[str, torch.Tensor]:
    """Meta's tensors, merged across model-parallel shards along each weight's split dimension."""
    parts = [_torch_load(p) for p in _meta_shards(folder)]
    if len(parts) == 1:
        return parts[0]
    merged: dict[str, torch.Tensor] = {}
    for name in parts[0]:
        pieces = [part.get(name) for part in parts]
        if any(p is None for p in pieces):
            raise EngineError(f"{folder}: tensor '{name}' is missing from some consolidated shards")
        dim = _META_SPLIT_DIM.get(
            name.rsplit(".", 2)[-2] + ".weight" if "layers." in name else name
        )
        merged[name] = pieces[0] if dim is None else torch.cat(pieces, dim=dim)
    return merged


def _hf_name(name: str) -> str | None:
    """Our name for an HF tensor name (None for buffers we recompute)."""
    if _IGNORED.search(name):
        return None
    if name in _HF_TOP_NAMES:
        return _HF_TOP_NAMES[name]
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if match and match.group(2) in _HF_LAYER_NAMES:
        return f"layers.{match.group(1)}.{_HF_LAYER_NAMES[match.group(2)]}"
    return name  # unknown: reported as unexpected by the strict check


def read_args(folder: Path, layout: Layout, vocab_hint: int | None = None) -> ModelArgs:
    """ModelArgs from config.json or params.json."""
    if layout == "hf":
        path = folder / "config.json"
        return ModelArgs.from_hf_config(read_json(path), source=str(path))
    path = folder / "params.json"
    return ModelArgs.from_meta_params(read_json(path), vocab_hint or -1, source=str(path))
