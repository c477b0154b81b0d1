"""List the tensor names and shapes of a PyTorch zip checkpoint (``.ckpt``/``.pt``) WITHOUT unpickling it.

``torch.save`` writes a zip whose ``<archive>/data.pkl`` pickle describes the state dict: each tensor is a call
of ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``. Unpickling would import and call
whatever globals the file names (arbitrary code execution), so this module never does: it walks the opcodes with
the standard library's ``pickletools.genops`` (a pure parser) and evaluates only a whitelist of data-building
opcodes in :mod:`.pickle_stack`, where every global is an inert name and every call an inert record. Only the
``size`` argument of the tensor-rebuild calls is read. Legacy (pre-zip) pickles and anything unusual are refused.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field

from .file_errors import CheckpointFileError
from .pickle_stack import PickleStackError, TensorStub, evaluate

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
