"""Checkpoint files: read what a file states without loading its tensors, stamp it, write the webuis' YAML beside it.

- :mod:`.safetensors_header`: the bounded, validated header of a ``.safetensors`` file.
- :mod:`.torch_pickle`: tensor names and shapes of a torch zip checkpoint from its pickle opcodes, never unpickled.
- :mod:`.architecture`: SD1 / SD2 / SDXL base, refiner, inpainting... from tensor names and shapes (a data table).
- :mod:`.host_keys`: the marker tensors and metadata keys each host reads (and the values their writers use).
- :mod:`.inspection`: every source a file can state its settings in, resolved with precedence and conflicts.
- :mod:`.stamp`: write those markers and keys into a ``.safetensors`` file, tensor bytes copied, never decoded.
- :mod:`.sidecar_yaml`: the crafted ``<checkpoint>.yaml`` (templates + the toolkit's record).
- :mod:`.file_writes`: atomic, never-overwriting writes and backups.
"""

from __future__ import annotations

import os


class CheckpointFileError(ValueError):
    """A checkpoint file that cannot be read as asked; ``str()`` is "<path>: <problem>"."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
