"""Bounded waits for tests: a condition asked again and again until it holds or a generous
deadline passes (a bound, never a speed that is asserted on)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def poll_until(check: Callable[[], bool], timeout: float, every: float = 0.1) -> bool:
    """Whether ``check`` comes true within ``timeout`` seconds (asked every ``every``)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)
    return True


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0,
             every: float = 0.1) -> None:
    """Fail the test unless ``check`` comes true within ``timeout`` seconds."""
    assert poll_until(check, timeout, every), f"{what}: not after {timeout:g} s"


async def until(pred: Callable[[], bool], what: str, timeout: float = 30.0,
                every: float = 0.02) -> None:
    """``wait_for`` in an event loop: fail unless ``pred`` comes true within ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(every)
