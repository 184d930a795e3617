"""Packaging: resources are found installed and frozen; the PyInstaller build really runs.

The build test is marked `packaging` (deselected by default; run `pytest -m packaging`): it builds
dist/loopchat/loopchat from build.spec into a temp folder, then checks `--self-test` against the
engine's own greedy output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.generate import Generator
from engine.loader import load_model
from engine.sampling import SamplingParams

ROOT = Path(__file__).resolve().parents[1]
GREEDY = SamplingParams(temperature=0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)


def engine_greedy(folder: Path) -> dict:
    loaded = load_model(folder, dtype="float32", device="cpu")
    generation = Generator(loaded).generate(
        loaded.tokenizer.encode("Hello", bos=True), GREEDY, max_new_tokens=16
    )
    list(generation)
    return generation.result.to_json()


def test_resources_found_installed_and_frozen(monkeypatch, tmp_path: Path) -> None:
    from desktop.resources import resource_path

    for name in ("catalogue.json", "styles/app.qss", "icons/loopchat.svg", "loopchat.desktop"):
        assert resource_path(name).is_file(), name
    frozen = tmp_path / "bundle"
    (frozen / "resources").mkdir(parents=True)
    (frozen / "resources" / "catalogue.json").write_text("{}")
    monkeypatch.setattr(sys, "_MEIPASS", str(frozen), raising=False)
    assert resource_path("catalogue.json") == frozen / "resources" / "catalogue.json"


def test_desktop_entry_is_valid() -> None:
    from desktop.resources import resource_path

    lines = resource_path("loopchat.desktop").read_text().splitlines()
    assert lines[0] == "[Desktop Entry]"
    keys = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    assert keys["Exec"].startswith("loopchat") and keys["Type"] == "Application"
    assert keys["Icon"] == "loopchat"


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
        timeout=1800,
    )
    exe = dist / "loopchat" / ("loopchat.exe" if sys.platform == "win32" else "loopchat")
    assert exe.is_file()
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", LOOPCHAT_HOME=str(tmp_path / "home"))
    proc = subprocess.run(
        [str(exe), "--self-test", str(tiny_model_dir), "--dtype", "float32"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = engine_greedy(tiny_model_dir)
    assert done["token_ids"] == expected["token_ids"]
    assert done["text"] == expected["text"]
    bad = subprocess.run(
        [str(exe), "--self-test", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode != 0 and "missing" in bad.stderr
