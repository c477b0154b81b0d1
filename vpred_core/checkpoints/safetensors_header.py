"""Read the header of a ``.safetensors`` file without loading any tensor.

Layout (https://github.com/huggingface/safetensors): an 8-byte little-endian unsigned header length ``N``, then
``N`` bytes of UTF-8 JSON, then the raw tensor data. The JSON object maps tensor names to
``{"dtype", "shape", "data_offsets"}`` and may hold a ``"__metadata__"`` object of string to string.

Everything is validated before use; every problem raises :class:`HeaderError` naming the file and the problem.
Memory is bounded: the length is checked against :data:`MAX_HEADER_BYTES` and the file size before any
allocation, and only the header bytes are read.
"""

from __future__ import annotations

import gc
import json
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from operator import gt, itemgetter

from . import CheckpointFileError

LENGTH_PREFIX_BYTES = 8
LENGTH_PREFIX_FORMAT = "<Q"
# The safetensors reference implementation refuses headers above 100 MB; so do we.
MAX_HEADER_BYTES = 100_000_000
METADATA_KEY = "__metadata__"
HEADER_OPENING = b"{"
DATA_OFFSETS_LEN = 2
_UNICODE_ESCAPE = b"\\u"
_BACKSLASH = b"\\"
_COLON = ":"
_DICT = frozenset({dict})
_LIST = frozenset({list})
_DTYPE, _SHAPE, _OFFSETS = itemgetter("dtype"), itemgetter("shape"), itemgetter("data_offsets")
_FIRST, _SECOND = itemgetter(0), itemgetter(1)
_INT = frozenset({int})
KNOWN_DTYPES = frozenset(
    {"BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64",
     "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64"}
)


class HeaderError(CheckpointFileError):
    """A safetensors header is missing, truncated, oversized or malformed."""


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
        with open(path, "rb") as handle:
            file_size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(LENGTH_PREFIX_BYTES)
            header_len = _check_length(path, prefix, file_size, max_header_bytes)
            raw = handle.read(header_len)
    except OSError as exc:
        raise HeaderError(path, f"cannot read file: {exc.strerror or exc}") from exc
    if len(raw) != header_len:
        raise HeaderError(path, f"truncated header: expected {header_len} bytes, got {len(raw)}")
    with cyclic_gc_paused():
        return parse_header_bytes(raw, path, file_size)


@contextmanager
def cyclic_gc_paused():
    """Pause the cyclic garbage collector while a header is parsed and validated.

    A 400 KB header becomes ~20k small containers; every 700 allocations CPython runs a collection that walks
    them (and, every tenth, everything else alive: a whole torch import), which measured 2-4x the parse
    itself in a folder scan. The parsed JSON holds no reference cycles, so nothing is left for the collector."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _check_length(path: str, prefix: bytes, file_size: int, max_header_bytes: int) -> int:
    if len(prefix) < LENGTH_PREFIX_BYTES:
        raise HeaderError(path, f"file too short for a safetensors header ({file_size} bytes)")
    (header_len,) = struct.unpack(LENGTH_PREFIX_FORMAT, prefix)
    if header_len == 0:
        raise HeaderError(path, "header length is 0")
    if header_len > max_header_bytes:
        raise HeaderError(path, f"header length {header_len} exceeds the limit of {max_header_bytes} bytes")
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
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HeaderError(path, f"header is not valid UTF-8 (byte {exc.start})") from exc
    doc = _load_json(path, text)
    if _may_have_duplicates(raw, text, doc):
        _load_json(path, text, strict=True)
    data_len = None if file_size is None else file_size - LENGTH_PREFIX_BYTES - len(raw)
    metadata = _parse_metadata(path, doc.pop(METADATA_KEY, None))
    try:
        _validate_entries(path, doc, data_len)
    except HeaderError:
        _load_json(path, text, strict=True)  # a duplicate key is the better explanation when there is one
        raise
    total = LENGTH_PREFIX_BYTES + len(raw) + (data_len or 0)
    return SafetensorsHeader(path, len(raw), file_size if file_size is not None else total, doc, metadata)


def _load_json(path: str, text: str, strict: bool = False) -> dict:
    """Parse ``text``; ``strict`` also rejects duplicate keys at any depth (slower, used only when needed)."""
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicates if strict else None)
    except _DuplicateKey as exc:
        raise HeaderError(path, f"duplicate key {exc.args[0]!r} in header") from None
    except RecursionError:
        raise HeaderError(path, "header JSON is nested too deeply") from None
    except ValueError as exc:
        raise HeaderError(path, f"header is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise HeaderError(path, "header JSON is not an object")
    return doc


def _may_have_duplicates(raw: bytes, text: str, doc: dict) -> bool:
    """Cheap screen for duplicate keys: count the key separators.

    Without ``\\u`` escapes, every ':' in the text is either a key separator or a character of a string. The
    parsed tree has one key per separator unless a key was duplicated (the duplicate and its strings vanish), so
    ``count(':') == keys + ':' inside the kept strings`` proves there is none. Anything unusual (escapes, strings
    in unexpected places, nested values) fails the equality and gets the strict, slower parse.
    """
    if raw.count(_BACKSLASH) and _UNICODE_ESCAPE in raw:
        return True
    meta = doc.get(METADATA_KEY, {})
    if not isinstance(meta, dict):
        return True
    entries = [entry for name, entry in doc.items() if name != METADATA_KEY]
    if set(map(type, entries)) - _DICT:
        return True
    keys = len(doc) + sum(map(len, entries)) + len(meta)
    string_colons = "".join(doc).count(_COLON) + "".join(chain(meta, map(str, meta.values()))).count(_COLON)
    return text.count(_COLON) != keys + string_colons


class _DuplicateKey(Exception):
    pass


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _DuplicateKey(duplicate)
    return result


def _parse_metadata(path: str, meta: object) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise HeaderError(path, f"{METADATA_KEY} must be an object of strings, got {type(meta).__name__}")
    for key, value in meta.items():
        if not isinstance(value, str):
            raise HeaderError(path, f"{METADATA_KEY}[{key!r}] must be a string, got {type(value).__name__}")
    return dict(meta)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _validate_entries(path: str, doc: dict, data_len: int | None) -> None:
    """Check every tensor entry with whole-column operations (fast); on failure find the culprit for the message."""
    if not _columns_ok([entry for name, entry in doc.items() if name != METADATA_KEY], data_len):
        for name, entry in doc.items():
            _check_tensor(path, name, entry, data_len)
        raise HeaderError(path, "invalid tensor entries")  # only if the column check rejects what this accepts


def _columns_ok(entries: list, data_len: int | None) -> bool:
    try:
        dtypes = set(map(_DTYPE, entries))
        shapes = list(map(_SHAPE, entries))
        offsets = list(map(_OFFSETS, entries))
        if not (dtypes <= KNOWN_DTYPES and set(map(type, shapes)) <= _LIST and set(map(type, offsets)) <= _LIST):
            return False
        if set(map(len, offsets)) - {DATA_OFFSETS_LEN}:
            return False
        dims = list(chain.from_iterable(shapes))
        begins, ends = list(map(_FIRST, offsets)), list(map(_SECOND, offsets))
        if set(map(type, chain(dims, begins, ends))) - _INT:
            return False
        if min(dims, default=0) < 0 or min(begins, default=0) < 0 or any(map(gt, begins, ends)):
            return False
        return data_len is None or max(ends, default=0) <= data_len
    except (TypeError, KeyError):
        return False


def _check_tensor(path: str, name: str, entry: object, data_len: int | None) -> None:
    if not isinstance(entry, dict):
        raise HeaderError(path, f"tensor {name!r}: entry must be an object, got {type(entry).__name__}")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in KNOWN_DTYPES:
        raise HeaderError(path, f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(dim) for dim in shape):
        raise HeaderError(path, f"tensor {name!r}: shape must be a list of non-negative integers, got {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == DATA_OFFSETS_LEN and all(_is_count(o) for o in offsets)):
        raise HeaderError(path, f"tensor {name!r}: data_offsets must be two non-negative integers, got {offsets!r}")
    begin, end = offsets
    if begin > end:
        raise HeaderError(path, f"tensor {name!r}: data_offsets begin {begin} > end {end}")
    if data_len is not None and end > data_len:
        raise HeaderError(path, f"tensor {name!r}: data_offsets end {end} beyond the data size {data_len}")
