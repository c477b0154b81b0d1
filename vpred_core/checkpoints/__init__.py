"""Checkpoint files: read what a file states without loading its tensors, stamp it, write the webuis' YAML beside it.

- :mod:`.safetensors_header`: the bounded, validated header of a ``.safetensors`` file.
- :mod:`.torch_pickle`: tensor names and shapes of a torch zip checkpoint from its pickle opcodes, never unpickled.
- :mod:`.architecture`: SD1 / SD2 / SDXL base, refiner, inpainting... from tensor names and shapes (a data table).
- :mod:`.host_keys`: the marker tensors and metadata keys each host reads (and the values their writers use).
- :mod:`.inspection`: every source a file can state its settings in, resolved with precedence and conflicts.
- :mod:`.stamp`: write those markers and keys into a ``.safetensors`` file, tensor bytes copied, never decoded.
- :mod:`.sidecar_yaml`: the crafted ``<checkpoint>.yaml`` (templates + the toolkit's record).
- :mod:`.file_writes`: exclusive creation, symlink-safe replacement with a backup.

Reading is bounded whatever the bytes: per inspected file at most 64 MB of extra memory and 0.5 s (the budget of
a start-up scan of a whole checkpoint folder). Each reader states its limits beside the measurement on real
checkpoints they come from (docs/INSPECTION.md "Limits"); a file over one raises a :class:`CheckpointLimitError`
subclass naming the file and the limit.
"""

from __future__ import annotations

import errno
import os
import stat

# Shared by both file kinds. Real checkpoints: SD1.5 1,130 tensors, SD1.5 with its EMA copy 1,818, SDXL 2,515.
# 16,384 = 6.5x SDXL: any Stable Diffusion checkpoint fits, a file listing more is not one.
MAX_TENSORS = 16_384


class CheckpointFileError(ValueError):
    """A checkpoint file that cannot be read as asked; ``str()`` is "<path>: <problem>"."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CheckpointLimitError(CheckpointFileError):
    """A file over an inspection limit; ``limit`` is the constant's name, ``found`` and ``maximum`` the values."""

    def __init__(self, path: str | os.PathLike, limit: str, what: str, found: object, maximum: int):
        self.limit, self.found, self.maximum = limit, found, maximum
        super().__init__(path, f"{what}: {found} exceeds the inspection limit of {maximum} ({limit}); "
                               "a file this large is not a Stable Diffusion checkpoint")


def open_regular_file(path: str | os.PathLike):
    """Open ``path`` for binary reading if it is a regular file (a symbolic link to one is fine); OSError otherwise.

    Opened non-blocking, then checked: opening a FIFO named ``m.safetensors`` for reading would otherwise wait
    for a writer forever (a start-up scan stuck on one file), and a device has no size to check."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
