"""Threads while decoding: LOOPCHAT_THREADS, physical cores, and the decode-time governor.

Why a module of its own: the measured kernel choice (engine/kernels/tuning.py) picks a thread
count once, at load; what happens to threads afterwards, while a reply decodes, is this module's.
With another busy process on a 2-core machine, two OpenMP threads wait at every barrier for the
descheduled one and decode falls to ~35% of its quiet speed, while one thread keeps ~70%. No
load-time choice can know what runs later, so `ThreadGovernor` times each decode step and, every
few dozen steps, tries the other thread count for a couple of steps and keeps whichever is faster
now. `decoding` hands the cores to the compiled kernel's own threads for the decode loop.

`forced_threads` is the one parser of LOOPCHAT_THREADS (a forced count also turns the governor
off); `physical_cores` is what both the measurement and the governor count on.
"""

from __future__ import annotations

import logging
import os
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from engine.kernels.native import NativeKernel

log = logging.getLogger(__name__)


def physical_cores() -> int:
    """Physical cores (hyper-threads only add contention to bandwidth-bound matvecs)."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:  # pragma: no cover - psutil is a dependency
        return os.cpu_count() or 1


def forced_threads() -> int | None:
    """LOOPCHAT_THREADS as a thread count from 1 to os.cpu_count(), or None when it is not set
    or not usable (then the measured count is used). The one reader of the variable.

    Parsed strictly, as ASCII digits: str.isdigit() also says yes to "²", which int() then
    refuses. Clamped to the logical CPUs: more threads than CPUs only wait on each other, and
    tens of thousands make libgomp abort or segfault when it cannot create them. Either way
    one warning says what was done.
    """
    raw = os.environ.get("LOOPCHAT_THREADS", "")
    text = raw.strip()
    if not text:
        return None
    shown = text if len(text) <= 12 else text[:12] + "…"
    if not (text.isascii() and text.isdigit()) or not text.strip("0"):
        log.warning(
            "LOOPCHAT_THREADS=%r is not a whole number of threads (1 or more); ignored, the "
            "measured thread count is used",
            shown,
        )
        return None
    most = os.cpu_count() or 1
    # Compared by length first: int() refuses strings of over 4300 digits with an error.
    if len(text.lstrip("0")) > len(str(most)) or int(text) > most:
        log.warning(
            "LOOPCHAT_THREADS=%s is more than this computer's %d CPUs; using %d threads",
            shown,
            most,
            most,
        )
        return most
    return int(text)


class ThreadGovernor:
    """Keeps the decode loop on the thread count that is fastest right now.

    Each step's time feeds a running average for the current count. After `first_probe` steps,
    then every `probe_every` steps, the other count runs for `probe_steps` steps (the first one
    discarded: a new OpenMP team warms up) and the faster average wins. The early first probe
    matters when the machine is already busy as a reply starts: until the other count has been
    timed there is nothing to compare with, and a collapsed two-thread decode would otherwise run
    for `probe_every` tokens. A sudden slowdown (another process took a core) switches at once
    rather than waiting for the next probe.
    """

    def __init__(
        self,
        counts: list[int],
        start: int,
        probe_every: int = 32,
        probe_steps: int = 3,
        first_probe: int = 4,
    ) -> None:
        self.counts = sorted(set(counts))
        self.current = start if start in self.counts else self.counts[-1]
        self.average: dict[int, float] = {}
        self.probe_every = probe_every
        self.probe_steps = probe_steps
        self.first_probe = first_probe
        self._steps = 0
        self._probing: list[float] | None = None
        self._skip = False
        self.setter: Callable[[int], None] | None = None
        """Applies a thread count (None: torch's); engine/kernels/native.py points it at its own
        pool."""

    @classmethod
    def for_runtime(cls, runtime: dict[str, Any]) -> ThreadGovernor | None:
        """A governor for a CPU model whose threads were not forced, else None."""
        threads = runtime.get("threads")
        if not runtime.get("thread_governor") or not isinstance(threads, int):
            return None
        cores = physical_cores()
        if cores < 2:
            return None
        return cls(sorted({1, max(1, cores // 2), cores}), start=threads)

    def _set(self, n: int) -> None:
        self.current = n
        if self.setter is not None:
            self.setter(n)
        elif torch.get_num_threads() != n:
            torch.set_num_threads(n)
        self._skip = True

    def observe(self, seconds: float) -> None:
        """Record one decode step's time and maybe change the thread count for the next."""
        self._steps += 1
        if self._skip:  # the first step after a switch pays for the new thread team
            self._skip = False
            return
        if self._probing is not None:
            self._probing.append(seconds)
            if len(self._probing) >= self.probe_steps - 1:
                self.average[self.current] = statistics.median(self._probing)
                self._probing = None
                self._set(min(self.average, key=self.average.get))  # type: ignore[arg-type]
            return
        old = self.average.get(self.current)
        self.average[self.current] = seconds if old is None else 0.7 * old + 0.3 * seconds
        others = {n: t for n, t in self.average.items() if n != self.current}
        if others and self.average[self.current] > 1.25 * min(others.values()):
            self._set(min(others, key=others.get))  # type: ignore[arg-type]
            return
        due = self._steps == self.first_probe or self._steps % self.probe_every == 0
        if due and len(self.counts) > 1:
            untried = [n for n in self.counts if n != self.current]
            # the count measured longest ago (or never) is probed next
            target = next((n for n in untried if n not in self.average), None)
            if target is None:
                target = untried[(self._steps // self.probe_every) % len(untried)]
            self._probing = []
            self._set(target)


@contextmanager
def decoding(kernel: NativeKernel | None, governor: ThreadGovernor | None) -> Iterator[None]:
    """Give the decode loop's cores to the compiled kernel's own threads, torch keeping one.

    Why: in a decode step every big product runs on the kernel's threads, and what torch still
    does (attention over the cache, norms) is small. If torch kept two threads, its OpenMP helper
    would fall asleep between those small ops and each wake-up would cost more than the op
    (measured: the attention's bmm took 93 µs instead of 18). The governor then moves the
    kernel's thread count; on leaving, torch gets it back for the next prefill's GEMMs.
    """
    if kernel is None:
        yield
        return
    n = governor.current if governor is not None else torch.get_num_threads()
    kernel.threads = n
    torch.set_num_threads(1)
    if governor is not None:
        governor.setter = kernel.set_threads
    try:
        yield
    finally:
        if governor is not None:
            governor.setter = None
            n = governor.current
        else:
            n = kernel.threads
        kernel.threads = 0
        torch.set_num_threads(n)
