"""Find, check and load Llama weights from either layout, cheaply and strictly.

* Hugging Face: config.json + model.safetensors (or shards + model.safetensors.index.json).
* Meta: params.json + consolidated.NN.pth (torch.load with weights_only=True, mmap=True).

The model is built on the meta device and receives its weights by assignment. Each tensor is read
from a private memory mapping of the checkpoint and copied (cast once) into the model's own memory,
one tensor at a time, with the mapped pages released right after: peak memory stays close to the
size of the weights in the chosen dtype, with no whole-model float32 detour.
"""

from __future__ import annotations

import ctypes
import logging
import math
import mmap
import pickle
import re
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from engine.errors import EngineError
from engine.files import member_name, parse_json, require_regular_file
from engine.kernels.linear import can_pack, pack_weight, use_kernel_linears
from engine.model.config import ModelArgs, read_json
from engine.model.transformer import Transformer

log = logging.getLogger(__name__)

Layout = Literal["hf", "meta"]
Progress = Callable[[float, str], None]

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


# ----------------------------------------------------------------------------------------------
# Building the model


def read_args(folder: Path, layout: Layout, vocab_hint: int | None = None) -> ModelArgs:
    """ModelArgs from config.json or params.json."""
    if layout == "hf":
        path = folder / "config.json"
        return ModelArgs.from_hf_config(read_json(path), source=str(path))
    path = folder / "params.json"
    return ModelArgs.from_meta_params(read_json(path), vocab_hint or -1, source=str(path))


def _release_pages(tensor: torch.Tensor) -> None:
    """Tell the kernel we are done with a file-mapped tensor's pages (Linux/macOS).

    Only for tensors backed by an unmodified file mapping: the pages are dropped from this
    process's memory and would simply be read from the file again if touched. Without this, the
    pages read while copying would stay resident next to the copy until the mapping goes away.
    """
    if tensor.device.type != "cpu" or sys.platform not in ("linux", "darwin"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        page = mmap.PAGESIZE
        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        aligned = (start + page - 1) // page * page
        length = (end - aligned) // page * page
        if length > 0:
            libc.madvise(ctypes.c_void_p(aligned), ctypes.c_size_t(length), 4)  # MADV_DONTNEED
    except (OSError, AttributeError):  # pragma: no cover - best effort only
        pass


COPY_CHUNK_BYTES = 16 * 2**20
"""Big tensors are copied in row blocks of about this size, releasing each source block after."""


class _Arena:
    """One allocation for every weight, carved into aligned views.

    Fresh anonymous memory gets transparent huge pages, and batch-1 decoding streams every weight
    per token, so weights copied here decode ~20% faster than straight from the file mapping
    (benchmarks/decode.py). One block instead of ~200 also avoids rounding each tensor up to a
    2 MiB huge page, which would add up to hundreds of MB of resident memory.
    """

    ALIGN = 64

    def __init__(self, shapes: list[tuple[int, ...]], dtype: torch.dtype) -> None:
        self.dtype = dtype
        sizes = [self._aligned(math.prod(s) * dtype.itemsize) for s in shapes]
        self.buffer = torch.empty(sum(sizes), dtype=torch.uint8)
        self.offset = 0

    @classmethod
    def _aligned(cls, n: int) -> int:
        return (n + cls.ALIGN - 1) // cls.ALIGN * cls.ALIGN

    def rewind(self) -> None:
        """Hand out the same memory again (for a scratch buffer)."""
        self.offset = 0

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        nbytes = math.prod(shape) * self.dtype.itemsize
        view = self.buffer[self.offset : self.offset + nbytes].view(self.dtype).view(shape)
        self.offset += self._aligned(nbytes)
        return view


def _materialise(
    src: torch.Tensor,
    dtype: torch.dtype,
    device: torch.device,
    arena: _Arena | None,
    release: bool,
) -> torch.Tensor:
    """A private copy of the tensor in the wanted dtype, on the wanted device (cast once).

    With `release`, the source is file-mapped and its pages are dropped block by block as they
    are copied, so even the 130 MB embedding never sits in memory twice.
    """
    if arena is None:
        out = src.to(device=device, dtype=dtype, copy=True)
        if release:
            _release_pages(src)
        return out
    if dtype == torch.float32 and src.dim() == 2:
        # fp32 matrix-vector products run faster on a column-major weight (x @ W^T then reads
        # W^T contiguously); the copy is made anyway, so write it transposed for free.
        out = arena.take((src.shape[1], src.shape[0])).t()
    else:
        out = arena.take(tuple(src.shape))
    _copy_blocks(src, out, release)
    return out


def _copy_blocks(src: torch.Tensor, out: torch.Tensor, release: bool) -> None:
    """out[:] = src (casting), in row blocks; with `release`, each source block's pages go after."""
    if src.dim() == 0:
        out.copy_(src)
        return
    row_bytes = src[0].numel() * src.element_size() if src.dim() > 1 else src.nbytes
    rows = max(1, COPY_CHUNK_BYTES // max(1, row_bytes)) if src.dim() > 1 else len(src)
    for start in range(0, src.shape[0], rows):
        block = src[start : start + rows]
        out[start : start + rows].copy_(block)
        if release and src.is_contiguous():
            _release_pages(block)


_LINEAR_WEIGHT = re.compile(r"(^output|\.w[qkvo123])\.weight$")
"""Weights of `engine.kernels.linear.Linear` layers, packed for oneDNN on CPU when it can."""


def _pack(
    src: torch.Tensor, dtype: torch.dtype, scratch: _Arena | None, release: bool
) -> torch.Tensor:
    """The weight in `dtype`, reordered for oneDNN.

    A weight already in the wanted dtype is packed straight from the file mapping. One that needs
    a cast is copied into `scratch` first, a buffer reused for every weight, so no temporaries
    churn the allocator (freed ones would stay in the heap and raise the resident size).
    """
    if src.dtype == dtype and src.is_contiguous():
        out = pack_weight(src)
        if release:
            _release_pages(src)
        return out
    if scratch is None:
        scratch = _Arena([tuple(src.shape)], dtype)
    scratch.rewind()
    plain = scratch.take(tuple(src.shape))
    _copy_blocks(src, plain, release)
    return pack_weight(plain)


_LAYER_INDEX = re.compile(r"layers\.(\d+)\.")


def _check_layer_count(args: ModelArgs, sources: dict, folder: Path, origin: Path) -> None:
    """Compare the config's layer count with the layers the weights hold, before building.

    Building the model costs time per layer even on the meta device, so a config claiming ten
    million layers must be refused here, from the tensor names alone.
    """
    present = {int(m.group(1)) for name in sources if (m := _LAYER_INDEX.match(name))}
    held = max(present) + 1 if present else 0
    if args.n_layers > held:
        raise EngineError(
            f"{folder}: the weights lack layers.{held}. (and any after it): {origin.name} says "
            f"{args.n_layers} layers but the checkpoint holds {held}; the checkpoint is "
            "incomplete or not a Llama model"
        )


def load_transformer(
    folder: Path,
    dtype: torch.dtype,
    device: torch.device,
    progress: Progress | None = None,
    quant: str = "none",
    pack: bool = True,
) -> tuple[ModelArgs, Transformer]:
    """Build the model for `folder` with every weight checked by name and shape.

    `quant` "int8"/"int4" quantizes the linear weights through engine.kernels.quant_load's disk
    cache;
    `pack=False` keeps 16-bit CPU weights plain (the measured kernel choice,
    engine/kernels/tuning.py).
    """
    report = progress or (lambda fraction, message: None)
    layout = detect_layout(folder)

    if layout == "hf":
        args = read_args(folder, layout)
        config = read_json(folder / "config.json")
        sources = {}
        release_pages = True  # every safetensors read is a private mapping of the file
        for src in _hf_sources(folder):
            ours = _hf_name(src.name)
            if ours is not None:
                sources[ours] = src
        if "output.weight" not in sources and config.get("tie_word_embeddings"):
            sources["output.weight"] = sources.get("tok_embeddings.weight")  # type: ignore[assignment]
    else:
        state = _meta_state(folder)
        # One shard is one file mapping; merged shards are already private copies.
        release_pages = len(_meta_shards(folder)) == 1
        emb = state.get("tok_embeddings.weight")
        args = read_args(folder, layout, vocab_hint=emb.shape[0] if emb is not None else None)
        sources = {
            name: TensorSource(name, tuple(t.shape), t.dtype, (lambda t=t: t), str(folder))
            for name, t in state.items()
            if not _IGNORED.search(name)
        }

    origin = folder / ("config.json" if layout == "hf" else "params.json")
    _check_layer_count(args, sources, folder, origin)
    with torch.device("meta"):
        model = Transformer(args)
        use_kernel_linears(model)
    expected = dict(model.state_dict())

    missing = sorted(set(expected) - {k for k, v in sources.items() if v is not None})
    if missing:
        raise EngineError(
            f"{folder}: the weights lack '{missing[0]}'"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            + f" that {origin.name} implies; the checkpoint is incomplete or not a Llama model"
        )
    unexpected = sorted(set(sources) - set(expected))
    if unexpected:
        raise EngineError(
            f"{sources[unexpected[0]].origin}: unexpected tensor '{sources[unexpected[0]].name}'; "
            "this is not a Llama checkpoint Loopchat understands"
        )
    for name, param in expected.items():
        src = sources[name]
        if tuple(src.shape) != tuple(param.shape):
            raise EngineError(
                f"{src.origin}: tensor '{src.name}' has shape {list(src.shape)} but "
                f"{origin.name} implies {list(param.shape)}"
            )

    if quant != "none":
        from engine.kernels.quant_load import load_quantized

        model.quant_info = load_quantized(  # type: ignore[assignment]
            model,
            folder,
            {name: tuple(param.shape) for name, param in expected.items()},
            lambda name: sources[name].read(),
            quant,
            dtype,
            device,
            _release_pages if release_pages else (lambda tensor: None),
            report,
        )
        model.requires_grad_(False)
        model.eval()
        return args, model

    state: dict[str, torch.Tensor] = {}
    total = len(expected)
    arena = scratch = None
    packed = set()
    order = list(expected)
    if device.type == "cpu":
        if pack and can_pack(dtype):
            packed = {name for name in expected if _LINEAR_WEIGHT.search(name)}
            # The output head (vocab x dim) is the largest matrix: pack it first, while little
            # else is resident, so its transient second copy never adds to the final peak.
            order.sort(key=lambda name: name != "output.weight")
            in_layers = [expected[name] for name in packed if name != "output.weight"]
            largest = max(in_layers, key=lambda p: p.numel())
            scratch = _Arena([tuple(largest.shape)], dtype)
        arena = _Arena([tuple(p.shape) for n, p in expected.items() if n not in packed], dtype)
    for i, name in enumerate(order):
        src = sources[name].read()
        if name in packed:
            own_scratch = None if name == "output.weight" else scratch
            state[name] = _pack(src, dtype, own_scratch, release_pages)
        else:
            state[name] = _materialise(src, dtype, device, arena, release_pages)
        if i % 8 == 0 or i == total - 1:
            report((i + 1) / total, f"Loading weights {i + 1}/{total}")
    model.load_state_dict(state, assign=True, strict=True)
    # Norm weights may stay in the checkpoint dtype; buffers and parameters must be on `device`.
    model.requires_grad_(False)
    model.eval()
    return args, model
