"""Progress of a bench on a terminal: a bar with elapsed time and an ETA (``rich``); nothing when the output is not a
terminal or ``CI`` is set (the figures a bench prints stay the only output in logs). The bar is
:mod:`vpp.progress` (Django-free), with the shapes the benches use.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

# A bench run as ``python bench/x.py`` has bench/ on its path, not the repository: the bar is the project's own.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vpp.progress import interactive, progress_bar

T = TypeVar("T")


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with a bar (``total`` defaults to ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(description, total) as update:
        for done, item in enumerate(items, start=1):
            yield item
            update(done)


def wait(seconds: float, description: str) -> None:
    """Sleep ``seconds`` with a bar (a timed load: the ETA is exact)."""
    end = time.monotonic() + seconds
    with progress_bar(description, seconds) as update:
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.5))
            update(seconds - max(left - 0.5, 0.0))


@contextmanager
def timed(description: str, seconds: float) -> Iterator[None]:
    """A bar that fills over ``seconds`` of wall time while the block runs (a load of known length run elsewhere,
    e.g. in worker processes); it ends with the block."""
    if not interactive():
        yield
        return
    import threading

    done = threading.Event()
    with progress_bar(description, seconds) as update:
        start = time.monotonic()

        def tick() -> None:
            while not done.wait(0.5):
                update(min(time.monotonic() - start, seconds))

        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
