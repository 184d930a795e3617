"""LOOPCHAT_THREADS: a bad value is refused or clamped with one logged line, never a crash.

`²` passed str.isdigit() and then broke int(); 20000 made libgomp abort ("Thread creation
failed") and 100000 segfaulted, so the loads run in a subprocess (a segfault would end pytest).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.kernels.threads import forced_threads

ROOT = Path(__file__).resolve().parents[1]
CPUS = os.cpu_count() or 1

REFUSED = ["²", "0", "000", "-3", "abc", "2.5", "1e3", "+2"]
CLAMPED = ["20000", "100000", "9" * 5000]


@pytest.mark.parametrize("value", REFUSED)
def test_refused_values_fall_back_with_a_warning(monkeypatch, caplog, value: str) -> None:
    monkeypatch.setenv("LOOPCHAT_THREADS", value)
    with caplog.at_level(logging.WARNING, logger="engine.kernels.threads"):
        assert forced_threads() is None
    assert [r for r in caplog.records if "LOOPCHAT_THREADS" in r.getMessage()], caplog.text


@pytest.mark.parametrize("value", CLAMPED)
def test_more_threads_than_cpus_is_clamped(monkeypatch, caplog, value: str) -> None:
    monkeypatch.setenv("LOOPCHAT_THREADS", value)
    with caplog.at_level(logging.WARNING, logger="engine.kernels.threads"):
        assert forced_threads() == CPUS
    assert [r for r in caplog.records if "LOOPCHAT_THREADS" in r.getMessage()], caplog.text


def test_good_values_are_taken_quietly(monkeypatch, caplog) -> None:
    for value, want in (("1", 1), (f" {CPUS} ", CPUS), ("", None)):
        monkeypatch.setenv("LOOPCHAT_THREADS", value)
        with caplog.at_level(logging.WARNING, logger="engine.kernels.threads"):
            assert forced_threads() == want
    assert not caplog.records


def test_one_parser_of_the_variable() -> None:
    """Only engine.kernels.threads.forced_threads reads LOOPCHAT_THREADS: the loader once read it
    with its own, equally loose, check."""
    readers = []
    for folder in ("engine", "desktop"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            if re.search(r"(environ|getenv)[^\n]*[\"']LOOPCHAT_THREADS[\"']", text):
                readers.append(path.relative_to(ROOT).as_posix())
    assert readers == ["engine/kernels/threads.py"], readers
    source = (ROOT / "engine/kernels/threads.py").read_text(encoding="utf-8")
    assert source.count('environ.get("LOOPCHAT_THREADS"') == 1


@pytest.mark.parametrize("value", ["²", "20000", "100000", "0", "-3", "abc"])
def test_generate_runs_with_a_bad_thread_count(tiny_model_dir: Path, value: str) -> None:
    env = dict(os.environ, LOOPCHAT_THREADS=value)
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "generate", "--model", str(tiny_model_dir)]
        + ["--prompt-ids", "1,5,9", "--max-new-tokens", "3", "--temperature", "0"]
        + ["--dtype", "float32", "--device", "cpu"],
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert len([line for line in stderr.splitlines() if "LOOPCHAT_THREADS" in line]) == 1, stderr
