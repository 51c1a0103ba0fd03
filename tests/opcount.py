"""Operation counts for the linear-cost property tests: Python lines executed inside encimap
while a function runs (deterministic, unlike a clock, and the same on a busy machine); and,
for work inside C code that no line count sees, the process's best CPU time over a few runs,
only ever compared as a ratio within one test."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

PACKAGE = "/encimap/"


def lines_executed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """How many lines of encimap's code ran during `function(*args, **kwargs)` (exceptions
    are swallowed: a refusal is an outcome like any other)."""
    count = 0

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def call(frame: FrameType, event: str, arg: Any) -> Any:
        return local if PACKAGE in frame.f_code.co_filename else None

    previous = sys.gettrace()
    sys.settrace(call)
    try:
        function(*args, **kwargs)
    except Exception:  # noqa: S110 - the count is what is measured
        pass
    finally:
        sys.settrace(previous)
    return count


def assert_linear(build: Callable[[int], Any], function: Callable[[Any], Any], n: int) -> None:
    """Ten times the input costs at most about ten times the operations (plus a constant)."""
    small = lines_executed(function, build(n))
    large = lines_executed(function, build(10 * n))
    assert large <= 11 * small + 50, (small, large)


def best_cpu_time(function: Callable[[Any], Any], value: Any, rounds: int) -> float:
    """The least CPU time of this process over `rounds` calls of `function(value)`."""
    best = []
    for _ in range(rounds):
        started = time.process_time()
        function(value)
        best.append(time.process_time() - started)
    return min(best)
