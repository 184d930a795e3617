"""Whether Loopchat can run a GGUF file's model, and its quantization as people name it.

The one place that decides: the model chooser greys a file with `unsupported_reason`'s words, and
the loader refuses the same file with the same words. Both read the file's metadata only (no
tensor data), so asking is cheap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

LLAMA_2_FAMILY = "Loopchat runs Llama 2-family models"

FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    4: "Q4_1_F16",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}
"""llama.cpp's LLAMA_FTYPE numbering (`general.file_type`), as its quantizer names the result."""

FILE_TYPE_GUESSED = 1024
"""llama.cpp sets this bit when it guessed the file type from the tensors."""


def unsupported_reason(metadata: Mapping[str, object]) -> str | None:
    """Why Loopchat cannot run the model in a GGUF file with this metadata, or None if it can.

    One clause for a dialog or a greyed row (the caller adds the file's name): the architecture
    must be Llama, the file must be whole (not one part of a split model), and its tokenizer must
    be Llama's SentencePiece vocabulary.
    """
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        return f"the file does not say its architecture (general.architecture); {LLAMA_2_FAMILY}"
    if arch != "llama":
        return f"architecture '{arch}' is not a Llama model; {LLAMA_2_FAMILY}"
    parts = metadata.get("split.count")
    if isinstance(parts, int) and not isinstance(parts, bool) and parts > 1:
        return (
            f"the model is split into {parts} files and Loopchat opens single-file GGUF models; "
            "merge the parts with llama.cpp's `llama-gguf-split --merge` or pick a single-file "
            "quantization"
        )
    tokenizer = metadata.get("tokenizer.ggml.model")
    if tokenizer is None:
        return (
            "the file has no tokenizer (tokenizer.ggml.model); Loopchat needs the Llama "
            "vocabulary stored in the file"
        )
    if tokenizer == "gpt2":
        return f"Llama 3 files use a different tokenizer; {LLAMA_2_FAMILY}"
    if tokenizer != "llama":
        return f"tokenizer '{tokenizer}' is not Llama's SentencePiece tokenizer; {LLAMA_2_FAMILY}"
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, (list, tuple)) or not tokens:
        return (
            "the file has no vocabulary (tokenizer.ggml.tokens); Loopchat needs the Llama "
            "vocabulary stored in the file"
        )
    return None


def quant_name(metadata: Mapping[str, object], tensors: Mapping[str, object] | Iterable) -> str:
    """The file's quantization as people name it ("Q4_K_M", "Q8_0", "F16"...).

    From `general.file_type` when the file says it; otherwise the tensor type holding the most
    bytes (`tensors`: the reader's name -> TensorInfo mapping, or its values). "unknown" when
    neither tells.
    """
    file_type = metadata.get("general.file_type")
    if isinstance(file_type, int) and not isinstance(file_type, bool):
        name = FILE_TYPES.get(file_type & ~FILE_TYPE_GUESSED)
        if name is not None:
            return name
    infos = tensors.values() if isinstance(tensors, Mapping) else tensors
    by_type: Counter[str] = Counter()
    for info in infos:
        qtype = getattr(info, "qtype", None)
        if qtype is None:
            continue
        label = getattr(qtype, "name", None) or str(qtype)
        by_type[label] += int(getattr(info, "nbytes", 0) or 0)
    if not by_type:
        return "unknown"
    return by_type.most_common(1)[0][0]
