"""The error type shared by the checkpoint readers: it names the file and the problem."""

from __future__ import annotations

import os


class CheckpointFileError(ValueError):
    """A checkpoint file that cannot be read as asked; ``str()`` is "<path>: <problem>"."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
