"""A tiny stderr progress bar for folder scans (no tqdm dependency) and the folder walker it accompanies."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator

BAR_WIDTH = 30
MIN_REDRAW_SECONDS = 0.1


class ProgressBar:
    """``with ProgressBar(total, enabled) as bar: bar.step()``; draws ``[####----] 12/40 name`` on stderr."""

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total, self.enabled, self.done = max(total, 0), enabled and total > 0, 0
        self.stream = stream if stream is not None else sys.stderr
        self._last_draw = 0.0

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._draw("", force=True)
            self.stream.write("\n")
            self.stream.flush()

    def step(self, label: str = "") -> None:
        self.done += 1
        if self.enabled:
            self._draw(label, force=self.done == self.total)

    def _draw(self, label: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < MIN_REDRAW_SECONDS:
            return
        self._last_draw = now
        filled = BAR_WIDTH * self.done // self.total
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {label[-40:]:<40}")
        self.stream.flush()


def progress_wanted(requested: bool | None, stream=None) -> bool:
    """Explicit request wins; otherwise only when the stream is a terminal."""
    if requested is not None:
        return requested
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def find_checkpoints(folder: str, suffixes: tuple[str, ...], recursive: bool) -> Iterator[str]:
    """Checkpoint files in ``folder`` (sorted; sub-folders too when ``recursive``), by case-insensitive suffix."""
    if not recursive:
        yield from _matching(folder, sorted(os.listdir(folder)), suffixes)
        return
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        yield from _matching(root, sorted(files), suffixes)


def _matching(root: str, names: Iterable[str], suffixes: tuple[str, ...]) -> Iterator[str]:
    for name in names:
        full = os.path.join(root, name)
        if name.lower().endswith(suffixes) and os.path.isfile(full):
            yield full
