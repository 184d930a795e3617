"""Load torch's big C++ library before `import torch`, without holding Python's GIL.

`import torch` dlopens libtorch_cpu (hundreds of MB of code with static initialisers) inside the
import machinery, which holds the GIL for the whole call: ~250 ms in which the GUI thread cannot
run a single line, so the window freezes while the first model loads. A call through ctypes to
the C library's own `dlopen` releases the GIL, so doing that first, in the engine thread, leaves
the later import only a cheap second dlopen of an already-loaded library.

Linux and macOS only; on Windows torch already loads its DLLs through ctypes (GIL released).
Anything unexpected (a frozen build that moved the files, no dlopen) just skips the warm-up.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

LIBRARIES = {"linux": ("libtorch_cpu.so",), "darwin": ("libtorch_cpu.dylib",)}


def torch_library_dir() -> Path | None:
    """torch's `lib` folder, found without importing torch."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return folder if folder.is_dir() else None


@functools.cache
def preload_torch_libraries() -> list[str]:
    """dlopen torch's native libraries with the GIL released; returns the ones loaded.

    Cached: the work happens once per process, and only while torch is not imported yet.
    """
    names = LIBRARIES.get(sys.platform, ())
    if not names or "torch" in sys.modules:
        return []
    folder = torch_library_dir()
    if folder is None:
        return []
    try:
        libc = ctypes.CDLL(None)
        dlopen = libc.dlopen
    except (OSError, AttributeError):
        return []
    dlopen.restype = ctypes.c_void_p
    dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    loaded = []
    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        # A CDLL foreign call releases the GIL for its duration: the GUI thread keeps running.
        if dlopen(os.fsencode(path), os.RTLD_NOW | os.RTLD_GLOBAL):
            loaded.append(name)
        else:
            log.debug("could not preload %s; torch will load it itself", path)
    return loaded
