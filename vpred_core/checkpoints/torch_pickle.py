"""List the tensor names and shapes of a PyTorch zip checkpoint (``.ckpt``/``.pt``) WITHOUT unpickling it.

``torch.save`` writes a zip whose ``<archive>/data.pkl`` pickle describes the state dict: each tensor is a call
of ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``. Unpickling would import and call
whatever globals the file names (arbitrary code execution), so this module never does: :func:`evaluate` walks the
opcodes itself and evaluates only a whitelist of data-building opcodes, where every global is an inert
:class:`GlobalName` (never imported), a persistent id or an object construction an :class:`Opaque`, and a call
(REDUCE) an :class:`Opaque` record, except ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_tensor`` /
``_rebuild_parameter`` whose ``size`` argument becomes a :class:`TensorStub`, and ``collections.OrderedDict()``
which becomes an empty dict. Any opcode outside the whitelist stops the evaluation. Legacy (pre-zip) pickles and
anything unusual are refused.

Bounded whatever the bytes (limits below, measured in docs/INSPECTION.md "Limits"): the zip's central directory
is sized from its end record before :mod:`zipfile` parses it, the ``data.pkl`` member is sized (and its
compression ratio checked) before it is read, and the walk stops at an opcode, container, memo, nesting, global,
text-opcode or tensor cap. A
limit hit raises :class:`PickleLimitError` naming the file and the limit.

The walk is a dispatch table of small loaders, as in the standard library's pure-Python unpickler: binary arguments
are decoded directly, protocol-0 text ones by :mod:`pickletools`' own readers. Walking with ``pickletools.genops``
measured 4x slower (~210 ms for a real SDXL pickle of 94.6k opcodes here, against ~55 ms).
"""

from __future__ import annotations

import io
import os
import pickletools
import struct
import zipfile
from dataclasses import dataclass, field
from typing import NamedTuple

from . import MAX_TENSORS, CheckpointFileError, CheckpointLimitError, open_regular_file

PICKLE_MEMBER_SUFFIX = "data.pkl"
STATE_DICT_KEYS = ("state_dict", "model", "module")

# Limits. Measured on real checkpoints saved by torch.save as Lightning does ({"state_dict": module.state_dict(),
# ...}, tests/ckpt_factory; printed by benchmarks/fuzz_inspect.py): SD1.5 (1,130 tensors), SD1.5 with EMA (1,818),
# SDXL (2,515); the figures below are SDXL's, the largest. Worst cases within the limits (fuzz campaign,
# docs/INSPECTION.md): ~24 MiB of memory and ~0.3 s CPU.
# data.pkl: 595,766 bytes. 2 MiB = 3.5x.
MAX_PICKLE_BYTES = 2 * 2**20
# 94,588 opcodes, walked in ~55 ms here. 400k = 4.2x: the costliest flood (a new two-letter string per opcode)
# takes ~0.3 s CPU and ~24 MiB; one that creates nothing (NONE) ~0.07 s.
MAX_OPCODES = 400_000
# 12,376 lists, tuples and dicts built. 65,536 = 5.3x. They are what the garbage collector tracks: 400k new lists
# measured 0.6 s in a process holding torch (collections walk them again and again); 65k cost <= ~0.1 s, ~5 MiB.
MAX_CONTAINERS = 65_536
# 24,766 memo puts (one per object the pickler memoized). 131,072 = 5.3x; ~80 bytes per entry: ~10 MiB.
MAX_MEMO = 131_072
# MARK nesting 4 (state dict > tensor call > its arguments > persistent id). 64 = 16x.
MAX_MARK_DEPTH = 64
# 5 GLOBAL opcodes (the pickler memoizes each global once). 256 = 51x; each costs 3 objects and a text read.
MAX_GLOBALS = 256
# Protocol-0 text opcodes (INT/LONG/FLOAT/STRING/UNICODE/GET/PUT/PERSID/GLOBAL, an argument line each): only the
# 5 GLOBALs (torch writes protocol 2). They cost ~2 us each (pickletools' readers), ~10x a binary one: 16,384 cost
# <= ~40 ms. A line is at most 4096 bytes: int("<digits>") stays linear on Pythons without int_max_str_digits.
MAX_TEXT_OPS = 16_384
MAX_TEXT_ARG_BYTES = 4096
# Zip: 2,521 members (data.pkl, one per storage, a few records), as the end record states them. 16,384 = 6.5x.
MAX_ZIP_MEMBERS = 16_384
# zipfile parses the whole central directory whatever the end record says: 160,259 bytes; 1 MiB = 6.5x holds
# at most 22.8k minimal (46-byte) entries, one ZipInfo (~0.5 KB) each: <= ~12 MB.
MAX_ZIP_DIRECTORY_BYTES = 2**20
# torch.save stores members uncompressed (ratio 1); re-zipped, data.pkl deflates 6.5:1. 64 = 9.8x.
MAX_COMPRESSION_RATIO = 64
ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # bzip2/lzma decoders size their memory from the file

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record (APPNOTE 4.3.16)
_EOCD_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # APPNOTE 4.3.15
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # APPNOTE 4.3.14
_ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"
_MAX_ZIP_COMMENT = 0xFFFF
_ZIP64_MARKERS = (0xFFFF, 0xFFFFFFFF)


class PickleListingError(CheckpointFileError):
    """A pickle checkpoint that cannot be listed safely (legacy format, malformed, unsupported opcodes)."""


class PickleLimitError(PickleListingError, CheckpointLimitError):
    """A torch zip checkpoint over one of this module's limits (``limit`` names the constant)."""


@dataclass(frozen=True)
class TensorListing:
    """Tensor names and shapes of a state dict, in file order; nothing else of the file is kept."""

    path: str
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.shapes)

    def shape(self, name: str) -> tuple[int, ...] | None:
        return self.shapes.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.shapes

    def __len__(self) -> int:
        return len(self.shapes)


def list_torch_checkpoint(path: str | os.PathLike) -> TensorListing:
    """TensorListing of a torch zip checkpoint; PickleListingError naming the file for anything else."""
    path = os.fspath(path)
    root = evaluate(read_pickle_member(path), path)
    tensors = {key: value.shape for key, value in state_dict_of(root).items()
               if isinstance(key, str) and isinstance(value, TensorStub)}
    if not tensors:
        raise PickleListingError(path, "no tensors found in the pickle's state dict")
    return TensorListing(path, tensors)


def read_pickle_member(path: str) -> bytes:
    """The bytes of the single ``*/data.pkl`` member of a torch zip checkpoint, every size checked before reading."""
    try:
        with open_regular_file(path) as handle:
            _check_zip_directory(path, handle)
            with zipfile.ZipFile(handle) as archive:
                return _read_member(path, archive)
    except (OSError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as exc:
        if isinstance(exc, PickleListingError):
            raise
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise PickleListingError(path, f"cannot read the zip: {problem}") from exc


def _check_zip_directory(path: str, handle) -> None:
    """Size the central directory from the end record (zip64 aware) before ``zipfile`` reads and parses it."""
    file_size = os.fstat(handle.fileno()).st_size
    tail_size = min(file_size, _EOCD.size + _MAX_ZIP_COMMENT + _ZIP64_LOCATOR.size)
    handle.seek(file_size - tail_size)
    tail = handle.read(tail_size)
    at = tail.rfind(_EOCD_SIGNATURE, 0, max(0, len(tail) - _EOCD.size + len(_EOCD_SIGNATURE)))
    if at < 0:
        raise PickleListingError(path, "legacy (non-zip) torch pickle format")
    _, _, _, _, members, directory_size, directory_offset, _ = _EOCD.unpack_from(tail, at)
    if members in _ZIP64_MARKERS or directory_size in _ZIP64_MARKERS or directory_offset in _ZIP64_MARKERS:
        members, directory_size = _zip64_directory(path, handle, tail, at)
    if members > MAX_ZIP_MEMBERS:
        raise PickleLimitError(path, "MAX_ZIP_MEMBERS", "zip members", members, MAX_ZIP_MEMBERS)
    if directory_size > MAX_ZIP_DIRECTORY_BYTES:
        raise PickleLimitError(path, "MAX_ZIP_DIRECTORY_BYTES", "zip central directory bytes", directory_size,
                               MAX_ZIP_DIRECTORY_BYTES)
    handle.seek(0)


def _zip64_directory(path: str, handle, tail: bytes, eocd_at: int) -> tuple[int, int]:
    locator_at = eocd_at - _ZIP64_LOCATOR.size
    if locator_at < 0 or tail[locator_at:locator_at + 4] != _ZIP64_LOCATOR_SIGNATURE:
        raise PickleListingError(path, "cannot read the zip: zip64 end record locator missing")
    _, _, record_offset, _ = _ZIP64_LOCATOR.unpack_from(tail, locator_at)
    handle.seek(record_offset)
    record = handle.read(_ZIP64_EOCD.size)
    if len(record) != _ZIP64_EOCD.size or not record.startswith(_ZIP64_EOCD_SIGNATURE):
        raise PickleListingError(path, "cannot read the zip: zip64 end record missing")
    fields = _ZIP64_EOCD.unpack(record)
    return fields[7], fields[8]  # total entries, directory size


def _read_member(path: str, archive: zipfile.ZipFile) -> bytes:
    members = [info for info in archive.infolist() if info.filename.endswith(PICKLE_MEMBER_SUFFIX)]
    if len(members) != 1:
        raise PickleListingError(path, f"expected one {PICKLE_MEMBER_SUFFIX} in the zip, found {len(members)}")
    info = members[0]
    if info.file_size > MAX_PICKLE_BYTES:
        raise PickleLimitError(path, "MAX_PICKLE_BYTES", f"{info.filename} bytes", info.file_size, MAX_PICKLE_BYTES)
    if info.compress_type not in ZIP_METHODS:
        raise PickleListingError(path, f"{info.filename}: zip compression method {info.compress_type} not supported")
    ratio = info.file_size / max(info.compress_size, 1)
    if ratio > MAX_COMPRESSION_RATIO:
        raise PickleLimitError(path, "MAX_COMPRESSION_RATIO", f"{info.filename} compression ratio", round(ratio),
                               MAX_COMPRESSION_RATIO)
    with archive.open(info) as member:
        # A sized read inflates at most that much per step; read() without a size inflates each compressed chunk
        # whole, whatever the declared size (a 16 KB deflate bomb declaring 100 bytes took 45 MiB). Past the
        # declared size the CRC check fails.
        return member.read(info.file_size)


def state_dict_of(root: object) -> dict:
    """The tensor mapping: ``root['state_dict']`` (or model/module) when present, else ``root`` itself."""
    if not isinstance(root, dict):
        return {}
    for key in STATE_DICT_KEYS:
        inner = root.get(key)
        if isinstance(inner, dict) and any(isinstance(v, TensorStub) for v in inner.values()):
            return inner
    return root


TENSOR_REBUILDERS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")}
PARAMETER_REBUILDERS = {("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state")}
ORDERED_DICT = ("collections", "OrderedDict")
SIZE_ARG_INDEX = 2  # _rebuild_tensor_v2(storage, storage_offset, size, stride, ...)
MAX_DIM = 2**63 - 1  # torch sizes are int64
# Dict keys the walk keeps: flat hashables only. Hashing a tuple recurses in C without a depth check: a
# pickle-built tuple nested 200k deep used as a key crashes the interpreter (SIGSEGV), 60k deep in a thread with
# a 512 KiB stack (macOS threads; the webui scans in a thread).
KEY_TYPES = (str, int, float, bool, type(None))
_U4, _I4 = struct.Struct("<I").unpack_from, struct.Struct("<i").unpack_from
_F8 = struct.Struct(">d").unpack_from


class GlobalName(NamedTuple):
    module: str
    name: str


class TensorStub(NamedTuple):
    shape: tuple[int, ...]


class Opaque:
    """Stand-in for an object the pickle would construct; hashable by identity, never called."""

    __slots__ = ("what",)

    def __init__(self, what: str):
        self.what = what

    def __repr__(self) -> str:
        return f"Opaque({self.what})"


# Shared stand-ins: a flood of REDUCE / BINPERSID / NEWOBJ then creates no object (measured: 200k new Opaques
# cost 0.3 s of garbage collection in a process holding torch).
_PERSISTENT_ID = Opaque("persistent id")
_NEW_OBJECT = Opaque("object construction")
_CALL = Opaque("call")


def _reduce(func: object, args: object) -> object:
    """The inert result of calling ``func(*args)``: a TensorStub, {} for OrderedDict(), else an Opaque record."""
    if type(func) is not GlobalName:
        return _CALL
    if func in TENSOR_REBUILDERS and type(args) is tuple and len(args) > SIZE_ARG_INDEX:
        size = args[SIZE_ARG_INDEX]
        if type(size) is tuple and all(type(dim) is int and 0 <= dim <= MAX_DIM for dim in size):
            return TensorStub(size)
    elif func in PARAMETER_REBUILDERS and type(args) is tuple and args and type(args[0]) is TensorStub:
        return args[0]
    elif func == ORDERED_DICT:
        return {}
    return _CALL


def _set_items(target: object, items: list) -> None:
    """``target[k] = v`` for the (k, v) pairs of ``items`` = [k0, v0, k1, v1...] when target is a dict."""
    if len(items) % 2:
        raise _Malformed("odd number of dict items")
    if isinstance(target, dict):
        for index in range(0, len(items), 2):
            if isinstance(items[index], KEY_TYPES):
                target[items[index]] = items[index + 1]


class _Malformed(Exception):
    """Internal: the walk met something a pickle cannot contain; turned into PickleListingError with the path."""


class _Stop(Exception):
    """Internal control flow, not an error: STOP ends the walk with its value (no per-opcode "done?" test)."""

    def __init__(self, value: object):
        self.value = value


def evaluate(data: bytes, path: str = "<bytes>") -> object:
    """The inert value a pickle describes (see module docstring).

    PickleListingError (with ``path``) for anything else; PickleLimitError when a cap is hit."""
    try:
        return _Walk(data, path).run()
    except _Malformed as exc:
        raise PickleListingError(path, f"cannot list the pickle safely: {exc}") from None
    except IndexError:
        raise PickleListingError(path, "cannot list the pickle safely: truncated or malformed pickle "
                                       "(read past the end, or popped an empty stack)") from None
    except (KeyError, TypeError, AttributeError, OverflowError, struct.error) as exc:
        raise PickleListingError(path, f"cannot list the pickle safely: malformed pickle "
                                       f"({type(exc).__name__}: {exc})") from None
    except ValueError as exc:  # pickletools' argument readers (bad lines, short data)
        if isinstance(exc, PickleListingError):
            raise
        raise PickleListingError(path, f"cannot list the pickle safely: malformed pickle: {exc}") from None


class _Walk:
    """One evaluation: the stack, the MARK positions, the memo, and one handler per whitelisted opcode.

    Laid out like the standard library's pure-Python ``pickle._Unpickler`` (a dispatch table of small loaders),
    so every opcode costs one table lookup and one call whatever its position: an ``if`` chain measured up to 3x
    slower for its last branches, which an opcode flood would pick."""

    def __init__(self, data: bytes, path: str):
        self.data, self.path, self.pos = data, path, 0
        self.stack: list = []
        self.marks: list[int] = []  # stack lengths at each MARK (as the C unpickler: no list per MARK)
        self.memo: dict = {}
        self.tensors = self.globals = self.text_ops = self.containers = 0
        self.stream: io.BytesIO | None = None

    def run(self) -> object:
        data, dispatch = self.data, _DISPATCH
        try:
            for _ in range(MAX_OPCODES):
                op = data[self.pos]
                self.pos += 1
                dispatch[op](self)
        except _Stop as stop:
            return stop.value
        raise PickleLimitError(self.path, "MAX_OPCODES", "opcodes", f"more than {MAX_OPCODES}", MAX_OPCODES)

    # --- arguments
    def _take(self, size: int) -> bytes:
        start = self.pos
        if start + size > len(self.data):
            raise _Malformed("truncated pickle")
        self.pos = start + size
        return self.data[start:start + size]

    def _text_arg(self, op: str) -> object:
        """The argument of a protocol-0 text opcode, read by pickletools' own reader (the line length-checked)."""
        self.text_ops += 1
        if self.text_ops > MAX_TEXT_OPS:
            raise PickleLimitError(self.path, "MAX_TEXT_OPS", "text opcodes", self.text_ops, MAX_TEXT_OPS)
        stream = self.stream = self.stream or io.BytesIO(self.data)
        stream.seek(self.pos)
        if not stream.readline(MAX_TEXT_ARG_BYTES + 1).endswith(b"\n"):
            raise _Malformed(f"text argument longer than {MAX_TEXT_ARG_BYTES} bytes (or unterminated)")
        stream.seek(self.pos)
        value = pickletools.code2op[op].arg.reader(stream)
        self.pos = stream.tell()
        return value

    def _memo_put(self, index: object) -> None:
        memo = self.memo
        memo[index] = self.stack[-1]
        if len(memo) > MAX_MEMO:
            raise PickleLimitError(self.path, "MAX_MEMO", "memo entries", len(memo), MAX_MEMO)

    def _push_container(self, value: object) -> None:
        self.containers += 1
        if self.containers > MAX_CONTAINERS:
            raise PickleLimitError(self.path, "MAX_CONTAINERS", "lists, tuples and dicts built", self.containers,
                                   MAX_CONTAINERS)
        self.stack.append(value)

    def _pop_mark(self) -> list:
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    # --- opcodes (the standard library's names)
    def load_long_binput(self):
        self._memo_put(_U4(self.data, self.pos)[0])
        self.pos += 4

    def load_binput(self):
        self._memo_put(self.data[self.pos])
        self.pos += 1

    def load_memoize(self):
        self._memo_put(len(self.memo))

    def load_binget(self):
        self.stack.append(self.memo[self.data[self.pos]])
        self.pos += 1

    def load_long_binget(self):
        self.stack.append(self.memo[_U4(self.data, self.pos)[0]])
        self.pos += 4

    def load_binint1(self):
        self.stack.append(self.data[self.pos])
        self.pos += 1

    def load_binint2(self):
        data, pos = self.data, self.pos
        self.stack.append(data[pos] | data[pos + 1] << 8)
        self.pos = pos + 2

    def load_binint(self):
        self.stack.append(_I4(self.data, self.pos)[0])
        self.pos += 4

    def load_long1(self):
        self.stack.append(int.from_bytes(self._take(self._take(1)[0]), "little", signed=True))

    def load_binfloat(self):
        self.stack.append(_F8(self.data, self.pos)[0])
        self.pos += 8

    def _sized(self, length_bytes: int, signed: bool = False) -> bytes:
        """A length-prefixed argument (1, 4 or 8 byte little-endian length)."""
        size = int.from_bytes(self._take(length_bytes), "little", signed=signed)
        if size < 0:
            raise _Malformed("negative length")
        return self._take(size)

    def load_binunicode(self):
        self.stack.append(self._take(_U4(self.data, self.pos)[0] + 4)[4:].decode("utf-8", "surrogatepass"))

    def load_short_binunicode(self):
        data, start = self.data, self.pos + 1
        end = start + data[self.pos]
        if end > len(data):
            raise _Malformed("truncated pickle")
        self.pos = end
        self.stack.append(data[start:end].decode("utf-8", "surrogatepass"))

    def load_binunicode8(self):
        self.stack.append(self._sized(8).decode("utf-8", "surrogatepass"))

    def load_short_binstring(self):  # protocol-1 str: latin-1, as pickletools reads it
        self.stack.append(self._sized(1).decode("latin-1"))

    def load_binstring(self):
        self.stack.append(self._sized(4, signed=True).decode("latin-1"))

    def load_short_binbytes(self):
        data, start = self.data, self.pos + 1
        end = start + data[self.pos]
        if end > len(data):
            raise _Malformed("truncated pickle")
        self.pos = end
        self.stack.append(data[start:end])

    def load_binbytes(self):
        self.stack.append(self._sized(4))

    def load_binbytes8(self):
        self.stack.append(self._sized(8))

    def load_bytearray8(self):
        self.stack.append(bytearray(self._sized(8)))

    def load_long4(self):
        self.stack.append(int.from_bytes(self._sized(4, signed=True), "little", signed=True))

    def load_mark(self):
        marks = self.marks
        marks.append(len(self.stack))
        if len(marks) > MAX_MARK_DEPTH:
            raise PickleLimitError(self.path, "MAX_MARK_DEPTH", "MARK nesting", len(marks), MAX_MARK_DEPTH)

    def load_tuple(self):
        self._push_container(tuple(self._pop_mark()))

    def load_tuple1(self):
        self._push_container((self.stack.pop(),))

    def load_tuple2(self):
        self._tuple_n(2)

    def load_tuple3(self):
        self._tuple_n(3)

    def _tuple_n(self, count: int):
        stack = self.stack
        if len(stack) < count:
            raise _Malformed("tuple of more items than the stack holds")
        items = tuple(stack[-count:])
        del stack[-count:]
        self._push_container(items)

    def load_empty_tuple(self):
        self.stack.append(())

    def load_empty_dict(self):
        self._push_container({})

    def load_empty_list(self):
        self._push_container([])

    def load_none(self):
        self.stack.append(None)

    def load_true(self):
        self.stack.append(True)

    def load_false(self):
        self.stack.append(False)

    def load_list(self):
        self._push_container(self._pop_mark())

    def load_dict(self):
        result: dict = {}
        _set_items(result, self._pop_mark())
        self._push_container(result)

    def load_setitem(self):
        stack = self.stack
        value = stack.pop()
        key = stack.pop()
        target = stack[-1]
        if type(target) is dict and isinstance(key, KEY_TYPES):
            target[key] = value

    def load_setitems(self):
        items = self._pop_mark()
        _set_items(self.stack[-1], items)

    def load_append(self):
        value = self.stack.pop()
        if isinstance(self.stack[-1], list):
            self.stack[-1].append(value)

    def load_appends(self):
        items = self._pop_mark()
        if isinstance(self.stack[-1], list):
            self.stack[-1].extend(items)

    def load_reduce(self):
        stack = self.stack
        args = stack.pop()
        result = stack[-1] = _reduce(stack[-1], args)
        if type(result) is TensorStub:
            self.tensors += 1
            if self.tensors > MAX_TENSORS:
                raise PickleLimitError(self.path, "MAX_TENSORS", "tensors", self.tensors, MAX_TENSORS)

    def load_binpersid(self):
        self.stack[-1] = _PERSISTENT_ID

    def load_newobj(self):
        self._replace_top(2, _NEW_OBJECT)

    def load_newobj_ex(self):
        self._replace_top(3, _NEW_OBJECT)

    def _replace_top(self, count: int, value: object):
        if len(self.stack) < count:
            raise _Malformed("object construction with too few items")
        del self.stack[-count:]
        self.stack.append(value)

    def load_build(self):  # the object's state: never applied
        self.stack.pop()
        if not self.stack:
            raise _Malformed("BUILD without an object")

    def load_global(self):
        module, _, name = self._count_global(self._text_arg("c")).partition(" ")
        self.stack.append(GlobalName(module, name))

    def load_stack_global(self):
        name, module = self.stack.pop(), self.stack.pop()
        if type(module) is not str or type(name) is not str:
            raise _Malformed("STACK_GLOBAL needs two strings")
        self.stack.append(GlobalName(module, self._count_global(name)))

    def _count_global(self, value: str) -> str:
        self.globals += 1
        if self.globals > MAX_GLOBALS:
            raise PickleLimitError(self.path, "MAX_GLOBALS", "globals", self.globals, MAX_GLOBALS)
        return value

    def load_pop(self):
        self.stack.pop()

    def load_pop_mark(self):
        self._pop_mark()

    def load_dup(self):
        self.stack.append(self.stack[-1])

    def load_proto(self):
        self._take(1)

    def load_frame(self):  # an 8-byte length; framing changes nothing for a reader holding all the bytes
        self._take(8)

    def load_stop(self):
        raise _Stop(self.stack.pop())

    def load_unsupported(self):
        info = pickletools.code2op.get(chr(self.data[self.pos - 1]))
        raise _Malformed(f"unsupported opcode {info.name if info else hex(self.data[self.pos - 1])}")

    def load_get(self):
        self.stack.append(self.memo[self._text_arg("g")])

    def load_put(self):
        self._memo_put(self._text_arg("p"))

    def load_persid(self):
        self._text_arg("P")
        self.stack.append(_PERSISTENT_ID)


_TEXT_PUSH_OPS = "ILSVF"  # protocol-0 INT, LONG, STRING, UNICODE, FLOAT: the parsed line is pushed


def _push_text_arg(op: str):
    def load(walk: _Walk):
        walk.stack.append(walk._text_arg(op))
    return load


_DISPATCH = [_Walk.load_unsupported] * 256  # indexed by opcode byte
for _code in _TEXT_PUSH_OPS:
    _DISPATCH[ord(_code)] = _push_text_arg(_code)
for _code, _name in {
    "r": "load_long_binput", "q": "load_binput", "\x94": "load_memoize", "h": "load_binget", "j": "load_long_binget",
    "K": "load_binint1", "M": "load_binint2", "J": "load_binint", "\x8a": "load_long1", "G": "load_binfloat",
    "X": "load_binunicode", "\x8c": "load_short_binunicode", "(": "load_mark", "t": "load_tuple",
    "\x85": "load_tuple1", "\x86": "load_tuple2", "\x87": "load_tuple3", ")": "load_empty_tuple",
    "}": "load_empty_dict", "]": "load_empty_list", "N": "load_none", "\x88": "load_true", "\x89": "load_false",
    "l": "load_list", "d": "load_dict", "s": "load_setitem", "u": "load_setitems", "a": "load_append",
    "e": "load_appends", "R": "load_reduce", "Q": "load_binpersid", "\x81": "load_newobj", "\x92": "load_newobj_ex",
    "b": "load_build", "c": "load_global", "\x93": "load_stack_global", "0": "load_pop", "1": "load_pop_mark",
    "2": "load_dup", "\x80": "load_proto", "\x95": "load_frame", ".": "load_stop", "g": "load_get", "p": "load_put",
    "P": "load_persid", "\x8d": "load_binunicode8", "U": "load_short_binstring", "T": "load_binstring",
    "C": "load_short_binbytes", "B": "load_binbytes", "\x8e": "load_binbytes8", "\x96": "load_bytearray8",
    "\x8b": "load_long4",
}.items():
    _DISPATCH[ord(_code)] = getattr(_Walk, _name)
