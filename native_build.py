"""Build Loopchat's compiled decode kernels: one shared library per CPU level
(engine/kernels/native_variants.py), for `pip install` (setup.py's build_ext) and for the frozen
executable (build.spec).

Why at build time: compiling on the user's machine needed a C compiler there (most Windows and
macOS machines and every frozen app have none), wrote code into a user-writable cache that the app
then loaded (a truncated file crashed every start; a library planted there ran in-process), and a
hanging compiler froze the first load. Built with the package, the libraries sit beside the
engine's own code and are verified against their SHA-256 before they are loaded.

Standard library only: it runs in pip's isolated build environment, where neither torch nor the
engine package is installed (native_variants.py is read by file path for that reason).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SOURCE = ROOT / "engine" / "kernels" / "csrc" / "decode_kernels.c"
COMPILE_TIMEOUT_S = 600
BASE_FLAGS = ("-O3", "-shared", "-fPIC", "-pthread", "-std=c11")


def _variants_module():
    spec = importlib.util.spec_from_file_location(
        "_loopchat_native_variants", ROOT / "engine" / "kernels" / "native_variants.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


variants = _variants_module()


def compiler() -> list[str] | None:
    """The C compiler command: $CC (may hold flags), else cc, gcc or clang on PATH."""
    wanted = shlex.split(os.environ.get("CC", ""))
    if wanted and shutil.which(wanted[0]):
        return wanted
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return [name]
    return None


def build_variant(
    name: str, target: Path, flags: tuple[str, ...] | None = None, source: Path = SOURCE
) -> str | None:
    """Compile one build into `target` and write its digest beside it; None on success, else why
    not (one line). `flags` overrides the variant's own (tests build other instruction sets)."""
    if sys.platform == "win32":
        return "the compiled kernels are not built on Windows (they need pthreads and GCC/Clang)"
    cc = compiler()
    if cc is None:
        return "no C compiler (cc, gcc or clang) on PATH"
    if flags is None:
        chosen = {v.name: v for v in variants.variants_for(_machine())}.get(name)
        if chosen is None:
            return f"no build named {name!r} for this architecture"
        flags = chosen.flags
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = Path(tmp) / target.name
        command = [*cc, *BASE_FLAGS, *flags, "-o", str(partial), str(source), "-lm"]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{cc[0]} failed: {exc}"
        if done.returncode != 0:
            complaint = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            return f"{cc[0]} could not build it: {complaint[:200]}"
        data = partial.read_bytes()
        _write_durably(target, data)
    _write_durably(
        target.with_name(target.name + ".sha256"), hashlib.sha256(data).hexdigest().encode()
    )
    return None


def _write_durably(path: Path, data: bytes) -> None:
    """Written aside, flushed to disk, then renamed: a crash leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _machine() -> str:
    import platform

    return platform.machine()


def build_all(folder: Path) -> dict[str, str | None]:
    """Every build for this architecture into `folder`: {variant: None or why it failed}."""
    return {
        v.name: build_variant(v.name, folder / variants.library_filename(v.name))
        for v in variants.variants_for(_machine())
    }


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.joinpath(*variants.library_dir_parts())
    results = build_all(out)
    for variant, problem in results.items():
        print(f"{variant}: {problem or 'built'}")
    sys.exit(1 if any(results.values()) else 0)
