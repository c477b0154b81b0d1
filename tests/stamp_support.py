"""Byte-level helpers shared by the stamp tests: header length, data-region and whole-file sha256 computed
independently of the stamper, random tensor bytes over a sparse file."""

import hashlib
import os
import random
import struct
from pathlib import Path

from safetensors import safe_open

RANDOM_BYTES = 3 << 20  # random data at the start of the data region; the rest stays a sparse hole
SEED = 1234
BLOCK = 1 << 20


def header_length(path) -> int:
    with open(path, "rb") as handle:
        return struct.unpack("<Q", handle.read(8))[0]


def data_sha256(path) -> str:
    """sha256 of everything after the header, computed here independently of the stamper."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(8 + header_length(path))
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def fill_random(path, length: int = RANDOM_BYTES, seed: int = SEED) -> Path:
    """Random bytes over the first ``length`` bytes of the data region (the rest of it stays sparse)."""
    with open(path, "r+b") as handle:
        handle.seek(8 + header_length(path))
        handle.write(random.Random(seed).randbytes(length))
    return Path(path)


def folder_listing(path) -> list[str]:
    return sorted(os.listdir(path))


def marker_names(path) -> set[str]:
    with safe_open(str(path), "pt") as handle:
        return {name for name in handle.keys() if name in ("v_pred", "ztsnr")}
