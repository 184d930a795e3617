"""Packaging: resources ship installed and frozen; the PyInstaller build really runs.

The fast tests check the files a user gets (package data, icons, the desktop entry) and the
frozen lookup through sys._MEIPASS. The build test is marked `packaging` (~2-3 min on 2 cores):
it builds dist/loopchat/loopchat from build.spec into a temp folder, then checks the executable's
`--self-test` against the engine's own greedy output. Run it alone with `pytest -m packaging`,
or leave it out with `pytest -m "not packaging"`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import platform
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "resources"
EXE_NAME = "loopchat.exe" if sys.platform == "win32" else "loopchat"


def shipped_resource_files() -> list[str]:
    """Every file under resources/ a user needs (paths relative to resources/, '/'-separated)."""
    return sorted(
        p.relative_to(RESOURCES).as_posix()
        for p in RESOURCES.rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc"} and "__pycache__" not in p.parts
    )


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def test_resources_found_installed_and_frozen(monkeypatch, tmp_path: Path) -> None:
    from desktop.resources import resource_path

    for name in ("catalogue.json", "styles/app.qss", "icons/loopchat.svg", "loopchat.desktop"):
        assert resource_path(name).is_file(), name
    frozen = tmp_path / "bundle"
    (frozen / "resources").mkdir(parents=True)
    (frozen / "resources" / "catalogue.json").write_text("{}")
    monkeypatch.setattr(sys, "_MEIPASS", str(frozen), raising=False)
    assert resource_path("catalogue.json") == frozen / "resources" / "catalogue.json"
    assert resource_path("catalogue.json").read_text() == "{}"


def test_package_data_covers_every_resource() -> None:
    """A resource without a matching package-data pattern would be missing after pip install."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["resources"]
    missing = [
        name
        for name in shipped_resource_files()
        if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns)
    ]
    assert not missing, f"add package-data patterns for {missing}"
    scripts = config["project"]["gui-scripts"]
    assert scripts["loopchat"] == "desktop.app:main"


def test_icons_rendered_at_every_size() -> None:
    icons = RESOURCES / "icons"
    assert png_size(icons / "loopchat.png") == (256, 256)
    for size in (128, 64, 48):
        assert png_size(icons / f"loopchat-{size}.png") == (size, size)
    ico = (icons / "loopchat.ico").read_bytes()
    reserved, kind, count = struct.unpack("<HHH", ico[:6])
    assert (reserved, kind) == (0, 1) and count >= 4
    sides = set()
    for i in range(count):
        entry = ico[6 + 16 * i : 22 + 16 * i]
        width, _, _, _, _, _, length, offset = struct.unpack("<BBBBHHII", entry)
        assert ico[offset : offset + 8] == b"\x89PNG\r\n\x1a\n" and offset + length <= len(ico)
        sides.add(width or 256)
    assert {16, 32, 48, 256} <= sides


def test_desktop_entry_is_valid() -> None:
    from desktop.resources import resource_path

    lines = resource_path("loopchat.desktop").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "[Desktop Entry]"
    entries = [line for line in lines[1:] if "=" in line and not line.startswith("#")]
    keys = dict(line.split("=", 1) for line in entries)
    assert keys["Type"] == "Application" and keys["Name"] == "Loopchat"
    assert keys["Exec"] == "loopchat"  # takes no file arguments (no %F)
    assert keys["Icon"] == "loopchat" and keys["Terminal"] == "false"
    assert keys["Categories"].endswith(";")


def engine_greedy(folder: Path) -> dict:
    """What the engine itself generates for the self-test's request (16 greedy tokens, "Hello")."""
    from engine.generation.generate import Generator
    from engine.generation.sampling import SamplingParams
    from engine.loading.loader import load_model

    greedy = SamplingParams(temperature=0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)
    loaded = load_model(folder, dtype="float32", device="cpu")
    generation = Generator(loaded).generate(
        loaded.tokenizer.encode("Hello", bos=True), greedy, max_new_tokens=16
    )
    list(generation)
    return generation.result.to_json()


@pytest.mark.packaging
def test_built_executable_self_test(tiny_model_dir: Path, tmp_path: Path) -> None:
    dist, work = tmp_path / "dist", tmp_path / "build"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--log-level",
            "WARN",
            "--distpath",
            str(dist),
            "--workpath",
            str(work),
            str(ROOT / "build.spec"),
        ],
        cwd=ROOT,
        check=True,
        timeout=1500,
    )
    bundle = dist / "loopchat"
    exe = bundle / EXE_NAME
    assert exe.is_file()

    # The bundle holds every resource, the headless Qt platform, and none of torch's C++ tests.
    contents = bundle / "_internal"
    for name in shipped_resource_files():
        assert (contents / "resources" / name).is_file(), name
    platforms = {p.name for p in (contents / "PySide6" / "Qt" / "plugins" / "platforms").iterdir()}
    assert any("offscreen" in name for name in platforms), platforms
    if sys.platform.startswith("linux"):
        assert any("xcb" in name for name in platforms), platforms
    assert not (contents / "torch" / "test").exists()
    if sys.platform != "win32":  # the compiled kernels, one build per CPU level, with digests
        from engine.kernels import native_variants

        libs = contents.joinpath(*native_variants.library_dir_parts())
        for variant in native_variants.variants_for(platform.machine()):
            assert (libs / native_variants.library_filename(variant.name)).is_file()
            assert (libs / native_variants.digest_filename(variant.name)).is_file()

    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", LOOPCHAT_HOME=str(tmp_path / "home"))
    env.pop("PYTHONPATH", None)  # the bundle must not lean on the source tree
    proc = subprocess.run(
        [str(exe), "--self-test", str(tiny_model_dir), "--dtype", "float32"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = engine_greedy(tiny_model_dir)
    assert done["done"] is True
    for key in ("token_ids", "text", "prompt_tokens", "generated_tokens", "stop_reason"):
        assert done[key] == expected[key], key
    assert done["generated_tokens"] == 16 or done["stop_reason"] == "eos"

    # The built-in model ships inside the bundle and answers with no model folder at all.
    builtin = subprocess.run(
        [str(exe), "--self-test", "builtin", "--dtype", "float32"],
        capture_output=True,
        text=True,
        env=dict(env, HF_HOME=str(tmp_path / "empty-hf"), HF_HUB_OFFLINE="1"),
        cwd=tmp_path,
        timeout=300,
    )
    assert builtin.returncode == 0, builtin.stderr[-3000:]
    done = json.loads(builtin.stdout.strip().splitlines()[-1])
    assert done["token_ids"] == engine_greedy(Path("builtin"))["token_ids"]

    # 4-bit weights on a machine with no C compiler: the bundle's own compiled kernels run (no
    # numpy either: the bundle leaves it out), and the done line names what ran.
    no_tools = tmp_path / "no-tools"
    no_tools.mkdir()
    four_bit = subprocess.run(
        [str(exe), "--self-test", "builtin", "--quant", "int4"],
        capture_output=True,
        text=True,
        env=dict(env, PATH=str(no_tools), HF_HOME=str(tmp_path / "empty-hf"), HF_HUB_OFFLINE="1"),
        cwd=tmp_path,
        timeout=300,
    )
    assert four_bit.returncode == 0, four_bit.stderr[-3000:]
    done = json.loads(four_bit.stdout.strip().splitlines()[-1])
    assert done["generated_tokens"] >= 1 and done["kernel"] in ("int4pack", "int4native")
    if sys.platform != "win32":
        from engine.kernels import native

        assert done["native"] == native.load().isa, done  # the CPU's best build, from the bundle

    bad = subprocess.run(
        [str(exe), "--self-test", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert bad.returncode != 0
    message = bad.stderr.strip().splitlines()
    assert len(message) == 1 and "missing" in message[0], bad.stderr
