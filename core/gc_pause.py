"""Cyclic garbage collection held off while a bulk call builds many short-lived objects.

A batch of 1,000 postings builds tens of thousands of small objects that live until the batch is
written. Python's cyclic collector runs every few hundred allocations and, as they survive, walks
them (and every older object of the process) again and again: about a quarter of a batch's time.
Reference counting still frees everything that is not in a cycle; the collector runs again as
soon as the call returns.

Threads share one collector: a call that finds it already off leaves it as it found it, so the
collector is never left off, at worst on a little early.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collection_paused() -> Iterator[None]:
    """Hold off cyclic garbage collection inside the block (also usable as a decorator)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
