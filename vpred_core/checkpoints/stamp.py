"""Stamp a ``.safetensors`` checkpoint with its prediction type and ZTSNR so that every host detects it, without
loading, decoding or altering a tensor.

What is written (:class:`StampRequest`, vocabulary in :mod:`.host_keys`): the zero-size marker tensors ``v_pred``
/ ``ztsnr`` exactly as ComfyUI's CheckpointSave writes them (F32, shape [0], no data bytes), and the metadata
``modelspec.predict_key`` (ComfyUI), ``modelspec.prediction_type`` (SwarmUI), ``ss_v_parameterization`` /
``ss_zero_terminal_snr`` (kohya) and, with ``linear_end``, ``vpred_toolkit.linear_end``. A marker the request
contradicts is removed; every difference is a :class:`HeaderChange`.

How it is written (:func:`stamp_file`), one of three modes:

- ``in place``: the new header fits in the old header's length (safetensors pads it with spaces; stamping a file
  this module rewrote keeps :data:`HEADER_ROOM_BYTES` of room). Only the header bytes are rewritten, padded with
  spaces to the old length; the data region is never written. Crash safety: an undo record (the old header, and a
  hash of the new one) is written and fsynced beside the file first, the header is rewritten and fsynced, then the
  record is removed. A stamp interrupted in between is finished or rolled back by the next stamp of that file
  (:func:`recover_interrupted_stamp`).
- ``rewrite``: a new file in the same folder (Linux: ``O_TMPFILE``, unnamed, so a killed process leaves nothing;
  elsewhere a named temporary removed on failure), the new header then the data region streamed through a
  bounded ring of buffers (holes of sparse files stay holes), fsynced, then ``os.replace`` over the original.
  ``backup`` (which always rewrites) keeps the original as ``<file>.bak`` (a hard link where possible).
- ``new file`` (``out``): the same copy, linked to ``out`` exclusively: an existing file is never overwritten.

Hashes: the sha256 of the data region (everything after the header: A1111's ``addnet_hash_safetensors``) is
computed from the source while it is copied, in one thread, while another reads every written chunk back and compares
it byte for byte with the source chunk, so the copy's data hash is the same, proven by the comparison (a difference
aborts before anything is replaced). In place the data region is not written and is hashed once. The whole-file
sha256 (Civitai AutoV2, the webui's model hash) changes. Pickle checkpoints are refused (never unpickled).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import secrets
import struct
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from . import CheckpointFileError
from .architecture import detect_architecture
from .file_writes import BACKUP_SUFFIX, MAX_BACKUPS
from .host_keys import (
    KOHYA_FALSE,
    KOHYA_TRUE,
    KOHYA_V_PARAM,
    KOHYA_ZTSNR,
    MARKER_DTYPE,
    MARKER_SHAPE,
    MARKER_V_PRED,
    MARKER_ZTSNR,
    MODEL_TYPE_OVERRIDING_TENSORS,
    MODELSPEC_PREDICT_KEY,
    MODELSPEC_PREDICTION_TYPE,
    PREDICT_KEY_EPS,
    PREDICT_KEY_V,
    PREDICTION_TYPE_EPS,
    PREDICTION_TYPE_V,
    PREDICTION_TYPE_V_ZSNR,
    TOOLKIT_LINEAR_END,
)
from .safetensors_header import (
    LENGTH_PREFIX_BYTES,
    LENGTH_PREFIX_FORMAT,
    METADATA_KEY,
    HeaderError,
    SafetensorsHeader,
    read_header,
)

logger = logging.getLogger(__name__)

PREDICTIONS = ("v", "eps")
SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CONVERT_HINT = (
    "pickle checkpoints are never stamped (that would mean unpickling them); convert it to .safetensors first "
    "(ComfyUI: CheckpointLoaderSimple -> CheckpointSave; A1111/Forge: Checkpoint Merger with 'No interpolation' "
    "and format safetensors), then stamp the .safetensors file"
)
MODE_IN_PLACE, MODE_REWRITE, MODE_NEW_FILE = "in place", "rewrite", "new file"
HEADER_ALIGN = 8
# Spaces kept after the JSON when a file is rewritten: the next stamp (eps <-> v adds or removes two ~60-byte
# marker entries and changes a few metadata values) then fits in place.
HEADER_ROOM_BYTES = 256
HEADER_PAD = b" "
CHUNK_BYTES = 1 << 20  # measured fastest here (1-2 MiB: a chunk stays in L2 while it is hashed, written, compared)
RING_BUFFERS = 4
NEW_FILE_MODE = 0o644
PERMISSION_BITS = 0o7777
UNDO_MAGIC = b"vpred-stamp-undo 1\n"
UNDO_SUFFIX = ".stamp-undo"
ROLLED_BACK = "rolled back an interrupted stamp (old header restored)"
COMPLETED = "an interrupted stamp had completed (undo record removed)"
NOT_STARTED = "an interrupted stamp had not written the header yet (undo record removed)"
TEMP_SUFFIX = ".stamp.tmp"
PROC_FD = "/proc/self/fd"
# What safetensors itself checks (safetensors/src/tensor.rs, Dtype::bitsize): bits per element.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
    "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
BITS_PER_BYTE = 8
TENSOR, METADATA = "tensor", METADATA_KEY
ADDED, REMOVED, CHANGED = "+", "-", "~"
# Families whose v_pred marker no host reads (ComfyUI, A1111 dev, reForge, Forge check it for SDXL base only).
V_PRED_READ_FAMILIES = frozenset({"sdxl"})


class StampError(CheckpointFileError):
    """A checkpoint that cannot be stamped as asked; ``str()`` is "<path>: <problem>"."""


@dataclass(frozen=True)
class StampRequest:
    """What the file should state: prediction ``"v"`` / ``"eps"``, ZTSNR, and optionally beta_end (linear_end)."""

    prediction: str
    ztsnr: bool
    linear_end: float | None = None

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.ztsnr and self.prediction != "v":
            raise ValueError("ZTSNR needs v-prediction: an eps model cannot be sampled at zero terminal SNR")
        if self.linear_end is not None and not 0.0 < self.linear_end < 1.0:
            raise ValueError(f"beta_end must be in (0, 1), got {self.linear_end!r}")

    def markers(self) -> dict[str, bool]:
        """{marker tensor: wanted}."""
        return {MARKER_V_PRED: self.prediction == "v", MARKER_ZTSNR: self.ztsnr}

    def metadata(self) -> dict[str, str]:
        """The ``__metadata__`` values every reader expects for this request."""
        is_v = self.prediction == "v"
        values = {
            MODELSPEC_PREDICT_KEY: PREDICT_KEY_V if is_v else PREDICT_KEY_EPS,
            MODELSPEC_PREDICTION_TYPE: prediction_type_value(is_v, self.ztsnr),
            KOHYA_V_PARAM: KOHYA_TRUE if is_v else KOHYA_FALSE,
            KOHYA_ZTSNR: KOHYA_TRUE if self.ztsnr else KOHYA_FALSE,
        }
        if self.linear_end is not None:
            values[TOOLKIT_LINEAR_END] = repr(float(self.linear_end))
        return values


def prediction_type_value(is_v: bool, ztsnr: bool) -> str:
    """SwarmUI's ``modelspec.prediction_type``: ``v-zsnr``, ``v`` or ``epsilon``."""
    if not is_v:
        return PREDICTION_TYPE_EPS
    return PREDICTION_TYPE_V_ZSNR if ztsnr else PREDICTION_TYPE_V


@dataclass(frozen=True)
class HeaderChange:
    """One difference between the old and the new header (``old`` / ``new`` are None when absent)."""

    section: str
    key: str
    old: str | None
    new: str | None

    @property
    def op(self) -> str:
        return ADDED if self.old is None else REMOVED if self.new is None else CHANGED

    def __str__(self) -> str:
        if self.op == CHANGED:
            return f"{CHANGED} {self.section} {self.key}: {self.old} -> {self.new}"
        return f"{self.op} {self.section} {self.key}: {self.new if self.old is None else self.old}"


@dataclass
class StampPlan:
    """The new header of one file and how it will be written."""

    path: str
    header: SafetensorsHeader
    source_stat: os.stat_result  # taken before the header was read: a later change aborts the write
    new_header: bytes  # the JSON, unpadded
    changes: list[HeaderChange]
    mode: str
    out: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def data_start(self) -> int:
        return LENGTH_PREFIX_BYTES + self.header.header_size

    @property
    def data_length(self) -> int:
        return self.header.file_size - self.data_start

    def new_header_size(self) -> int:
        """The header length field of the written file."""
        if self.mode == MODE_IN_PLACE:
            return self.header.header_size
        return aligned(len(self.new_header) + HEADER_ROOM_BYTES)

    def new_prefix(self) -> bytes:
        """Length field + JSON + space padding: every byte before the data region of the written file."""
        size = self.new_header_size()
        return struct.pack(LENGTH_PREFIX_FORMAT, size) + self.new_header.ljust(size, HEADER_PAD)


@dataclass
class StampResult:
    """What :func:`stamp_file` did (or, with ``dry_run``, would do)."""

    path: str
    written_path: str | None
    mode: str
    changes: list[HeaderChange]
    dry_run: bool = False
    old_data_sha256: str | None = None
    new_data_sha256: str | None = None
    backup_path: str | None = None
    recovered: str | None = None
    old_header_size: int = 0
    new_header_size: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def aligned(size: int) -> int:
    """``size`` rounded up to the safetensors header alignment (8 bytes)."""
    return -(-size // HEADER_ALIGN) * HEADER_ALIGN


def stamp_file(
    path: str | os.PathLike,
    request: StampRequest,
    *,
    out: str | os.PathLike | None = None,
    backup: bool = False,
    dry_run: bool = False,
    hash_data: bool = True,
    chunk_bytes: int = CHUNK_BYTES,
) -> StampResult:
    """Stamp ``path`` as ``request`` says; StampError names the file and the problem (the original is then intact).

    ``out`` writes a new file instead (never overwriting one); ``backup`` keeps the original as ``<file>.bak``;
    ``dry_run`` only plans. ``hash_data=False`` skips the sha256 of the data region (benchmarks; a copy is still
    read back and compared)."""
    path = os.fspath(path)
    recovered = None if dry_run else recover_interrupted_stamp(path)
    plan = plan_stamp(path, request, out=out, backup=backup)
    result = StampResult(path, None, plan.mode, plan.changes, dry_run=dry_run, recovered=recovered,
                         old_header_size=plan.header.header_size, new_header_size=plan.new_header_size(),
                         warnings=plan.warnings)
    if dry_run or not plan.changes:
        return result
    try:
        if plan.mode == MODE_IN_PLACE:
            write_in_place(plan, result, hash_data)
        else:
            write_copy(plan, result, hash_data, chunk_bytes, backup)
    except OSError as exc:
        raise StampError(path, f"cannot write: {exc.strerror or exc}") from exc
    return result


def plan_stamp(path: str, request: StampRequest, out: str | os.PathLike | None = None,
               backup: bool = False) -> StampPlan:
    """Read and check the header of ``path``, build the new one and choose the write mode."""
    check_suffix(path)
    real = os.path.realpath(path)
    try:
        source_stat = os.stat(real)
        header = read_header(real)
    except HeaderError as exc:
        raise StampError(path, exc.problem) from exc
    except OSError as exc:
        raise StampError(path, f"cannot read file: {exc.strerror or exc}") from exc
    check_loadable(path, header)
    doc, changes = stamped_header(path, header, request)
    new_header = serialize_header(path, doc)
    out = None if out is None else os.fspath(out)
    if out is not None and os.path.lexists(out):
        raise StampError(out, "already exists; --out never overwrites a file")
    mode = choose_mode(header, new_header, out, backup)
    plan = StampPlan(real, header, source_stat, new_header, changes, mode, out)
    plan.warnings.extend(host_coverage_warnings(header, request))
    if os.path.exists(undo_record_path(real)):
        plan.warnings.append(f"an interrupted stamp left {undo_record_path(real)}; the next stamp finishes or rolls "
                             f"it back")
    return plan


def check_suffix(path: str) -> None:
    """Only ``.safetensors`` files are stamped; pickles get the conversion hint."""
    lowered = path.lower()
    if lowered.endswith(PICKLE_SUFFIXES):
        raise StampError(path, CONVERT_HINT)
    if not lowered.endswith(SAFETENSORS_SUFFIX):
        raise StampError(path, f"not a {SAFETENSORS_SUFFIX} file")


def choose_mode(header: SafetensorsHeader, new_header: bytes, out: str | None, backup: bool) -> str:
    """In place when the new JSON fits in the old header length and the original inode may be modified."""
    if out is not None:
        return MODE_NEW_FILE
    if not backup and len(new_header) <= header.header_size:
        return MODE_IN_PLACE
    return MODE_REWRITE


def check_loadable(path: str, header: SafetensorsHeader) -> None:
    """What ``safetensors`` checks before loading: data offsets contiguous from 0, each span the size its dtype and
    shape give, the last one ending at the end of the file. A file it refuses is not stamped."""
    start = 0
    for name, entry in sorted(header.entries.items(), key=lambda item: item[1]["data_offsets"]):
        begin, end = entry["data_offsets"]
        if begin != start:
            raise StampError(path, f"not loadable by safetensors: tensor {name!r} starts at {begin}, expected {start}")
        if end - begin != tensor_nbytes(path, name, entry):
            raise StampError(path, f"not loadable by safetensors: tensor {name!r} spans {end - begin} bytes, its "
                                   f"dtype and shape need {tensor_nbytes(path, name, entry)}")
        start = end
    data_length = header.file_size - LENGTH_PREFIX_BYTES - header.header_size
    if start != data_length:
        raise StampError(path, f"not loadable by safetensors: tensors cover {start} bytes of a {data_length}-byte "
                               f"data region")


def tensor_nbytes(path: str, name: str, entry: dict) -> int:
    """Bytes of one tensor from its dtype and shape."""
    bits = DTYPE_BITS.get(entry["dtype"])
    if bits is None:
        raise StampError(path, f"tensor {name!r}: dtype {entry['dtype']} unknown to the stamper")
    return math.prod(entry["shape"]) * bits // BITS_PER_BYTE


def stamped_header(path: str, header: SafetensorsHeader, request: StampRequest) -> tuple[dict, list[HeaderChange]]:
    """The new header document (``__metadata__`` first, tensors in their order) and the changes made."""
    data_length = header.file_size - LENGTH_PREFIX_BYTES - header.header_size
    entries, changes = marker_changes(path, header.entries, request, data_length)
    metadata, metadata_diff = metadata_changes(header.metadata, request)
    return {METADATA_KEY: metadata, **entries}, changes + metadata_diff


def marker_changes(path: str, entries: dict[str, dict], request: StampRequest,
                   data_length: int) -> tuple[dict[str, dict], list[HeaderChange]]:
    """Add the wanted zero-size markers (at the end of the data region), drop the contradicted ones."""
    entries = dict(entries)
    changes = []
    for name, wanted in request.markers().items():
        if wanted and name not in entries:
            entries[name] = marker_entry(data_length)
            changes.append(HeaderChange(TENSOR, name, None, describe_tensor(entries[name])))
        elif not wanted and name in entries:
            removed = entries.pop(name)
            begin, end = removed["data_offsets"]
            if end != begin:
                raise StampError(path, f"tensor {name!r} holds {end - begin} bytes of data; only empty marker "
                                       f"tensors are removed (the data region is never rewritten)")
            changes.append(HeaderChange(TENSOR, name, describe_tensor(removed), None))
    return entries, changes


def marker_entry(offset: int) -> dict:
    """A marker as ``torch.tensor([])`` is saved: F32, shape [0], an empty span (here at ``offset``)."""
    return {"dtype": MARKER_DTYPE, "shape": list(MARKER_SHAPE), "data_offsets": [offset, offset]}


def describe_tensor(entry: dict) -> str:
    return f"{entry['dtype']} {list(entry['shape'])}"


def metadata_changes(metadata: dict[str, str], request: StampRequest) -> tuple[dict[str, str], list[HeaderChange]]:
    """Set every key of the request's metadata; other keys are kept as they are, in their order."""
    metadata = dict(metadata)
    changes = []
    for key, value in request.metadata().items():
        old = metadata.get(key)
        if old != value:
            changes.append(HeaderChange(METADATA, key, None if old is None else repr(old), repr(value)))
            metadata[key] = value
    return metadata, changes


def serialize_header(path: str, doc: dict) -> bytes:
    """Compact UTF-8 JSON, as safetensors writes it (padding is added by :meth:`StampPlan.new_prefix`)."""
    try:
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise StampError(path, "the header holds a lone UTF-16 surrogate escape, which safetensors rejects") from exc


def host_coverage_warnings(header: SafetensorsHeader, request: StampRequest) -> list[str]:
    """Where the hosts will not act on what is written (architecture, model-type tensors)."""
    warnings = [f"tensor {name!r} makes ComfyUI and Forge load an EDM model; they ignore v_pred"
                for name in MODEL_TYPE_OVERRIDING_TENSORS if name in header.entries]
    family = detect_architecture(header.shape, header.names).family
    if request.prediction == "v" and family not in V_PRED_READ_FAMILIES:
        warnings.append(f"{family} checkpoint: the hosts read v_pred for SDXL base only; for the webuis also run "
                        f"'python -m vpred_core write-yaml' (a <checkpoint>.yaml), in ComfyUI use the pack's loader")
    return warnings


# ---------------------------------------------------------------------------------------------- in place


def write_in_place(plan: StampPlan, result: StampResult, hash_data: bool) -> None:
    """Rewrite only the header bytes, guarded by an undo record; the data region is not written."""
    prefix = plan.new_prefix()
    check_unchanged(plan.path, plan.source_stat)
    with open(plan.path, "r+b", buffering=0) as handle:
        old_prefix = read_prefix(plan.path, handle, len(prefix))
        record = undo_record_path(plan.path)
        write_undo_record(record, old_prefix, prefix, plan.header.file_size)
        try:
            write_exactly(handle, 0, memoryview(prefix))
            os.fsync(handle.fileno())
        except BaseException:
            write_exactly(handle, 0, memoryview(old_prefix))  # if this fails too, the record stays for the next run
            os.fsync(handle.fileno())
            raise
        finally:
            os.unlink(record)
            fsync_folder(os.path.dirname(record))
        if hash_data:
            advise_sequential(handle.fileno())
            digest = hash_region(handle, plan.data_start, plan.data_length, bytearray(CHUNK_BYTES))
            result.old_data_sha256 = result.new_data_sha256 = digest
    result.written_path = plan.path


def read_prefix(path: str, handle, size: int) -> bytes:
    """The current length field + header (what the undo record keeps)."""
    raw = bytearray(size)
    read_exactly(handle, 0, memoryview(raw), path)
    return bytes(raw)


def undo_record_path(path: str) -> str:
    folder, name = os.path.split(os.path.realpath(path))
    return os.path.join(folder, f".{name}{UNDO_SUFFIX}")


def write_undo_record(record: str, old_prefix: bytes, new_prefix: bytes, file_size: int) -> None:
    """Magic line, JSON line (sizes, sha256 of the new prefix), then the old prefix bytes; fsynced, exclusive."""
    meta = {"file_size": file_size, "prefix_bytes": len(old_prefix),
            "new_prefix_sha256": hashlib.sha256(new_prefix).hexdigest()}
    with open(record, "xb") as handle:
        handle.write(UNDO_MAGIC + json.dumps(meta).encode("ascii") + b"\n" + old_prefix)
        handle.flush()
        os.fsync(handle.fileno())
    fsync_folder(os.path.dirname(record))


def recover_interrupted_stamp(path: str | os.PathLike) -> str | None:
    """Finish or roll back an in-place stamp that was interrupted; returns what was done (None: nothing to do)."""
    path = os.fspath(path)
    record = undo_record_path(path)
    if not os.path.exists(record):
        return None
    meta, old_prefix = read_undo_record(path, record)
    with open(os.path.realpath(path), "r+b", buffering=0) as handle:
        if os.fstat(handle.fileno()).st_size != meta["file_size"]:
            raise StampError(path, f"an interrupted stamp left {record}, but the file size changed since; "
                                   f"restore the file from a copy and remove that record")
        current = bytearray(len(old_prefix))
        read_exactly(handle, 0, memoryview(current), path)
        done = interrupted_outcome(bytes(current), old_prefix, meta["new_prefix_sha256"])
        if done == ROLLED_BACK:
            write_exactly(handle, 0, memoryview(old_prefix))
            os.fsync(handle.fileno())
    os.unlink(record)
    fsync_folder(os.path.dirname(record))
    logger.info("%s: %s", path, done)
    return done


def interrupted_outcome(current: bytes, old_prefix: bytes, new_prefix_sha256: str) -> str:
    """What an interrupted in-place stamp left: the new header whole, the old one untouched, or a torn mix."""
    if hashlib.sha256(current).hexdigest() == new_prefix_sha256:
        return COMPLETED
    return NOT_STARTED if current == old_prefix else ROLLED_BACK


def read_undo_record(path: str, record: str) -> tuple[dict, bytes]:
    with open(record, "rb") as handle:
        data = handle.read()
    magic_end = len(UNDO_MAGIC)
    meta_end = data.find(b"\n", magic_end)
    try:
        meta = json.loads(data[magic_end:meta_end]) if data.startswith(UNDO_MAGIC) and meta_end > 0 else None
    except ValueError:
        meta = None
    old_prefix = data[meta_end + 1:]
    if not isinstance(meta, dict) or meta.get("prefix_bytes") != len(old_prefix):
        raise StampError(path, f"{record} is not a complete undo record; check the file and remove it")
    return meta, old_prefix


# ---------------------------------------------------------------------------------------------- copy


def write_copy(plan: StampPlan, result: StampResult, hash_data: bool, chunk_bytes: int, backup: bool) -> None:
    """New header + streamed data region into an unnamed file, verified, then published (replace or --out)."""
    target = plan.out if plan.mode == MODE_NEW_FILE else plan.path
    source_stat = plan.source_stat
    prefix = plan.new_prefix()
    with OutputFile(os.path.dirname(os.path.abspath(target)), target) as output:
        copy_permissions(output.fd, source_stat)
        with open(plan.path, "rb", buffering=0) as source, output.writer() as dest, output.reader() as readback:
            advise_sequential(source.fileno())
            dest.truncate(len(prefix) + plan.data_length)
            write_exactly(dest, 0, memoryview(prefix))
            digest = copy_verified(plan, source, dest, readback, len(prefix), chunk_bytes, hash_data)
        check_unchanged(plan.path, source_stat)
        os.fsync(output.fd)
        if backup:
            result.backup_path = keep_backup(plan.path)
        output.publish(replace=plan.mode == MODE_REWRITE)
    result.old_data_sha256 = result.new_data_sha256 = digest
    result.written_path = target
    if plan.mode == MODE_REWRITE and source_stat.st_nlink > 1:
        result.warnings.append(f"the file had {source_stat.st_nlink} hard links; the other names keep the old file")


def advise_sequential(fd: int) -> None:
    """Ask for aggressive read-ahead (a cold page cache is the common case for a multi-GB checkpoint)."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)


def copy_permissions(fd: int, source_stat: os.stat_result) -> None:
    """The original's permission bits on the new file (where the platform has ``fchmod``)."""
    if hasattr(os, "fchmod"):
        os.fchmod(fd, source_stat.st_mode & PERMISSION_BITS)


def copy_verified(plan: StampPlan, source, dest, readback, dst_start: int, chunk_bytes: int,
                  hash_data: bool) -> str | None:
    """The data region copied and checked (see :func:`copy_region`); a mismatch is a StampError."""
    try:
        return copy_region(source, dest, readback, plan.data_start, dst_start, plan.data_length, chunk_bytes,
                           hash_data)
    except CopyMismatch as exc:
        raise StampError(plan.path, f"the copy read back differs from the original near byte {exc.args[0]} of the "
                                    f"new file; nothing was replaced") from exc


def check_unchanged(path: str, before: os.stat_result) -> None:
    after = os.stat(path)
    if (after.st_size, after.st_mtime_ns, after.st_ino) != (before.st_size, before.st_mtime_ns, before.st_ino):
        raise StampError(path, "the file changed while it was being stamped; nothing was replaced")


def copy_region(source, dest, readback, src_start: int, dst_start: int, length: int, chunk_bytes: int,
                hash_data: bool) -> str | None:
    """Copy ``length`` bytes from ``src_start`` to ``dst_start`` through a ring of buffers; holes stay holes.

    While this thread reads and writes, one thread reads every written chunk back and compares it byte for byte with
    the source chunk (:class:`CopyMismatch` on a difference) and, with ``hash_data``, another hashes the source
    chunks: the sha256 returned, that of the source data, is then also that of the copy (None without it)."""
    ring = [bytearray(chunk_bytes) for _ in range(RING_BUFFERS)]
    zeros, reread = bytes(chunk_bytes), bytearray(chunk_bytes)
    digest = hashlib.sha256()
    busy: list[tuple[Future, ...]] = [()] * RING_BUFFERS
    with ThreadPoolExecutor(1, "stamp-hash") as hasher, ThreadPoolExecutor(1, "stamp-verify") as verifier:
        for index, (offset, size, is_data) in enumerate(region_chunks(source.fileno(), src_start, length,
                                                                       chunk_bytes)):
            slot = index % RING_BUFFERS
            wait_for(*busy[slot])
            view = memoryview(ring[slot] if is_data else zeros)[:size]
            pending = []
            if is_data:  # a hole is not written: the new file reads zeros there
                read_exactly(source, src_start + offset, view)
                write_exactly(dest, dst_start + offset, view)
                pending.append(verifier.submit(verify_chunk, readback, dst_start + offset, ring[slot], size, reread))
            if hash_data:
                pending.append(hasher.submit(digest.update, view))
            busy[slot] = tuple(pending)
        for futures in busy:
            wait_for(*futures)
    return digest.hexdigest() if hash_data else None


class CopyMismatch(Exception):
    """The copy read back differs from the source at byte ``args[0]`` of the new file."""


def wait_for(*futures: Future) -> None:
    """Re-raise a worker's exception in the copying thread."""
    for future in futures:
        future.result()


def verify_chunk(handle, offset: int, expected: bytes | bytearray, size: int, buffer: bytearray) -> None:
    """Read ``size`` written bytes back from ``offset`` and compare them with the start of ``expected`` (memcmp)."""
    view = memoryview(buffer)[:size]
    read_exactly(handle, offset, view)
    if not expected.startswith(view):
        raise CopyMismatch(offset)


def hash_region(handle, start: int, length: int, buffer: bytearray) -> str:
    """sha256 of ``length`` bytes from ``start`` (holes are hashed as the zeros they read as, without reading)."""
    digest = hashlib.sha256()
    zeros = memoryview(bytes(len(buffer)))
    for offset, size, is_data in region_chunks(handle.fileno(), start, length, len(buffer)):
        if is_data:
            view = memoryview(buffer)[:size]
            read_exactly(handle, start + offset, view)
            digest.update(view)
        else:
            digest.update(zeros[:size])
    return digest.hexdigest()


def region_chunks(fd: int, start: int, length: int, chunk_bytes: int) -> Iterator[tuple[int, int, bool]]:
    """(offset from ``start``, size <= ``chunk_bytes``, holds data) covering ``length`` bytes."""
    for begin, size, is_data in extents(fd, start, start + length):
        for offset in range(begin, begin + size, chunk_bytes):
            yield offset - start, min(chunk_bytes, begin + size - offset), is_data


def extents(fd: int, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
    """(offset, size, holds data) runs of ``[start, end)``: holes found with SEEK_DATA / SEEK_HOLE where the file
    system supports them; everything is data otherwise."""
    position = start
    while position < end:
        data = next_data(fd, position, end)
        if data is None:
            yield position, end - position, True
            return
        if data > position:
            yield position, data - position, False
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole - data, True
        position = hole


def next_data(fd: int, position: int, end: int) -> int | None:
    """Offset of the next data at or after ``position`` (``end`` when only a hole is left); None: unsupported."""
    if not hasattr(os, "SEEK_DATA"):
        return None
    try:
        return min(os.lseek(fd, position, os.SEEK_DATA), end)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return end
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return None
        raise


def read_exactly(handle, offset: int, view: memoryview, path: str | None = None) -> None:
    """Fill ``view`` from ``offset``; a file shorter than its header says is an error."""
    handle.seek(offset)
    filled = 0
    while filled < len(view):
        count = handle.readinto(view[filled:])
        if not count:
            raise StampError(path or handle.name, f"file ends at {offset + filled}, before the data its header "
                                                  f"describes")
        filled += count


def write_exactly(handle, offset: int, view: memoryview) -> None:
    """Write all of ``view`` at ``offset`` (raw writes may be partial)."""
    handle.seek(offset)
    written = 0
    while written < len(view):
        written += handle.write(view[written:])


def fsync_folder(folder: str) -> None:
    """Make a rename / unlink in ``folder`` durable (not possible on Windows, where it is skipped)."""
    if os.name == "nt":
        return
    fd = os.open(folder or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def keep_backup(path: str) -> str:
    """The original as ``<path>.bak`` (``.bak1``, ``.bak2``... when taken): a hard link, or a copy where the file
    system has none; created exclusively."""
    for index in range(MAX_BACKUPS):
        candidate = f"{path}{BACKUP_SUFFIX}{index or ''}"
        try:
            os.link(path, candidate)
            return candidate
        except FileExistsError:
            continue
        except OSError:
            if copy_exclusive(path, candidate):
                return candidate
    raise StampError(path, f"too many backups ({MAX_BACKUPS}); remove old {BACKUP_SUFFIX} files")


def copy_exclusive(path: str, candidate: str) -> bool:
    """Stream ``path`` into a new file ``candidate``; False when ``candidate`` already exists."""
    try:
        target = open(candidate, "xb", buffering=0)
    except FileExistsError:
        return False
    buffer = bytearray(CHUNK_BYTES)
    with open(path, "rb", buffering=0) as source, target:
        size = os.fstat(source.fileno()).st_size
        for offset in range(0, size, CHUNK_BYTES):
            view = memoryview(buffer)[:min(CHUNK_BYTES, size - offset)]
            read_exactly(source, offset, view, path)
            write_exactly(target, offset, view)
        os.fsync(target.fileno())
    return True


class OutputFile:
    """The file being written, invisible until :meth:`publish`: ``O_TMPFILE`` on Linux (nothing is left behind if
    the process dies), otherwise a named temporary removed on any failure."""

    def __init__(self, folder: str, target: str):
        self.folder, self.target = folder, target
        self.fd, self.temp_path = open_unnamed(folder)
        self.published = False

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)
        if self.temp_path is not None and not self.published:
            remove_quietly(self.temp_path)

    def writer(self):
        return open(self.fd, "r+b", buffering=0, closefd=False)

    def reader(self):
        """An independent read handle (its own file position) for the read-back hash."""
        name = self.temp_path or os.path.join(PROC_FD, str(self.fd))
        return open(name, "rb", buffering=0)

    def publish(self, replace: bool) -> None:
        """Give the file its name: over the original (``replace``) or as a new name that must not exist."""
        if replace:
            named = self.temp_path or self.link_hidden()
            os.replace(named, self.target)
        elif self.temp_path is None:
            link_unnamed(self.fd, self.target)
        else:
            os.link(self.temp_path, self.target)
            os.unlink(self.temp_path)
        self.published = True
        fsync_folder(self.folder)

    def link_hidden(self) -> str:
        """A hidden name for the unnamed file, for ``os.replace`` (there is no "link over" call); removed by
        ``__exit__`` if the replace fails."""
        name = os.path.join(self.folder, f".{os.path.basename(self.target)}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        link_unnamed(self.fd, name)
        self.temp_path = name
        return name


def link_unnamed(fd: int, name: str) -> None:
    """Give the ``O_TMPFILE`` file ``fd`` the new name ``name`` (FileExistsError if taken): ``linkat`` of
    ``/proc/self/fd/<fd>`` with AT_SYMLINK_FOLLOW, which needs no privilege (AT_EMPTY_PATH would)."""
    proc = os.open(PROC_FD, os.O_RDONLY)
    try:
        os.link(str(fd), name, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def open_unnamed(folder: str) -> tuple[int, str | None]:
    """(fd, None) for an ``O_TMPFILE`` file in ``folder``; (fd, path) of a named temporary where unsupported."""
    if hasattr(os, "O_TMPFILE") and os.path.isdir(PROC_FD):
        try:
            return os.open(folder, os.O_TMPFILE | os.O_RDWR, NEW_FILE_MODE), None
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise
    fd, name = tempfile.mkstemp(dir=folder, prefix=".", suffix=TEMP_SUFFIX)
    return fd, name


def remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
