"""A jinja2 sandbox for chat templates that also bounds time and memory.

A chat template is code from the model folder. jinja2's SandboxedEnvironment keeps it away from
Python internals but not from `'x' * 10**10` (a 10 GB string), `2 ** 10 ** 10` (an integer that
takes minutes to compute) or loops over range(100000) nested three deep. This environment bounds
string/list repetition and powers, counts every iteration of `range` across one render, and
stops a render whose output grows past a limit, so any template ends quickly with an error.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

MAX_REPEAT_LENGTH = 1_000_000
"""Longest string or list `*` may build."""
MAX_POWER_BITS = 4096
"""Largest result (in bits) `**` may build."""
MAX_RANGE_STEPS = 1_000_000
"""Iterations of `range` one render may use in total (all loops together)."""


class TemplateLimitError(SecurityError):
    """A template went past one of the sandbox's bounds."""


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment with bounded `*`, `**` and `range` (see the module doc)."""

    intercepted_binops = frozenset(["*", "**"])

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.range_budget = MAX_RANGE_STEPS
        self.globals["range"] = self._range

    def reset_budget(self) -> None:
        """Give the next render a full `range` budget."""
        self.range_budget = MAX_RANGE_STEPS

    def _range(self, *args: int) -> Iterator[int]:
        numbers = range(*args)
        if len(numbers) > self.range_budget:
            raise TemplateLimitError(
                f"the template loops more than {MAX_RANGE_STEPS} times in all (range{args})"
            )
        self.range_budget -= len(numbers)
        return iter(numbers)

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "*":
            _check_repeat(left, right)
            _check_repeat(right, left)
            return operator.mul(left, right)
        if operator_name == "**":
            _check_power(left, right)
            return operator.pow(left, right)
        return super().call_binop(context, operator_name, left, right)


def _check_repeat(sequence: Any, times: Any) -> None:
    if isinstance(sequence, (str, list, tuple, bytes)) and isinstance(times, int):
        if len(sequence) * max(times, 0) > MAX_REPEAT_LENGTH:
            raise TemplateLimitError(
                f"the template builds a sequence longer than {MAX_REPEAT_LENGTH} items"
            )


def _check_power(base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * abs(base).bit_length() > MAX_POWER_BITS:
            raise TemplateLimitError("the template computes a number too large to be useful")
