"""Faults of the quantized-weights cache that once stopped a load or served wrong weights.

Each test damages the real cache of a tiny model (or its checkpoint, or its environment) the way a
user's disk, a second instance or a bad setting would, and checks that the load still gives exactly
the weights a fresh quantization gives: a cache is only ever used when it provably matches, and
anything else means "build it again", never an exception and never a hang.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own cache folder (quantized weights and kernel choices)."""
    monkeypatch.setenv("LOOPCHAT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LOOPCHAT_QUANT_CACHE_GB", raising=False)


def _load(folder: Path, quant: str = "int8"):
    from engine.loading.loader import load_model

    return load_model(folder, dtype="bfloat16", device="cpu", quant=quant, max_context=64)


def _weights(loaded) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _header(cache: Path) -> tuple[int, dict]:
    data = cache.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return 8 + length, json.loads(data[8 : 8 + length])


# ----------------------------------------------------------------------------------------------
# 0. numpy is not a dependency


BLOCK_NUMPY = """
import importlib.abc, sys

class _NoNumpy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" or name.startswith("numpy."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, _NoNumpy())
for name in [m for m in sys.modules if m == "numpy" or m.startswith("numpy.")]:
    del sys.modules[name]
"""


def test_int8_and_int4_load_and_generate_without_numpy(tiny_model_dir: Path, tmp_path: Path):
    # The README's install has no numpy (only the test extras bring it, through transformers):
    # the whole quantized path, first build and cached load, must run without it.
    code = BLOCK_NUMPY + (
        "from engine.cli import main\n"
        "for quant in ('int8', 'int4', 'int8', 'int4'):\n"  # build, then load from the cache
        f"    rc = main(['generate', '--model', {str(tiny_model_dir)!r}, '--prompt-ids',\n"
        "              '1,5,9', '--temperature', '0', '--max-new-tokens', '4', '--json',\n"
        "              '--quant', quant])\n"
        "    assert rc == 0, rc\n"
        "assert 'numpy' not in sys.modules\n"
    )
    env = dict(os.environ, LOOPCHAT_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = [json.loads(line) for line in proc.stdout.splitlines() if '"done"' in line]
    assert len(done) == 4 and all(d["generated_tokens"] == 4 for d in done)


# ----------------------------------------------------------------------------------------------
# 4. A damaged header means "rebuild", whatever the damage


def _renames(header: bytes) -> list[tuple[bytes, bytes]]:
    """One-byte changes to key names and values that once raised KeyError (and a few more)."""
    words = [b'"data_offsets"', b'"dtype"', b'"shape"', b'"loopchat_checksums"',
             b'"loopchat_key"', b'"__metadata__"', b'"format"', b'"I8"', b'"BF16"']  # fmt: skip
    out = []
    for word in words:
        if word in header:
            out.append((word, word[:-2] + bytes([word[-2] ^ 1]) + b'"'))
    return out


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_damaged_cache_header_is_rebuilt_not_raised(
    tiny_model_dir: Path, tmp_path: Path, quant: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Renamed keys and seeded single-bit flips anywhere in the header (the length prefix, the
    # key, the checksums, the tensor entries, the padding): each load must rebuild the file to
    # exactly what a fresh quantization writes and give exactly its weights.
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    first = _load(folder, quant)
    want = _weights(first)
    cache = Path(first.describe()["quant_cache"])
    fresh = cache.read_bytes()
    data_start, _ = _header(cache)
    damaged: list[bytes] = []
    for old, new in _renames(fresh[:data_start]):
        damaged.append(fresh.replace(old, new, 1))
    rng = random.Random(f"header-{quant}")
    for bit in rng.sample(range(data_start * 8), 16):
        data = bytearray(fresh)
        data[bit // 8] ^= 1 << (bit % 8)
        damaged.append(bytes(data))
    assert len(damaged) >= 22
    for data in damaged:
        cache.write_bytes(data)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="engine.kernels.quant_load"):
            again = _load(folder, quant)
        assert not again.describe()["quant_cache_hit"]
        assert _same_weights(_weights(again), want)
        assert cache.read_bytes() == fresh  # rebuilt, and to the same bytes
        assert any("rebuilding quantized cache" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_single_bit_flips_of_every_header_byte_are_refused(
    tiny_model_dir: Path, tmp_path: Path, quant: str
) -> None:
    # Every byte of the header damaged in turn (all 8 single-bit flips of its first and last KB:
    # the length, the key, the digests' start, the last entries and the padding; one seeded bit
    # of every byte between, to stay ~10 s) must either be refused (StaleCache, nothing else) or
    # change a digest, which its tensor then fails. A header is used only when it is exactly the
    # one this plan and key would write.
    from engine.kernels.quant_cache import StaleCache, parse_cache_header

    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    loaded = _load(folder, quant)
    info = loaded.describe()
    cache = Path(info["quant_cache"])
    fresh = cache.read_bytes()
    data_start, _ = _header(cache)
    plan, key = _plan_and_key(folder, quant, loaded.args)
    size = len(fresh)
    good = parse_cache_header(io.BytesIO(fresh), size, key, plan)
    assert good[0] == data_start
    rng = random.Random(f"every-byte-{quant}")
    bits = [
        i * 8 + b
        for i in range(data_start)
        for b in (range(8) if i < 1024 or i >= data_start - 1024 else [rng.randrange(8)])
    ]
    refused = 0
    for bit in bits:
        data = bytearray(fresh[:data_start])
        data[bit // 8] ^= 1 << (bit % 8)
        try:
            got = parse_cache_header(io.BytesIO(bytes(data)), size, key, plan)
        except StaleCache:
            refused += 1
            continue
        assert got[0] == data_start and got[1] != good[1], bit  # only a checksum changed
    assert refused > 0.9 * len(bits)


def _plan_and_key(folder: Path, quant: str, args):
    """The plan and key the loader uses for `folder` (bfloat16 on the CPU, default groups)."""
    from engine.kernels.quant import DEFAULT_GROUP_SIZE
    from engine.kernels.quant_cache import cache_key
    from engine.kernels.quant_load import make_plan
    from engine.model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(args)
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    plan = make_plan(shapes, quant, torch.bfloat16, DEFAULT_GROUP_SIZE)
    key = cache_key(folder, quant, DEFAULT_GROUP_SIZE, torch.bfloat16, "cpu")
    return plan, key


# ----------------------------------------------------------------------------------------------
# 5. The cache never serves weights other than the checkpoint's


def test_changed_weights_with_same_size_and_mtime_are_requantized(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tool that rewrites weights in place and keeps the time (cp -p, rsync -a, tar, a
    # checkout) leaves size and mtime as they were: the cache must notice the new values.
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    old = _weights(_load(folder))
    stats = {}
    for shard in sorted(folder.glob("*.safetensors")):
        stats[shard] = shard.stat()
        with safe_open(shard, "pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        save_file({n: -t for n, t in tensors.items()}, shard, metadata={"format": "pt"})
        os.utime(shard, ns=(stats[shard].st_atime_ns, stats[shard].st_mtime_ns))
    for shard, st in stats.items():
        assert shard.stat().st_size == st.st_size and shard.stat().st_mtime_ns == st.st_mtime_ns
    again = _load(folder)
    assert not again.describe()["quant_cache_hit"]
    new = _weights(again)
    assert not _same_weights(new, old)
    monkeypatch.setenv("LOOPCHAT_HOME", str(tmp_path / "fresh"))  # a fresh quantization
    assert _same_weights(_weights(_load(folder)), new)


def test_cache_key_sees_a_change_the_stat_fields_do_not(tmp_path: Path) -> None:
    # The content fingerprint alone (without size, mtime or ctime) tells two same-sized weights
    # files apart: a change of any sampled block, of the header, or anywhere in a small file.
    from engine.kernels.quant_cache import file_fingerprint

    big = tmp_path / "model.safetensors"
    n = 40 * 2**20
    header = json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}})
    body = bytearray(os.urandom(n))
    big.write_bytes(struct.pack("<Q", len(header)) + header.encode() + body)
    before = file_fingerprint(big)
    assert file_fingerprint(big) == before
    with big.open("r+b") as f:  # the first byte of the data section: always sampled
        f.seek(8 + len(header))
        f.write(bytes([body[0] ^ 0xFF]))
    assert file_fingerprint(big) != before
    small = tmp_path / "config.json"
    small.write_bytes(b"x" * 100_000)
    fp = file_fingerprint(small)
    small.write_bytes(b"x" * 50_000 + b"y" + b"x" * 49_999)  # small files are hashed whole
    assert file_fingerprint(small) != fp


def test_swapped_rows_in_the_cache_are_detected(tiny_model_dir: Path, tmp_path: Path) -> None:
    # A word sum is the same for the rows in any order; a real hash is not.
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    first = _load(folder)
    want = _weights(first)
    cache = Path(first.describe()["quant_cache"])
    data_start, header = _header(cache)
    name = next(n for n, e in header.items() if n.endswith("w1.weight") and e["dtype"] == "I8")
    begin, end = header[name]["data_offsets"]
    rows, cols = header[name]["shape"]
    data = bytearray(cache.read_bytes())
    at = data_start + begin
    row = lambda i: slice(at + i * cols, at + (i + 1) * cols)  # noqa: E731
    i, j = 0, next(j for j in range(1, rows) if data[row(j)] != data[row(0)])
    data[row(i)], data[row(j)] = data[row(j)], data[row(i)]
    cache.write_bytes(bytes(data))
    again = _load(folder)
    assert not again.describe()["quant_cache_hit"]
    assert _same_weights(_weights(again), want)


# ----------------------------------------------------------------------------------------------
# 8a. LOOPCHAT_QUANT_CACHE_GB


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-inf", "0", "-1", "-0.5", "abc", ""])
def test_bad_cache_limit_falls_back_to_the_default(
    value: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from engine.kernels.quant_cache import CACHE_LIMIT_BYTES, cache_limit_bytes

    monkeypatch.setenv("LOOPCHAT_QUANT_CACHE_GB", value)
    with caplog.at_level(logging.WARNING, logger="engine.kernels.quant_cache"):
        assert cache_limit_bytes() == CACHE_LIMIT_BYTES
    assert len(caplog.records) == (1 if value else 0)


@pytest.mark.parametrize("value", ["0.5", "1e-9", "100", " 2 "])
def test_good_cache_limit_is_used(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.kernels.quant_cache import cache_limit_bytes

    monkeypatch.setenv("LOOPCHAT_QUANT_CACHE_GB", value)
    assert cache_limit_bytes() == max(1, int(float(value) * 2**30))


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "0", "-3"])
def test_bad_cache_limit_never_deletes_other_caches(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    other = tmp_path / "home" / "cache" / "weights" / "other-int8-0.safetensors"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"x" * 10_000)
    monkeypatch.setenv("LOOPCHAT_QUANT_CACHE_GB", value)
    assert _load(tiny_model_dir).describe()["quant"] == "int8"
    assert other.exists()


# ----------------------------------------------------------------------------------------------
# 9. Odd files at the cache's path, and files vanishing under a load


def _cache_path_for(folder: Path, tmp_path: Path) -> tuple[Path, dict]:
    """Where the int8 cache of `folder` lives, and the weights a fresh build gives."""
    loaded = _load(folder)
    path = Path(loaded.describe()["quant_cache"])
    return path, _weights(loaded)


def test_fifo_at_the_cache_path_does_not_hang_the_load(tiny_model_dir: Path, tmp_path: Path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    path, want = _cache_path_for(folder, tmp_path)
    path.unlink()
    os.mkfifo(path)
    result: dict = {}

    def load() -> None:
        try:
            result["weights"] = _weights(_load(folder))
        except BaseException as exc:  # reported below
            result["error"] = exc

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout=30)
    if thread.is_alive():  # free the blocked open() so the thread can end
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(timeout=10)
        pytest.fail("the load hung on a FIFO at the cache path")
    assert "error" not in result, result.get("error")
    assert _same_weights(result["weights"], want)


def test_folder_at_the_cache_path_does_not_stop_the_load(tiny_model_dir: Path, tmp_path: Path):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    path, want = _cache_path_for(folder, tmp_path)
    path.unlink()
    path.mkdir()
    (path / "somebody's file").write_text("kept")
    for _ in range(2):
        assert _same_weights(_weights(_load(folder)), want)
    assert (path / "somebody's file").read_text() == "kept"
    # nothing left behind: the weights built aside were removed once loaded
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_cache_file_vanishing_during_a_load_is_rebuilt(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another instance's prune deletes the file just before the k-th time this load looks at it
    # by name (stat), for every k the load reaches: the load must still give the right weights,
    # never FileNotFoundError.
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    path, want = _cache_path_for(folder, tmp_path)
    real_stat = os.stat
    for when in range(1, 10):
        seen = {"n": 0}

        def stat(target, *args, _when=when, _seen=seen, **kwargs):
            if isinstance(target, (str, Path)) and os.fspath(target) == os.fspath(path):
                _seen["n"] += 1
                if _seen["n"] == _when and os.path.lexists(path):
                    os.unlink(path)
            return real_stat(target, *args, **kwargs)

        monkeypatch.setattr(os, "stat", stat)
        try:
            loaded = _load(folder)
        finally:
            monkeypatch.setattr(os, "stat", real_stat)
        assert _same_weights(_weights(loaded), want), when
        if seen["n"] < when:
            break  # every stat of this load was tried
        if not path.exists():
            _load(folder)  # vanished after the load had it: the next load builds it again
    assert when >= 2


def test_cache_file_deleted_after_it_was_opened_still_loads(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Once a load has the file open it reads that file to the end, wherever its name goes
    # (however it opens it: os.open or io.open).
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    path, want = _cache_path_for(folder, tmp_path)
    opened = []

    def unlinking(real):
        def open_then_unlink(target, *args, **kwargs):
            handle = real(target, *args, **kwargs)
            if isinstance(target, (str, Path)) and os.fspath(target) == os.fspath(path):
                if not opened:
                    os.unlink(path)
                opened.append(target)
            return handle

        return open_then_unlink

    monkeypatch.setattr(os, "open", unlinking(os.open))
    monkeypatch.setattr(io, "open", unlinking(io.open))
    loaded = _load(folder)
    monkeypatch.undo()
    assert opened, "the cache was never opened"
    assert loaded.describe()["quant_cache_hit"]
    assert _same_weights(_weights(loaded), want)


def test_prune_tolerates_files_vanishing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two instances pruning at once: the other one deletes files between our listing and our
    # stat or unlink.
    from engine.kernels.quant_cache import prune_cache

    folder = tmp_path / "weights"
    folder.mkdir()
    files = []
    for age in range(4):
        path = folder / f"m{age}.safetensors"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (1e9 - age * 100, 1e9 - age * 100))
        files.append(path)
    real_unlink = Path.unlink

    def racing_unlink(self: Path, missing_ok: bool = False) -> None:
        if self == files[3]:
            real_unlink(self)  # the other instance was faster
        real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", racing_unlink)
    removed = prune_cache(files[0], limit=2500)
    # the oldest is gone (whoever deleted it), which made room: only one more had to go
    assert removed == [files[3], files[2]]
    assert files[0].exists() and files[1].exists()
