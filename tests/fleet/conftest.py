"""Fleet test fixtures: Celery tasks run in-process even when REDIS_URL points at a real broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vpp.celery import app


@pytest.fixture(autouse=True)
def celery_eager() -> Iterator[None]:
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous
