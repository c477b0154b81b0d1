"""List the tensor names and shapes of a PyTorch zip checkpoint (``.ckpt``/``.pt``) WITHOUT unpickling it.

``torch.save`` writes a zip whose ``<archive>/data.pkl`` pickle describes the state dict: each tensor is a call
of ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``. Unpickling would import and call
whatever globals the file names (arbitrary code execution), so this module never does: it walks the opcodes with
the standard library's ``pickletools.genops`` (a pure parser) and evaluates only a whitelist of data-building
opcodes, where every global is an inert :class:`GlobalName` (never imported), a persistent id or an object
construction an :class:`Opaque`, and a call (REDUCE) an :class:`Opaque` record, except
``torch._utils._rebuild_tensor_v2`` / ``_rebuild_tensor`` / ``_rebuild_parameter`` whose ``size`` argument becomes a
:class:`TensorStub`, and ``collections.OrderedDict()`` which becomes an empty dict. Any opcode outside the whitelist
stops the evaluation. Legacy (pre-zip) pickles and anything unusual are refused.
"""

from __future__ import annotations

import os
import pickletools
import struct
import zipfile
from dataclasses import dataclass, field
from typing import NamedTuple

from . import CheckpointFileError

MAX_PICKLE_BYTES = 64 * 2**20  # an SDXL state-dict pickle is ~0.5 MB; refuse anything absurd before reading it
PICKLE_MEMBER_SUFFIX = "data.pkl"
STATE_DICT_KEYS = ("state_dict", "model", "module")


class PickleListingError(CheckpointFileError):
    """A pickle checkpoint that cannot be listed safely (legacy format, malformed, unsupported opcodes)."""


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


def read_pickle_member(path: str) -> bytes:
    """The bytes of the single ``*/data.pkl`` member of a torch zip checkpoint (size-checked before reading)."""
    if not zipfile.is_zipfile(path):
        raise PickleListingError(path, "legacy (non-zip) torch pickle format")
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if info.filename.endswith(PICKLE_MEMBER_SUFFIX)]
            if len(members) != 1:
                raise PickleListingError(path, f"expected one {PICKLE_MEMBER_SUFFIX} in the zip, found {len(members)}")
            if members[0].file_size > MAX_PICKLE_BYTES:
                raise PickleListingError(path, f"{members[0].filename} is {members[0].file_size} bytes, over the "
                                               f"{MAX_PICKLE_BYTES} byte limit")
            return archive.read(members[0])
    except (OSError, zipfile.BadZipFile, RuntimeError) as exc:
        raise PickleListingError(path, f"cannot read the zip: {exc}") from exc


def state_dict_of(root: object) -> dict:
    """The tensor mapping: ``root['state_dict']`` (or model/module) when present, else ``root`` itself."""
    if not isinstance(root, dict):
        return {}
    for key in STATE_DICT_KEYS:
        inner = root.get(key)
        if isinstance(inner, dict) and any(isinstance(v, TensorStub) for v in inner.values()):
            return inner
    return root


def list_torch_checkpoint(path: str | os.PathLike) -> TensorListing:
    """TensorListing of a torch zip checkpoint; PickleListingError naming the file for anything else."""
    path = os.fspath(path)
    data = read_pickle_member(path)
    try:
        root = evaluate(data)
    except PickleStackError as exc:
        raise PickleListingError(path, f"cannot list the pickle safely: {exc}") from None
    tensors = {key: value.shape for key, value in state_dict_of(root).items()
               if isinstance(key, str) and isinstance(value, TensorStub)}
    if not tensors:
        raise PickleListingError(path, "no tensors found in the pickle's state dict")
    return TensorListing(path, tensors)


MAX_OPCODES = 20_000_000  # far above any state dict (an SDXL pickle has ~150k opcodes)
TENSOR_REBUILDERS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")}
PARAMETER_REBUILDERS = {("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state")}
ORDERED_DICT = ("collections", "OrderedDict")
SIZE_ARG_INDEX = 2  # _rebuild_tensor_v2(storage, storage_offset, size, stride, ...)
PUSH_ARG_OPS = frozenset({
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT", "STRING", "BINSTRING",
    "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES",
    "BINBYTES8", "BYTEARRAY8",
})
CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
IGNORED_OPS = frozenset({"PROTO", "FRAME"})


class PickleStackError(ValueError):
    """The pickle uses something this evaluator does not (and will not) do."""


class GlobalName(NamedTuple):
    module: str
    name: str


class TensorStub(NamedTuple):
    shape: tuple[int, ...]


class Opaque:
    """Stand-in for an object the pickle would construct; hashable by identity, never called."""

    def __init__(self, what: str):
        self.what = what

    def __repr__(self) -> str:
        return f"Opaque({self.what})"


class _Machine:
    def __init__(self):
        self.stack: list = []
        self.marks: list[list] = []
        self.memo: dict = {}

    def pop_mark(self) -> list:
        items, self.stack = self.stack, self.marks.pop()
        return items

    def reduce(self, func, args):
        key = (func.module, func.name) if isinstance(func, GlobalName) else None
        if key in TENSOR_REBUILDERS and isinstance(args, tuple) and len(args) > SIZE_ARG_INDEX:
            size = args[SIZE_ARG_INDEX]
            if isinstance(size, tuple) and all(isinstance(d, int) for d in size):
                return TensorStub(size)
        if key in PARAMETER_REBUILDERS and isinstance(args, tuple) and args and isinstance(args[0], TensorStub):
            return args[0]
        if key == ORDERED_DICT:
            return {}
        return Opaque(f"call of {key}")


def _set_items(target, pairs) -> None:
    if isinstance(target, dict):
        for key, value in pairs:
            if isinstance(key, (str, int, float, bool, tuple, type(None), GlobalName, Opaque)):
                target[key] = value


def _step(m: _Machine, name: str, arg) -> bool:
    """Execute one opcode on the machine; True when it was handled."""
    if name in PUSH_ARG_OPS:
        m.stack.append(arg)
    elif name in CONSTANTS:
        m.stack.append(CONSTANTS[name])
    elif name == "MARK":
        m.marks.append(m.stack)
        m.stack = []
    elif name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE"):
        m.stack.append({"EMPTY_DICT": {}, "EMPTY_LIST": [], "EMPTY_TUPLE": ()}[name])
    elif name in ("TUPLE", "LIST"):
        items = m.pop_mark()
        m.stack.append(tuple(items) if name == "TUPLE" else list(items))
    elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
        count = int(name[-1])
        items = tuple(m.stack[-count:])
        del m.stack[-count:]
        m.stack.append(items)
    elif name == "DICT":
        items = m.pop_mark()
        result: dict = {}
        _set_items(result, zip(items[::2], items[1::2], strict=False))
        m.stack.append(result)
    else:
        return _step_objects(m, name, arg)
    return True


def _step_objects(m: _Machine, name: str, arg) -> bool:
    if name == "GLOBAL":
        module, _, attr = str(arg).partition(" ")
        m.stack.append(GlobalName(module, attr))
    elif name == "STACK_GLOBAL":
        attr, module = m.stack.pop(), m.stack.pop()
        m.stack.append(GlobalName(str(module), str(attr)))
    elif name in ("BINPERSID", "PERSID"):
        if name == "BINPERSID":
            m.stack.pop()
        m.stack.append(Opaque("persistent id"))
    elif name == "REDUCE":
        args, func = m.stack.pop(), m.stack.pop()
        m.stack.append(m.reduce(func, args))
    elif name in ("NEWOBJ", "NEWOBJ_EX"):
        del m.stack[-(2 if name == "NEWOBJ" else 3):]
        m.stack.append(Opaque(name))
    elif name == "BUILD":
        m.stack.pop()  # object state: never applied
    else:
        return _step_containers(m, name, arg)
    return True


def _step_containers(m: _Machine, name: str, arg) -> bool:
    if name == "SETITEM":
        value, key = m.stack.pop(), m.stack.pop()
        _set_items(m.stack[-1], [(key, value)])
    elif name == "SETITEMS":
        items = m.pop_mark()
        _set_items(m.stack[-1], zip(items[::2], items[1::2], strict=False))
    elif name in ("APPEND", "APPENDS"):
        items = [m.stack.pop()] if name == "APPEND" else m.pop_mark()
        if isinstance(m.stack[-1], list):
            m.stack[-1].extend(items)
    elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
        m.memo[arg] = m.stack[-1]
    elif name == "MEMOIZE":
        m.memo[len(m.memo)] = m.stack[-1]
    elif name in ("BINGET", "LONG_BINGET", "GET"):
        m.stack.append(m.memo[arg])
    elif name == "POP":
        m.stack.pop()
    elif name == "POP_MARK":
        m.pop_mark()
    elif name == "DUP":
        m.stack.append(m.stack[-1])
    else:
        return name in IGNORED_OPS
    return True


def evaluate(data: bytes) -> object:
    """The inert value a pickle describes (see module docstring); PickleStackError for anything else."""
    machine = _Machine()
    try:
        for count, (opcode, arg, _) in enumerate(pickletools.genops(data)):
            if count > MAX_OPCODES:
                raise PickleStackError(f"more than {MAX_OPCODES} opcodes")
            if opcode.name == "STOP":
                return machine.stack.pop()
            if not _step(machine, opcode.name, arg):
                raise PickleStackError(f"unsupported opcode {opcode.name}")
    except (IndexError, KeyError, TypeError, AttributeError, OverflowError, struct.error) as exc:
        raise PickleStackError(f"malformed pickle ({type(exc).__name__}: {exc})") from None
    except ValueError as exc:  # pickletools' own parse errors (truncated data, bad opcode bytes)
        if isinstance(exc, PickleStackError):
            raise
        raise PickleStackError(f"malformed pickle: {exc}") from None
    raise PickleStackError("no STOP opcode (truncated pickle)")
