"""Read the header of a ``.safetensors`` file without loading any tensor.

Layout (https://github.com/huggingface/safetensors): an 8-byte little-endian unsigned header length ``N``, then
``N`` bytes of UTF-8 JSON, then the raw tensor data. The JSON object maps tensor names to
``{"dtype", "shape", "data_offsets"}`` and may hold a ``"__metadata__"`` object of string to string.

Everything is validated before use; every problem raises :class:`HeaderError` naming the file and the problem.
Memory and time are bounded whatever the bytes (limits below, measured in docs/INSPECTION.md "Limits"): the
length is checked against :data:`MAX_HEADER_BYTES` and the file size before anything is read, and the JSON's
containers and separators are counted in one pass over the bytes before it is parsed (what the parser would
build is what costs memory and time: a flood of empty lists is ~44 bytes of memory per byte of header). A limit
hit raises :class:`HeaderLimitError`.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from itertools import chain
from operator import gt, itemgetter
from typing import NamedTuple

from . import MAX_TENSORS, CheckpointFileError, CheckpointLimitError, open_regular_file

LENGTH_PREFIX_BYTES = 8
LENGTH_PREFIX_FORMAT = "<Q"
# Limits. Measured on real checkpoints (every tensor name, dtype and shape: tests/ckpt_factory.
# real_checkpoint_tensors; printed by benchmarks/fuzz_inspect.py), the largest being SDXL: 2,515 tensors in a
# 364,640-byte header (SD1.5: 1,130 in 154,984; SD1.5 with EMA: 1,818 in 249,288). Worst cases within the
# limits (fuzz campaign, docs/INSPECTION.md): ~24 MiB (a 4 MiB metadata string holding an emoji: 4 bytes per
# character once decoded) and ~0.15 s CPU.
# 4 MiB = 11.5x SDXL; room for large kohya metadata (a string costs about its size, unlike structure).
MAX_HEADER_BYTES = 4 * 2**20
# JSON objects + arrays ('{' and '[' bytes, those in strings too): SDXL 7,545 (an object and two arrays per
# tensor). 65,536 = 8.7x, room for MAX_TENSORS; each costs up to ~80 bytes and ~2 us (lists are tracked by the
# garbage collector; measured in a process holding torch): <= ~6 MB, ~0.15 s.
MAX_JSON_CONTAINERS = 65_536
# JSON ':' and ',' bytes (one per key, list item or value; those in strings too): SDXL 21,437. 262,144 = 12.2x;
# each value costs up to ~60 bytes (a two-letter string in a list): <= ~16 MB.
MAX_JSON_SEPARATORS = 262_144
MAX_COUNT = 2**64 - 1  # dimensions and offsets are u64 in the format
METADATA_KEY = "__metadata__"
HEADER_OPENING = b"{"
DATA_OFFSETS_LEN = 2
_UNICODE_ESCAPE = re.compile(rb"\\u")  # a regex: 2.7x faster than bytes.find for this needle (measured)
_CONTAINER_BYTES, _SEPARATOR_BYTES, _BACKSLASH = b"{[", b":,", b"\\"
_NOT_STRUCTURAL = bytes(sorted(set(range(256)) - set(_CONTAINER_BYTES + _SEPARATOR_BYTES + _BACKSLASH)))
_DICT, _LIST, _INT = frozenset({dict}), frozenset({list}), frozenset({int})
_DTYPE, _SHAPE, _OFFSETS = itemgetter("dtype"), itemgetter("shape"), itemgetter("data_offsets")
KNOWN_DTYPES = frozenset(
    {"BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64",
     "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64"}
)


class HeaderError(CheckpointFileError):
    """A safetensors header is missing, truncated, oversized or malformed."""


class HeaderLimitError(HeaderError, CheckpointLimitError):
    """A safetensors header over one of this module's limits (``limit`` names the constant)."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of the header; the data itself is never read."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]


@dataclass(frozen=True)
class SafetensorsHeader:
    """Parsed header: tensor entries by name, ``__metadata__`` strings and sizes."""

    path: str
    header_size: int
    file_size: int
    entries: dict[str, dict] = field(default_factory=dict, repr=False)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Tensor names in header order."""
        return list(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def shape(self, name: str) -> tuple[int, ...] | None:
        """Shape of tensor ``name`` or None when absent."""
        entry = self.entries.get(name)
        return None if entry is None else tuple(entry["shape"])

    def tensor(self, name: str) -> TensorInfo:
        """The validated entry of tensor ``name`` (KeyError when absent)."""
        entry = self.entries[name]
        return TensorInfo(name, entry["dtype"], tuple(entry["shape"]), tuple(entry["data_offsets"]))


def read_header(path: str | os.PathLike, max_header_bytes: int = MAX_HEADER_BYTES) -> SafetensorsHeader:
    """Read and validate the header of the safetensors file at ``path``."""
    path = os.fspath(path)
    try:
        with open_regular_file(path) as handle:
            file_size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(LENGTH_PREFIX_BYTES)
            header_len = _check_length(path, prefix, file_size, max_header_bytes)
            raw = handle.read(header_len)
    except OSError as exc:
        raise HeaderError(path, f"cannot read file: {exc.strerror or exc}") from exc
    if len(raw) != header_len:
        raise HeaderError(path, f"truncated header: expected {header_len} bytes, got {len(raw)}")
    return parse_header_bytes(raw, path, file_size)


def _check_length(path: str, prefix: bytes, file_size: int, max_header_bytes: int) -> int:
    if len(prefix) < LENGTH_PREFIX_BYTES:
        raise HeaderError(path, f"file too short for a safetensors header ({file_size} bytes)")
    (header_len,) = struct.unpack(LENGTH_PREFIX_FORMAT, prefix)
    if header_len == 0:
        raise HeaderError(path, "header length is 0")
    if header_len > max_header_bytes:
        raise HeaderLimitError(path, "MAX_HEADER_BYTES", "header length", header_len, max_header_bytes)
    if header_len > file_size - LENGTH_PREFIX_BYTES:
        raise HeaderError(path, f"header length {header_len} exceeds the file size {file_size} (truncated file?)")
    return header_len


def parse_header_bytes(
    raw: bytes, path: str | os.PathLike = "<bytes>", file_size: int | None = None
) -> SafetensorsHeader:
    """Validate the JSON header ``raw``; ``file_size`` (when known) bounds the data offsets."""
    path = os.fspath(path)
    if not raw.startswith(HEADER_OPENING):
        raise HeaderError(path, "header is not a JSON object (does not start with '{')")
    if len(raw) > MAX_HEADER_BYTES:
        raise HeaderLimitError(path, "MAX_HEADER_BYTES", "header length", len(raw), MAX_HEADER_BYTES)
    structure = _count_structure(path, raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HeaderError(path, f"header is not valid UTF-8 (byte {exc.start})") from exc
    doc = _load_json(path, text)
    meta = doc.pop(METADATA_KEY, None)
    entries = list(doc.values())
    if _may_have_duplicates(raw, structure, doc, meta, entries):
        doc = meta = entries = None  # dropped before the second parse: never two trees at once
        doc = _load_json(path, text, strict=True)
        meta = doc.pop(METADATA_KEY, None)
        entries = list(doc.values())
    if len(entries) > MAX_TENSORS:
        raise HeaderLimitError(path, "MAX_TENSORS", "tensors", len(entries), MAX_TENSORS)
    metadata = _parse_metadata(path, meta)
    data_len = None if file_size is None else file_size - LENGTH_PREFIX_BYTES - len(raw)
    if not _columns_ok(entries, data_len):
        entries = None
        for name, entry in doc.items():
            _check_tensor(path, name, entry, data_len)
        raise HeaderError(path, "invalid tensor entries")  # only if the column check rejects what this accepts
    total = LENGTH_PREFIX_BYTES + len(raw) + (data_len or 0)
    return SafetensorsHeader(path, len(raw), file_size if file_size is not None else total, doc, metadata)


class _Structure(NamedTuple):
    colons: int
    commas: int
    backslashes: int


def _count_structure(path: str, raw: bytes) -> _Structure:
    """Count the JSON's containers and separators in one pass over the bytes, before anything is parsed (bytes
    inside strings count too: an over-estimate); keep what the duplicate-key screen needs."""
    structural = raw.translate(None, _NOT_STRUCTURAL)
    counts = _Structure(structural.count(b":"), structural.count(b","), structural.count(_BACKSLASH))
    containers = len(structural) - counts.colons - counts.commas - counts.backslashes
    if containers > MAX_JSON_CONTAINERS:
        raise HeaderLimitError(path, "MAX_JSON_CONTAINERS", "JSON objects and arrays", containers,
                               MAX_JSON_CONTAINERS)
    if counts.colons + counts.commas > MAX_JSON_SEPARATORS:
        raise HeaderLimitError(path, "MAX_JSON_SEPARATORS", "JSON separators", counts.colons + counts.commas,
                               MAX_JSON_SEPARATORS)
    return counts


def _load_json(path: str, text: str, strict: bool = False) -> dict:
    """Parse ``text``; ``strict`` also rejects duplicate keys at any depth (slower, used only when needed)."""
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicates if strict else None)
    except _DuplicateKey as exc:
        raise HeaderError(path, f"duplicate key {_short(exc.args[0])} in header") from None
    except RecursionError:
        raise HeaderError(path, "header JSON is nested too deeply") from None
    except ValueError as exc:
        raise HeaderError(path, f"header is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise HeaderError(path, "header JSON is not an object")
    return doc


def _may_have_duplicates(raw: bytes, structure: _Structure, doc: dict, meta: object, entries: list) -> bool:
    """Cheap screen for duplicate keys: count the key separators.

    Without ``\\u`` escapes, every ':' in the text is either a key separator or a character of a string. The
    parsed tree has one key per separator unless a key was duplicated (the duplicate and its strings vanish), so
    ``count(':') == keys + ':' inside the kept strings`` proves there is none. Anything unusual (escapes, strings
    in unexpected places, nested values) fails the equality and gets the strict, slower parse.
    """
    if (structure.backslashes and _UNICODE_ESCAPE.search(raw)) or (meta is not None and type(meta) is not dict):
        return True
    try:
        keys = len(doc) + sum(map(len, entries))  # an entry that is not a dict miscounts (or has no len)
    except TypeError:
        return True
    string_colons = "".join(doc).count(":")
    if meta is not None:
        keys += 1 + len(meta)
        string_colons += "".join(meta).count(":") + sum(str(value).count(":") for value in meta.values())
    return structure.colons != keys + string_colons


class _DuplicateKey(Exception):
    pass


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _DuplicateKey(duplicate)
    return result


def _short(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages stay small whatever the file holds."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _parse_metadata(path: str, meta: object) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise HeaderError(path, f"{METADATA_KEY} must be an object of strings, got {type(meta).__name__}")
    for key, value in meta.items():
        if not isinstance(value, str):
            raise HeaderError(path, f"{METADATA_KEY}[{_short(key)}] must be a string, got {type(value).__name__}")
    return meta


def _is_count(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_COUNT


def _columns_ok(entries: list, data_len: int | None) -> bool:
    """Every tensor entry checked with whole-column operations (C loops); False sends the caller to the per-entry
    check that names the culprit. An entry that is not a dict fails ``itemgetter`` (TypeError); offsets that are not
    a list of two fail the length or element check; elements must be ``int`` exactly (``bool`` is not a count)."""
    try:
        if not set(map(_DTYPE, entries)) <= KNOWN_DTYPES:
            return False
        shapes = list(map(_SHAPE, entries))
        if set(map(type, shapes)) - _LIST:
            return False
        offsets = list(map(_OFFSETS, entries))
        if set(map(len, offsets)) - {DATA_OFFSETS_LEN}:
            return False
        dims = list(chain.from_iterable(shapes))
        flat = list(chain.from_iterable(offsets))
        types = set(map(type, dims))
        types.update(map(type, flat))
        if types - _INT:
            return False
        begins, ends = flat[0::2], flat[1::2]
        if min(dims, default=0) < 0 or max(dims, default=0) > MAX_COUNT or min(begins, default=0) < 0:
            return False
        if any(map(gt, begins, ends)):
            return False
        return max(ends, default=0) <= (MAX_COUNT if data_len is None else data_len)
    except (TypeError, KeyError):
        return False


def _check_tensor(path: str, name: str, entry: object, data_len: int | None) -> None:
    where = f"tensor {_short(name)}"
    if not isinstance(entry, dict):
        raise HeaderError(path, f"{where}: entry must be an object, got {type(entry).__name__}")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in KNOWN_DTYPES:
        raise HeaderError(path, f"{where}: unknown dtype {_short(dtype)}")
    if not isinstance(shape, list) or not all(_is_count(dim) for dim in shape):
        raise HeaderError(path, f"{where}: shape must be a list of non-negative integers, got {_short(shape)}")
    if not (isinstance(offsets, list) and len(offsets) == DATA_OFFSETS_LEN and all(_is_count(o) for o in offsets)):
        raise HeaderError(path, f"{where}: data_offsets must be two non-negative integers, got {_short(offsets)}")
    begin, end = offsets
    if begin > end:
        raise HeaderError(path, f"{where}: data_offsets begin {begin} > end {end}")
    if data_len is not None and end > data_len:
        raise HeaderError(path, f"{where}: data_offsets end {end} beyond the data size {data_len}")
