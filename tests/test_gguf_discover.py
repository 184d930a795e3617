"""Finding the GGUF files other apps keep (HF cache, LM Studio, GPT4All, Jan, Ollama), read-only.

Every test builds a fake home in tmp_path holding real (tiny) GGUF files written by the gguf
package's writer, and checks what the chooser would list and that nothing there changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from engine.gguf.compat import quant_name, unsupported_reason
from engine.gguf.discover import FoundGGUF, _data_dirs, find_gguf_files, gguf_locations

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

Q = gguf.GGMLQuantizationType
LLAMA_3 = "Llama 3 files use a different tokenizer; Loopchat runs Llama 2-family models"


def write_gguf(
    path: Path,
    *,
    arch: str = "llama",
    tokenizer: str | None = "llama",
    file_type: int | None = 15,
    qtype: int = Q.Q4_K,
    dim: int = 256,
    n_layers: int = 1,
    vocab: int = 32,
    extra: dict[str, int] | None = None,
) -> Path:
    """A small but well-formed GGUF file: metadata as llama.cpp writes it, random tensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(path.stem)
    w.add_block_count(n_layers)
    w.add_context_length(64)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(dim)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(dim // 4)
    if file_type is not None:
        w.add_file_type(file_type)
    for key, value in (extra or {}).items():
        w.add_uint32(key, value)
    if tokenizer is not None:
        w.add_tokenizer_model(tokenizer)
        tokens = ["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(vocab - 3)]
        w.add_token_list(tokens)
        w.add_token_scores([0.0] * vocab)
        w.add_token_types([2, 3, 3] + [1] * (vocab - 3))
        if tokenizer == "gpt2":
            w.add_token_merges(["t 1", "t 2"])

    def matrix(name: str, rows: int, cols: int) -> None:
        if qtype in (Q.F32, Q.F16):
            dtype = np.float32 if qtype == Q.F32 else np.float16
            w.add_tensor(name, rng.standard_normal((rows, cols)).astype(dtype))
            return
        per_block, block_bytes = gguf.GGML_QUANT_SIZES[Q(qtype)]
        raw = rng.integers(0, 256, (rows, cols // per_block * block_bytes), dtype=np.uint8)
        raw_f16 = raw.view(np.uint16)  # keep the f16 scales finite: clear their exponent's top bit
        raw_f16 &= 0xBFFF
        w.add_tensor(name, raw, raw_dtype=Q(qtype))

    matrix("token_embd.weight", vocab, dim)
    for i in range(n_layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(dim, dtype=np.float32))
        for part in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            matrix(f"blk.{i}.{part}.weight", dim, dim)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(dim, dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(dim, dtype=np.float32))
    matrix("output.weight", vocab, dim)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def n_params(dim: int = 256, n_layers: int = 1, vocab: int = 32) -> int:
    return 2 * vocab * dim + n_layers * (7 * dim * dim + 2 * dim) + dim


def snapshot_tree(root: Path) -> dict[str, tuple]:
    """Every entry under root (links not followed): its kind, size, mtime and content hash."""
    out: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            st = path.lstat()
            if path.is_symlink():
                out[str(path)] = ("link", os.readlink(path), st.st_mtime_ns)
            elif path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[str(path)] = ("file", st.st_size, st.st_mtime_ns, digest)
            else:
                out[str(path)] = ("dir", st.st_mtime_ns)
    return out


def ollama_model(models: Path, namespace: str, model: str, tag: str, blob_from: Path) -> Path:
    """An Ollama store entry: the blob named by its sha256, and a manifest naming it."""
    data = blob_from.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    blob = models / "blobs" / f"sha256-{digest}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    blob_from.unlink()
    manifest = models / "manifests" / "registry.ollama.ai" / namespace / model / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    layers = [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64},
        {
            "mediaType": "application/vnd.ollama.image.model",
            "digest": f"sha256:{digest}",
            "size": len(data),
        },
    ]
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    return blob


@pytest.fixture
def fake_home(tmp_path: Path) -> Path:
    """A home folder where every app has left GGUF files, good and bad."""
    home = tmp_path / "home"
    data = _data_dirs(home, {})[0]
    # Hugging Face cache: the snapshot file is a link to the blob, as huggingface_hub makes it.
    repo = home / ".cache" / "huggingface" / "hub" / "models--TheBloke--Tiny-GGUF"
    blob = write_gguf(repo / "blobs" / ("a" * 64), file_type=15)
    snapshot = repo / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "tiny.Q4_K_M.gguf").symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)
    # LM Studio: publisher/repo/file.gguf, plus a truncated file, a fake and a link loop.
    lms = home / ".lmstudio" / "models"
    write_gguf(
        lms / "lmstudio-community" / "Tiny-GGUF" / "tiny-Q8_0.gguf", file_type=7, qtype=Q.Q8_0
    )
    good = (lms / "lmstudio-community" / "Tiny-GGUF" / "tiny-Q8_0.gguf").read_bytes()
    (lms / "broken").mkdir()
    (lms / "broken" / "cut.gguf").write_bytes(good[: len(good) // 2])  # an unfinished copy
    (lms / "broken" / "head.gguf").write_bytes(good[:100])
    (lms / "broken" / "notes.gguf").write_bytes(b"this is not a model at all")
    (lms / "broken" / "loop").symlink_to(lms)
    # GPT4All keeps its files flat in the app's data folder.
    write_gguf(data / "nomic.ai" / "GPT4All" / "tinyllama.Q4_0.gguf", file_type=2, qtype=Q.Q4_0)
    # Jan: an old-style folder with a Llama 3 file, the new data folder with a Qwen file.
    write_gguf(home / "jan" / "models" / "llama3-8b" / "model.gguf", tokenizer="gpt2")
    write_gguf(data / "Jan" / "data" / "models" / "qwen" / "model.gguf", arch="qwen2")
    # Ollama: blobs without an extension, named by manifests.
    ollama = home / ".ollama" / "models"
    ollama_model(
        ollama,
        "library",
        "tinyllama",
        "latest",
        write_gguf(tmp_path / "o1.gguf", file_type=None, qtype=Q.F16),
    )
    ollama_model(
        ollama,
        "someone",
        "tiny",
        "q6",
        write_gguf(tmp_path / "o2.gguf", file_type=18, qtype=Q.Q6_K),
    )
    gone = ollama / "manifests" / "registry.ollama.ai" / "library" / "gone" / "latest"
    gone.parent.mkdir(parents=True)
    gone.write_text(
        json.dumps(
            {
                "layers": [
                    {
                        "mediaType": "application/vnd.ollama.image.model",
                        "digest": "sha256:" + "f" * 64,
                    }
                ]
            }
        )
    )
    junk = ollama / "manifests" / "registry.ollama.ai" / "library" / "junk" / "latest"
    junk.parent.mkdir(parents=True)
    junk.write_text("{not json")
    return home


def test_finds_every_apps_files_with_size_quant_and_reason(fake_home: Path) -> None:
    before = snapshot_tree(fake_home)
    found = find_gguf_files(home=fake_home, env={})
    assert snapshot_tree(fake_home) == before  # nothing written, renamed or touched

    rows = {(f.source, f.name): f for f in found}
    assert list(rows) == [
        # runnable first, by name
        ("LM Studio", "lmstudio-community/Tiny-GGUF/tiny-Q8_0.gguf"),
        ("Ollama", "someone/tiny:q6"),
        ("Hugging Face cache", "TheBloke/Tiny-GGUF/tiny.Q4_K_M.gguf"),
        ("GPT4All", "tinyllama.Q4_0.gguf"),
        ("Ollama", "tinyllama:latest"),
        # then the ones it cannot run, by name
        ("LM Studio", "broken/cut.gguf"),
        ("LM Studio", "broken/head.gguf"),
        ("LM Studio", "broken/notes.gguf"),
        ("Jan", "llama3-8b/model.gguf"),
        ("Jan", "qwen/model.gguf"),
    ]
    quants = {name: f.quant for (_, name), f in rows.items() if f.runnable}
    assert quants == {
        "someone/tiny:q6": "Q6_K",
        "TheBloke/Tiny-GGUF/tiny.Q4_K_M.gguf": "Q4_K_M",
        "tinyllama.Q4_0.gguf": "Q4_0",
        "tinyllama:latest": "F16",  # no general.file_type: the type holding the most bytes
        "lmstudio-community/Tiny-GGUF/tiny-Q8_0.gguf": "Q8_0",
    }
    for f in found:
        assert f.size_bytes == f.path.stat().st_size > 0
        if f.runnable:
            assert f.reason is None and f.n_params == n_params()
    hf = rows["Hugging Face cache", "TheBloke/Tiny-GGUF/tiny.Q4_K_M.gguf"]
    assert hf.path.parent.name == "c" * 40  # the snapshot's name for it, not the blob
    ollama = rows["Ollama", "tinyllama:latest"]
    assert ollama.path.parent.name == "blobs" and ollama.path.name.startswith("sha256-")

    def reason(source: str, name: str) -> str:
        row = rows[source, name]
        assert not row.runnable and row.reason
        return row.reason

    assert reason("Jan", "llama3-8b/model.gguf") == LLAMA_3
    assert reason("Jan", "qwen/model.gguf") == (
        "architecture 'qwen2' is not a Llama model; Loopchat runs Llama 2-family models"
    )
    assert rows["Jan", "qwen/model.gguf"].quant == "Q4_K_M"  # still says what it is
    assert "incomplete" in reason("LM Studio", "broken/cut.gguf")
    assert reason("LM Studio", "broken/head.gguf").startswith("the file claims 15 metadata")
    assert reason("LM Studio", "broken/notes.gguf").startswith("the file is not a GGUF file")
    assert str(fake_home) not in reason("LM Studio", "broken/cut.gguf")  # the row names the file
    assert rows["LM Studio", "broken/cut.gguf"].n_params is None


def test_locations_follow_the_environment(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {
        "HF_HUB_CACHE": str(tmp_path / "hub-cache"),
        "OLLAMA_MODELS": str(tmp_path / "ollama-store"),
    }
    places = gguf_locations(home, env)
    assert places[0] == ("Hugging Face cache", tmp_path / "hub-cache")
    assert ("Ollama", tmp_path / "ollama-store") in places
    assert ("Ollama", home / ".ollama" / "models") in places
    assert ("LM Studio", home / ".lmstudio" / "models") in places
    assert ("LM Studio", home / ".cache" / "lm-studio" / "models") in places
    assert ("Jan", home / "jan" / "models") in places
    assert {source for source, _ in places} == {
        "Hugging Face cache",
        "LM Studio",
        "GPT4All",
        "Jan",
        "Ollama",
    }
    assert all(folder.is_relative_to(tmp_path) for _, folder in places)  # nothing system-wide

    hf_home = gguf_locations(home, {"HF_HOME": str(tmp_path / "hf")})[0]
    assert hf_home == ("Hugging Face cache", tmp_path / "hf" / "hub")
    if sys.platform.startswith("linux"):
        xdg = gguf_locations(home, {"XDG_DATA_HOME": str(tmp_path / "xdg")})
        assert ("GPT4All", tmp_path / "xdg" / "nomic.ai" / "GPT4All") in xdg
        assert ("Jan", tmp_path / "xdg" / "Jan" / "data" / "models") in xdg


def test_files_in_a_custom_hf_cache_and_ollama_store(tmp_path: Path) -> None:
    home = tmp_path / "home"
    hub = tmp_path / "hub"
    snapshot = hub / "models--someone--Llama-GGUF" / "snapshots" / ("d" * 40)
    write_gguf(snapshot / "Q4_0" / "llama.Q4_0.gguf", file_type=2, qtype=Q.Q4_0)
    store = tmp_path / "store"
    ollama_model(
        store, "library", "llama2", "7b", write_gguf(tmp_path / "x.gguf", file_type=7, qtype=Q.Q8_0)
    )
    found = find_gguf_files(home, {"HF_HUB_CACHE": str(hub), "OLLAMA_MODELS": str(store)})
    assert [(f.source, f.name, f.quant) for f in found] == [
        ("Ollama", "llama2:7b", "Q8_0"),
        ("Hugging Face cache", "someone/Llama-GGUF/Q4_0/llama.Q4_0.gguf", "Q4_0"),
    ]


def test_limit_and_an_empty_home(tmp_path: Path, fake_home: Path) -> None:
    assert find_gguf_files(tmp_path / "nobody", {}) == []
    assert len(find_gguf_files(fake_home, {}, limit=3)) == 3


def test_a_fifo_named_gguf_is_skipped_without_hanging(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    folder = tmp_path / "home" / ".lmstudio" / "models"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "pipe.gguf")
    assert find_gguf_files(tmp_path / "home", {}) == []


def test_found_gguf_is_a_plain_record() -> None:
    row = FoundGGUF(Path("x.gguf"), "x", "LM Studio", 1, "Q8_0", 2, True, None)
    with pytest.raises(AttributeError):
        row.name = "y"  # type: ignore[misc]


# -- compat -------------------------------------------------------------------------------------


def llama_meta(**changes: object) -> dict[str, object]:
    meta: dict[str, object] = {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>"],
    }
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not None}


def test_unsupported_reason() -> None:
    assert unsupported_reason(llama_meta()) is None
    assert unsupported_reason(llama_meta(**{"general.architecture": "qwen2"})) == (
        "architecture 'qwen2' is not a Llama model; Loopchat runs Llama 2-family models"
    )
    assert "general.architecture" in unsupported_reason(
        llama_meta(**{"general.architecture": None})
    )
    assert unsupported_reason(llama_meta(**{"tokenizer.ggml.model": "gpt2"})) == LLAMA_3
    assert unsupported_reason(llama_meta(**{"tokenizer.ggml.model": "bert"})) == (
        "tokenizer 'bert' is not Llama's SentencePiece tokenizer; Loopchat runs Llama 2-family "
        "models"
    )
    assert "no tokenizer" in unsupported_reason(llama_meta(**{"tokenizer.ggml.model": None}))
    assert "no vocabulary" in unsupported_reason(llama_meta(**{"tokenizer.ggml.tokens": None}))
    assert "no vocabulary" in unsupported_reason(llama_meta(**{"tokenizer.ggml.tokens": []}))
    split = unsupported_reason(llama_meta(**{"split.count": 3}))
    assert split is not None and "split into 3 files" in split
    assert unsupported_reason(llama_meta(**{"split.count": 1})) is None


def test_quant_name() -> None:
    from engine.gguf.quant_types import GGMLType
    from engine.gguf.reader import TensorInfo

    names = {
        0: "F32",
        1: "F16",
        2: "Q4_0",
        7: "Q8_0",
        15: "Q4_K_M",
        18: "Q6_K",
        30: "IQ4_XS",
        32: "BF16",
        1024 + 15: "Q4_K_M",
    }
    for number, name in names.items():
        assert quant_name({"general.file_type": number}, {}) == name
    tensors = {
        "a": TensorInfo("a", (64, 256), GGMLType.Q6_K, 0, 64 * 210),
        "b": TensorInfo("b", (256, 256), GGMLType.Q4_K, 0, 256 * 144),
        "c": TensorInfo("c", (256,), GGMLType.F32, 0, 1024),
    }
    assert quant_name({}, tensors) == "Q4_K"  # most bytes
    assert quant_name({"general.file_type": 999}, tensors.values()) == "Q4_K"
    assert quant_name({}, {}) == "unknown"
