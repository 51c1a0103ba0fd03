"""Which event loop implementation a service runs on (`service.event_loop`).

uvloop (libuv) cuts the event loop's and the transports' share of the CPU per message; the
standard asyncio loop stays available as a fallback and for comparison. A configured uvloop
that is not installed falls back to asyncio with a warning rather than refusing to start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from encimap import logs

log = logs.get_logger(__name__)

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(name: str) -> LoopFactory | None:
    """A factory for the loop named `name`, or None for asyncio's default loop."""
    if name != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        log.warning("service.event_loop_unavailable", event_loop=name, using="asyncio")
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], name: str) -> T:
    """`asyncio.run(main)` on the loop named `name`."""
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main)


def implementation(loop: asyncio.AbstractEventLoop) -> str:
    """ "uvloop" or "asyncio": what a loop actually is (for logs and benchmarks)."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
