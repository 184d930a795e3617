"""A healthy database is never moved aside (issue 11, item 11).

Disk full, a read-only folder or an unwritable file/-wal/-shm used to count as "unreadable": the
good file was renamed aside and the next start showed an empty history. Each case runs the store
in a child process with the fault applied (a file-size limit stands in for a full disk; as root,
the child loses CAP_DAC_OVERRIDE so permissions apply to it as to a user).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from desktop.store.conversations import ConversationStore

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="faults made with Linux rlimits and capabilities"
)

CHILD = r"""
import json, sys
from pathlib import Path
from desktop.store.conversations import ConversationStore
from desktop.store.schema import StoreError
path = Path(sys.argv[1])
out = {}
try:
    with ConversationStore(path) as s:
        out["notice"] = s.recovery_notice
        out["read_only"] = s.read_only
        out["titles"] = [c.title for c in s.list_conversations()]
        try:
            s.create_conversation()
            out["wrote"] = True
        except StoreError as exc:
            out["write_error"] = str(exc)
except StoreError as exc:
    out["error"] = str(exc)
print(json.dumps(out))
"""


def make_db(folder: Path) -> Path:
    folder.mkdir()
    path = folder / "c.sqlite3"
    with ConversationStore(path) as s:
        s.add_message(s.create_conversation(), "user", "precious history")
    return path


def run_store(path: Path, *, file_size_limit: int | None = None, as_user: bool = False) -> dict:
    """Open the store at `path` in a child process under the given fault; its report."""

    def limits() -> None:
        import resource

        if file_size_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond it fails (EFBIG)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
        if as_user and os.geteuid() == 0:
            libc = ctypes.CDLL(None, use_errno=True)
            for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
                if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                    raise OSError(ctypes.get_errno(), "prctl")

    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limits,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def nothing_moved(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".sqlite3." in p.name]


def still_has_history(path: Path) -> None:
    with ConversationStore(path) as s:
        assert [c.title for c in s.list_conversations()] == ["precious history"]


def test_disk_full_at_start_keeps_the_database_and_says_so(tmp_path: Path) -> None:
    path = make_db(tmp_path / "full")
    report = run_store(path, file_size_limit=100)
    assert "error" in report, report
    assert "disk" in report["error"] and "nothing was moved" in report["error"]
    assert nothing_moved(path.parent)
    still_has_history(path)


def test_read_only_folder_opens_read_only(tmp_path: Path) -> None:
    path = make_db(tmp_path / "ro")
    path.parent.chmod(0o555)
    try:
        report = run_store(path, as_user=True)
    finally:
        path.parent.chmod(0o755)
    assert report["read_only"] is True, report
    assert report["titles"] == ["precious history"]
    assert "read-only" in report["notice"] and "folder" in report["notice"]
    assert "read-only" in report["write_error"]
    assert nothing_moved(path.parent)


@pytest.mark.parametrize("part", ["", "-wal", "-shm"])
def test_unwritable_file_wal_or_shm_opens_read_only(tmp_path: Path, part: str) -> None:
    path = make_db(tmp_path / "parts")
    # A file left with its -wal and -shm (as after a crash): copy them while a writer holds them.
    holder = sqlite3.connect(path)
    holder.execute("PRAGMA journal_mode = WAL")
    holder.execute("INSERT INTO meta VALUES ('k', 'v')")
    holder.commit()
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for suffix in ("", "-wal", "-shm"):
        shutil.copy(f"{path}{suffix}", snapshot / f"c.sqlite3{suffix}")
    holder.close()
    for suffix in ("", "-wal", "-shm"):
        shutil.copy(snapshot / f"c.sqlite3{suffix}", f"{path}{suffix}")
    Path(f"{path}{part}").chmod(0o444)
    report = run_store(path, as_user=True)
    assert report.get("read_only") is True, report
    assert report["titles"] == ["precious history"]
    assert f"c.sqlite3{part} is read-only" in report["notice"]
    assert nothing_moved(path.parent)
    Path(f"{path}{part}").chmod(0o644)
    still_has_history(path)


def test_only_real_damage_moves_a_file_aside(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)  # a header, then garbage: NOTADB
    with ConversationStore(path) as s:
        assert s.recovery_notice and "damaged" in s.recovery_notice
        assert not s.read_only
    assert not nothing_moved(tmp_path)
