"""Per-stage progress lines with counts and seconds, on the ``forewarn`` logger."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("forewarn")


@contextmanager
def stage(name: str) -> Iterator[dict[str, object]]:
    """Log ``name`` when it starts and, with the counts put in the yielded dict and the
    elapsed seconds, when it ends::

        with stage("pull academic") as counts:
            counts["events"] = 1234
    """
    log.info("%s ...", name)
    counts: dict[str, object] = {}
    start = time.perf_counter()
    yield counts
    seconds = time.perf_counter() - start
    counts["seconds"] = round(seconds, 2)
    shown = ", ".join(f"{k} {_fmt(v)}" for k, v in counts.items() if k != "seconds")
    log.info("%s done in %.1f s%s", name, seconds, f" ({shown})" if shown else "")


def _fmt(value: object) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
