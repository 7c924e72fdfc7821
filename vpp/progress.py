"""Progress of long work on a terminal: a bar with elapsed time and an ETA (``rich``), nothing at all when the output
is not a terminal (CI, a log file, a pipe) or ``CI`` is set: :func:`progress_bar` then yields a no-op.

Used by ``regulation replay``, ``demo_seed`` (the generated history) and the benches; ``markets propose`` has its
own (the markets layer does not import ``vpp``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

Update = Callable[..., None]  # update(completed, description=None, total=None)


def interactive(stream: TextIO | None = None) -> bool:
    """A person is watching: the stream is a terminal and this is not a CI run."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("CI")


@contextmanager
def progress_bar(description: str, total: float | None, *, stream: TextIO | None = None) -> Iterator[Update]:
    """``with progress_bar("replay", total=seconds) as update: update(done, description=...)``."""
    if not interactive(stream):
        yield lambda *args, **kwargs: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(file=stream or sys.stderr)) as progress:
        task = progress.add_task(description, total=total)

        def update(completed: float, description: str | None = None, total: float | None = None) -> None:
            fields = {"description": description} if description is not None else {}
            if total is not None:
                fields["total"] = total  # type: ignore[assignment]
            progress.update(task, completed=completed, **fields)  # type: ignore[arg-type]

        yield update
