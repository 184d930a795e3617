"""The builds of Loopchat's compiled decode kernels (engine/kernels/csrc/decode_kernels.c): one
shared
library per CPU level, made when Loopchat itself is built, never on the user's machine.

Why several builds: the kernels are worth having only because they use the CPU's integer
multiply-add instructions, and which of those exist differs between the CPUs Loopchat runs on
(an AMD EPYC with AVX-512 VNNI/VBMI one day, an older Xeon or a laptop with AVX2 only the next).
A single `-march=native` build fits only the machine that compiled it, so, like numpy's dispatch
or ggml's `GGML_CPU_ALL_VARIANTS`, the package carries one build per level that matters and the
engine (engine/kernels/native.py) loads the best one the CPU can execute, asking the baseline
build's
`lc_cpu_level()` (the compiler's own CPU detection, which also checks that the operating system
saves the wider registers).

This module is read both by the engine at run time and, by file path, by the build
(native_build.py from setup.py and build.spec), where neither torch nor the engine package can be
imported: standard library only.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

PACKAGE = "engine.kernels"
LIBRARY_FOLDER = "native_libs"
"""Folder inside PACKAGE that holds the builds (installed or frozen alike)."""


def library_dir_parts() -> tuple[str, ...]:
    """The builds' folder relative to site-packages (or the frozen bundle), as path parts."""
    return (*PACKAGE.split("."), LIBRARY_FOLDER)


@dataclass(frozen=True)
class Variant:
    """One build: its name, the `lc_cpu_level()` a CPU needs to run it, its compiler flags."""

    name: str
    level: int
    flags: tuple[str, ...]


X86_VARIANTS = (
    Variant(
        "avx512",
        2,
        (
            "-mavx2",
            "-mfma",
            "-mavx512f",
            "-mavx512bw",
            "-mavx512vl",
            "-mavx512dq",
            "-mavx512vnni",
            "-mavx512vbmi",
        ),
    ),  # fmt: skip
    Variant("avx2", 1, ("-mavx2", "-mfma")),
    Variant("baseline", 0, ()),
)
"""Best first. Levels are those of `lc_cpu_level()` in the C source: 2 = AVX-512 F/BW/VL/DQ with
VNNI and VBMI (Intel Ice Lake and later, AMD Zen 4 and later), 1 = AVX2 with FMA (since 2013/2015),
0 = any x86-64. A CPU with AVX-512 but without VNNI or VBMI runs the AVX2 build."""

PLAIN_VARIANTS = (Variant("baseline", 0, ()),)
"""Other architectures (ARM): one plain-C build; the C code has no vector path there."""


def is_x86_64(machine: str) -> bool:
    return machine.lower() in ("x86_64", "amd64")


def variants_for(machine: str) -> tuple[Variant, ...]:
    """The builds made for (and tried, best first, on) a machine of this architecture."""
    return X86_VARIANTS if is_x86_64(machine) else PLAIN_VARIANTS


def library_filename(variant: str, platform: str = sys.platform) -> str:
    """The file a build is written to: a plain shared library (loaded with ctypes, not imported)."""
    suffix = {"darwin": ".dylib", "win32": ".dll"}.get(platform, ".so")
    return f"loopchat_kernels_{variant}{suffix}"


def digest_filename(variant: str, platform: str = sys.platform) -> str:
    """The build's SHA-256, written beside it by the build: a damaged or truncated library is
    refused before the dynamic loader maps it (a truncated ELF crashes the process with SIGBUS,
    which no Python code can catch)."""
    return library_filename(variant, platform) + ".sha256"
