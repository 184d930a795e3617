"""Build hook: pip builds Loopchat's compiled decode kernels (native_build.py) as an optional part.

Everything else about the package is in pyproject.toml. The kernels are plain shared libraries
loaded with ctypes (engine/kernels/native.py), one per CPU level, so they are declared as
extensions only
to ride setuptools' build and install steps (wheel tag, editable installs); the compiling is
native_build.py's, the same code build.spec uses for the executable. Without a C compiler the
install still succeeds: the build says so, and the engine runs torch's kernels and tells why.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, str(Path(__file__).resolve().parent))
import native_build  # noqa: E402

variants = native_build.variants


class KernelLibrary(Extension):
    """One build of engine/kernels/csrc/decode_kernels.c (not a Python module)."""

    def __init__(self, variant: str) -> None:
        name = ".".join((*variants.library_dir_parts(), variant))
        super().__init__(name, sources=[], optional=True)
        self.variant = variant


class BuildKernels(build_ext):
    """build_ext that compiles KernelLibrary entries with native_build and carries their digests."""

    def get_ext_filename(self, fullname: str) -> str:
        """A plain library name (setuptools asks with the last part of the dotted name too)."""
        ext = getattr(self, "ext_map", {}).get(fullname)
        if isinstance(ext, KernelLibrary):
            name = _library(ext)
            return name if "." not in fullname else os.path.join(*fullname.split(".")[:-1], name)
        return super().get_ext_filename(fullname)

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, KernelLibrary):
            super().build_extension(ext)
            return
        target = Path(self.get_ext_fullpath(ext.name))
        problem = native_build.build_variant(ext.variant, target)
        if problem:
            sys.stderr.write(
                f"note: Loopchat's compiled {ext.variant} kernels were not built ({problem}); "
                "8/4-bit weights will run on torch's kernels, more slowly.\n"
            )

    def copy_extensions_to_source(self) -> None:
        """Editable installs: the libraries, and their digests, go into the source tree's
        engine/kernels/native_libs (a folder with no __init__.py, which setuptools does not
        create)."""
        folder = Path(*variants.library_dir_parts())
        folder.mkdir(exist_ok=True)
        super().copy_extensions_to_source()
        for ext in self.extensions:
            if isinstance(ext, KernelLibrary):
                built = Path(self.build_lib, *variants.library_dir_parts(), _library(ext))
                digest = built.with_name(built.name + ".sha256")
                if digest.is_file():
                    shutil.copyfile(digest, folder / digest.name)

    def get_outputs(self) -> list[str]:
        outputs = super().get_outputs()
        return outputs + [p + ".sha256" for p in outputs if _is_kernel_library(p)]


def _library(ext: KernelLibrary) -> str:
    return variants.library_filename(ext.variant)


def _is_kernel_library(path: str) -> bool:
    return Path(path).parent.name == variants.LIBRARY_FOLDER


setup(
    ext_modules=[KernelLibrary(v.name) for v in variants.variants_for(platform.machine())],
    cmdclass={"build_ext": BuildKernels},
)
