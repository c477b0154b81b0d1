"""``vpred_core.checkpoints.stamp``: what is written, the three write modes, hashes, crash safety, refusals.

Files are real safetensors files (``ckpt_factory``) whose first tensors hold random bytes and whose tail is a sparse
hole, so that copies are checked byte for byte through both the data and the hole paths.
"""

import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from ckpt_factory import build_checkpoint, checkpoint_tensors, write_safetensors
from safetensors import safe_open
from stamp_support import data_sha256, file_sha256, fill_random, folder_listing, header_length, marker_names

from vpred_core.checkpoints import stamp as stamp_module
from vpred_core.checkpoints.inspection import inspect_checkpoint
from vpred_core.checkpoints.stamp import (
    HEADER_ROOM_BYTES,
    MODE_IN_PLACE,
    MODE_NEW_FILE,
    MODE_REWRITE,
    StampError,
    StampRequest,
    recover_interrupted_stamp,
    stamp_file,
    undo_record_path,
)

REPO = Path(__file__).resolve().parent.parent
SMALL_CHUNK = 64 << 10  # many chunks: the ring, the read-back lag and chunk edges are all exercised
V_ZTSNR, V_ONLY, EPS = StampRequest("v", True), StampRequest("v", False), StampRequest("eps", False)
EXPECTED_METADATA = {
    V_ZTSNR: {"modelspec.predict_key": "v", "modelspec.prediction_type": "v-zsnr",
              "ss_v_parameterization": "True", "ss_zero_terminal_snr": "True"},
    V_ONLY: {"modelspec.predict_key": "v", "modelspec.prediction_type": "v",
             "ss_v_parameterization": "True", "ss_zero_terminal_snr": "False"},
    EPS: {"modelspec.predict_key": "epsilon", "modelspec.prediction_type": "epsilon",
          "ss_v_parameterization": "False", "ss_zero_terminal_snr": "False"},
}
EXPECTED_MARKERS = {V_ZTSNR: {"v_pred", "ztsnr"}, V_ONLY: {"v_pred"}, EPS: set()}


def sdxl_file(tmp_path, name="m.safetensors", markers=(), metadata=None) -> Path:
    """An SDXL UNet-only file (14 MiB): 3 MiB of random bytes, then a hole."""
    return fill_random(build_checkpoint(tmp_path / name, "sdxl", unet_only=True, markers=markers, metadata=metadata))


@pytest.mark.parametrize("request_", [V_ZTSNR, V_ONLY, EPS], ids=["v-ztsnr", "v", "eps"])
def test_stamped_file_loads_and_inspect_reports_it(tmp_path, request_):
    path = sdxl_file(tmp_path, markers=("ztsnr",), metadata={"modelspec.predict_key": "epsilon", "title": "x"})
    with safe_open(str(path), "pt") as handle:
        before = {name: handle.get_tensor(name).numpy().tobytes() for name in handle.keys() if name != "ztsnr"}
    stamp_file(path, request_)
    with safe_open(str(path), "pt") as handle:
        assert {k: v for k, v in handle.metadata().items() if k != "title"} == EXPECTED_METADATA[request_]
        assert handle.metadata()["title"] == "x", "other metadata is kept"
        for name in EXPECTED_MARKERS[request_]:
            marker = handle.get_tensor(name)
            assert marker.shape == (0,) and str(marker.dtype) == "torch.float32"
        for name, raw in before.items():
            assert handle.get_tensor(name).numpy().tobytes() == raw, name
    assert marker_names(path) == EXPECTED_MARKERS[request_]
    result = inspect_checkpoint(path)
    assert result.ok and (result.prediction, result.ztsnr) == (request_.prediction, request_.ztsnr)
    assert result.conflicts == []


@pytest.mark.parametrize("mode", [MODE_REWRITE, MODE_IN_PLACE, MODE_NEW_FILE])
def test_tensor_data_hash_is_identical(tmp_path, mode):
    path = sdxl_file(tmp_path)
    if mode == MODE_IN_PLACE:
        stamp_file(path, V_ZTSNR)  # a rewrite leaves room in the header
    before, original = data_sha256(path), file_sha256(path)
    out = tmp_path / "out.safetensors" if mode == MODE_NEW_FILE else None
    result = stamp_file(path, EPS if mode == MODE_IN_PLACE else V_ZTSNR, out=out, chunk_bytes=SMALL_CHUNK)
    assert result.mode == mode and result.written_path == str(out or path)
    assert data_sha256(out or path) == before
    assert result.old_data_sha256 == result.new_data_sha256 == before
    assert (file_sha256(path) == original) == (mode == MODE_NEW_FILE), "--out leaves the original untouched"


def test_in_place_when_the_header_has_room(tmp_path):
    path = sdxl_file(tmp_path)
    first = stamp_file(path, V_ZTSNR)
    assert first.mode == MODE_REWRITE
    assert header_length(path) % 8 == 0 and header_length(path) >= first.old_header_size + HEADER_ROOM_BYTES
    size, length, data = os.path.getsize(path), header_length(path), data_sha256(path)
    for request_ in (EPS, V_ONLY, V_ZTSNR):
        result = stamp_file(path, request_)
        assert result.mode == MODE_IN_PLACE, request_
        assert (os.path.getsize(path), header_length(path), data_sha256(path)) == (size, length, data)
        assert result.old_data_sha256 == result.new_data_sha256 == data
        assert marker_names(path) == EXPECTED_MARKERS[request_]


def test_changes_are_reported_and_nothing_to_do_is_empty(tmp_path):
    path = sdxl_file(tmp_path, markers=("v_pred", "ztsnr"), metadata={"ss_v_parameterization": "True"})
    changes = {str(change) for change in stamp_file(path, EPS).changes}
    assert changes == {
        "- tensor v_pred: F32 [0]", "- tensor ztsnr: F32 [0]",
        "+ __metadata__ modelspec.predict_key: 'epsilon'", "+ __metadata__ modelspec.prediction_type: 'epsilon'",
        "~ __metadata__ ss_v_parameterization: 'True' -> 'False'", "+ __metadata__ ss_zero_terminal_snr: 'False'",
    }
    mtime = os.stat(path).st_mtime_ns
    again = stamp_file(path, EPS)
    assert not again.changed and os.stat(path).st_mtime_ns == mtime


def test_dry_run_writes_nothing(tmp_path):
    path = sdxl_file(tmp_path)
    before, mtime = file_sha256(path), os.stat(path).st_mtime_ns
    result = stamp_file(path, V_ZTSNR, dry_run=True)
    assert result.dry_run and result.changed and result.old_data_sha256 is None
    assert (file_sha256(path), os.stat(path).st_mtime_ns) == (before, mtime)
    assert folder_listing(tmp_path) == ["m.safetensors"]


def test_backup_keeps_the_original_and_numbers_backups(tmp_path):
    path = sdxl_file(tmp_path)
    original = file_sha256(path)
    result = stamp_file(path, V_ZTSNR, backup=True)
    assert result.mode == MODE_REWRITE and result.backup_path == f"{path}.bak"
    assert file_sha256(result.backup_path) == original and file_sha256(path) != original
    stamped = file_sha256(path)
    assert stamp_file(path, EPS, backup=True).backup_path == f"{path}.bak1"
    assert file_sha256(f"{path}.bak1") == stamped and file_sha256(f"{path}.bak") == original


def test_backup_copies_where_hard_links_fail(tmp_path, monkeypatch):
    path = sdxl_file(tmp_path)
    original = file_sha256(path)

    def no_links(*_args, **_kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(stamp_module.os, "link", no_links)
    monkeypatch.setattr(stamp_module, "PROC_FD", str(tmp_path / "no-proc"))  # named temporary, no linkat
    result = stamp_file(path, V_ZTSNR, backup=True)
    assert file_sha256(result.backup_path) == original and not os.path.samefile(result.backup_path, path)


def test_out_never_overwrites(tmp_path):
    path = sdxl_file(tmp_path)
    out = tmp_path / "taken.safetensors"
    out.write_bytes(b"mine")
    with pytest.raises(StampError, match="taken.safetensors: already exists"):
        stamp_file(path, V_ZTSNR, out=out)
    assert out.read_bytes() == b"mine"


@pytest.mark.parametrize("unnamed", [True, False], ids=["o_tmpfile", "named-temp"])
def test_out_created_meanwhile_is_not_overwritten(tmp_path, monkeypatch, unnamed):
    """The final link is exclusive: a file that appears during the copy wins, and no temporary is left."""
    if not unnamed:
        monkeypatch.setattr(stamp_module, "PROC_FD", str(tmp_path / "no-proc"))
    path = sdxl_file(tmp_path)
    out = tmp_path / "out.safetensors"
    real_write = stamp_module.write_exactly

    def write_and_race(handle, offset, view):
        if not out.exists():
            out.write_bytes(b"raced")
        real_write(handle, offset, view)

    monkeypatch.setattr(stamp_module, "write_exactly", write_and_race)
    with pytest.raises(StampError, match="File exists"):
        stamp_file(path, V_ZTSNR, out=out)
    assert out.read_bytes() == b"raced"
    assert folder_listing(tmp_path) == ["m.safetensors", "out.safetensors"]


@pytest.mark.parametrize("unnamed", [True, False], ids=["o_tmpfile", "named-temp"])
def test_failure_in_the_copy_loop_leaves_the_original_and_no_temp(tmp_path, monkeypatch, unnamed):
    if not unnamed:
        monkeypatch.setattr(stamp_module, "PROC_FD", str(tmp_path / "no-proc"))
    path = sdxl_file(tmp_path)
    original = file_sha256(path)
    calls = []
    real_write = stamp_module.write_exactly

    def failing_write(handle, offset, view):
        calls.append(offset)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        real_write(handle, offset, view)

    monkeypatch.setattr(stamp_module, "write_exactly", failing_write)
    with pytest.raises(StampError, match="m.safetensors: cannot write: No space left on device"):
        stamp_file(path, V_ZTSNR, chunk_bytes=SMALL_CHUNK)
    assert file_sha256(path) == original
    assert folder_listing(tmp_path) == ["m.safetensors"]


KILL_SCRIPT = """
import os, signal, sys
from vpred_core.checkpoints import stamp
calls = []
real_write = stamp.write_exactly
def write_then_die(handle, offset, view):
    calls.append(offset)
    if len(calls) == int(sys.argv[2]):
        real_write(handle, offset, view[: len(view) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    real_write(handle, offset, view)
stamp.write_exactly = write_then_die
stamp.stamp_file(sys.argv[1], stamp.StampRequest(sys.argv[3], sys.argv[4] == "on"), chunk_bytes=65536)
"""


def run_killed(path, kill_at_write: int, prediction: str, ztsnr: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(path), str(kill_at_write), prediction, ztsnr],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_copy_leaves_the_original_intact_and_no_temp(tmp_path):
    path = sdxl_file(tmp_path)
    original = file_sha256(path)
    run_killed(path, 10, "v", "on")  # write 1 is the header, then data chunks: killed mid-copy
    assert file_sha256(path) == original
    assert folder_listing(tmp_path) == ["m.safetensors"], "O_TMPFILE: a killed copy leaves nothing behind"


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_in_place_write_is_rolled_back(tmp_path):
    path = sdxl_file(tmp_path)
    stamp_file(path, V_ZTSNR)  # a rewrite: the header now has room for in-place stamps
    original = file_sha256(path)
    run_killed(path, 1, "eps", "off")  # the in-place header write is torn in half
    assert file_sha256(path) != original and os.path.exists(undo_record_path(path))
    assert recover_interrupted_stamp(path).startswith("rolled back")
    assert file_sha256(path) == original and folder_listing(tmp_path) == ["m.safetensors"]
    assert marker_names(path) == {"v_pred", "ztsnr"}


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_next_stamp_finishes_an_interrupted_one(tmp_path):
    path = sdxl_file(tmp_path)
    stamp_file(path, V_ZTSNR)
    data = data_sha256(path)
    run_killed(path, 1, "eps", "off")
    result = stamp_file(path, EPS)
    assert result.recovered.startswith("rolled back") and result.mode == MODE_IN_PLACE
    assert marker_names(path) == set() and data_sha256(path) == data
    assert folder_listing(tmp_path) == ["m.safetensors"]


def test_record_left_after_a_completed_write_is_just_removed(tmp_path, monkeypatch):
    path = sdxl_file(tmp_path)
    stamp_file(path, V_ZTSNR)
    monkeypatch.setattr(stamp_module.os, "unlink", lambda _path: None)  # "killed" before the record is removed
    stamp_file(path, EPS)
    monkeypatch.undo()
    stamped = file_sha256(path)
    assert recover_interrupted_stamp(path).startswith("an interrupted stamp had completed")
    assert file_sha256(path) == stamped and not os.path.exists(undo_record_path(path))


def test_failed_in_place_write_is_undone_at_once(tmp_path, monkeypatch):
    path = sdxl_file(tmp_path)
    stamp_file(path, V_ZTSNR)
    original = file_sha256(path)
    real_write = stamp_module.write_exactly
    calls = []

    def torn_write(handle, offset, view):
        calls.append(offset)
        if len(calls) == 1:
            real_write(handle, offset, view[: len(view) // 2])
            raise OSError(5, "Input/output error")
        real_write(handle, offset, view)

    monkeypatch.setattr(stamp_module, "write_exactly", torn_write)
    with pytest.raises(StampError, match="m.safetensors: cannot write: Input/output error"):
        stamp_file(path, EPS)
    assert file_sha256(path) == original and folder_listing(tmp_path) == ["m.safetensors"]


def test_record_before_any_header_byte_is_just_removed(tmp_path):
    path = sdxl_file(tmp_path)
    original = path.read_bytes()[: 8 + header_length(path)]
    stamp_module.write_undo_record(undo_record_path(path), original, b"new header", os.path.getsize(path))
    assert recover_interrupted_stamp(path) == stamp_module.NOT_STARTED
    assert path.read_bytes()[: len(original)] == original and folder_listing(tmp_path) == ["m.safetensors"]


@pytest.mark.parametrize("hash_data", [True, False], ids=["sha256", "no-sha256"])
def test_a_corrupt_copy_is_never_published(tmp_path, monkeypatch, hash_data):
    """A chunk that lands differently on disk (here: one flipped byte) is caught by the read-back comparison, which
    does not depend on the sha256."""
    path = sdxl_file(tmp_path)
    original = file_sha256(path)
    real_write = stamp_module.write_exactly
    calls = []

    def flip_a_byte(handle, offset, view):
        calls.append(offset)
        if len(calls) == 3:
            view = memoryview(bytes(view[:-1]) + bytes([view[-1] ^ 1]))
        real_write(handle, offset, view)

    monkeypatch.setattr(stamp_module, "write_exactly", flip_a_byte)
    with pytest.raises(StampError, match="the copy read back differs from the original"):
        stamp_file(path, V_ZTSNR, chunk_bytes=SMALL_CHUNK, hash_data=hash_data)
    assert file_sha256(path) == original and folder_listing(tmp_path) == ["m.safetensors"]


def test_a_file_changed_during_the_copy_is_not_replaced(tmp_path, monkeypatch):
    path = sdxl_file(tmp_path)
    real_write = stamp_module.write_exactly

    def write_and_touch(handle, offset, view):
        real_write(handle, offset, view)
        os.utime(path, ns=(1, 1))

    monkeypatch.setattr(stamp_module, "write_exactly", write_and_touch)
    with pytest.raises(StampError, match="changed while it was being stamped"):
        stamp_file(path, V_ZTSNR)
    assert marker_names(path) == set() and folder_listing(tmp_path) == ["m.safetensors"]


def test_sparse_holes_stay_holes(tmp_path):
    path = build_checkpoint(tmp_path / "sparse.safetensors", "sdxl")
    result = stamp_file(path, V_ZTSNR)
    assert result.mode == MODE_REWRITE and result.old_data_sha256 == result.new_data_sha256
    allocated = os.stat(path).st_blocks * 512
    assert allocated < os.path.getsize(path) // 10, "the zero data region was written out instead of skipped"


def test_extents_cover_every_byte_once(tmp_path):
    path = sdxl_file(tmp_path)
    start = 8 + header_length(path)
    length = os.path.getsize(path) - start
    with open(path, "rb") as handle:
        chunks = list(stamp_module.region_chunks(handle.fileno(), start, length, SMALL_CHUNK))
    offsets = [offset for offset, _, _ in chunks]
    assert offsets[0] == 0 and all(a + s == b for (a, s, _), b in zip(chunks, offsets[1:], strict=False))
    assert chunks[-1][0] + chunks[-1][1] == length
    assert all(0 < size <= SMALL_CHUNK for _, size, _ in chunks)
    assert {is_data for _, _, is_data in chunks} == {True, False}, "random head = data, sparse tail = hole"


def test_beta_end_is_recorded_and_read_back(tmp_path):
    path = sdxl_file(tmp_path)
    stamp_file(path, StampRequest("v", True, 0.024))
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()["vpred_toolkit.linear_end"] == "0.024"
    result = inspect_checkpoint(path)
    assert result.linear_end == 0.024 and result.sources["linear_end"].source == "toolkit_metadata"


def test_unreadable_beta_end_metadata_is_ignored_with_a_warning(tmp_path):
    path = sdxl_file(tmp_path, metadata={"vpred_toolkit.linear_end": "lots"})
    result = inspect_checkpoint(path)
    assert result.linear_end == 0.012 and any("vpred_toolkit.linear_end" in w for w in result.warnings)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prediction="eps", ztsnr=True), "ZTSNR needs v-prediction"),
    (dict(prediction="x0", ztsnr=False), "prediction must be one of"),
    (dict(prediction="v", ztsnr=True, linear_end=1.5), "beta_end must be in"),
])
def test_request_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StampRequest(**kwargs)


@pytest.mark.parametrize("name, message", [
    ("old.ckpt", "convert it to .safetensors first"),
    ("model.bin", "never stamped"),
    ("notes.txt", "not a .safetensors file"),
])
def test_refuses_what_it_cannot_stamp(tmp_path, name, message):
    path = tmp_path / name
    path.write_bytes(b"PK\x03\x04 not read")
    with pytest.raises(StampError, match=f"{name}: .*{message}"):
        stamp_file(path, V_ZTSNR)
    assert path.read_bytes() == b"PK\x03\x04 not read"


def test_refuses_a_file_safetensors_would_refuse(tmp_path):
    path = write_safetensors(tmp_path / "gap.safetensors", {"a": ("F32", [4])})
    with open(path, "ab") as handle:
        handle.write(b"\0" * 8)  # trailing bytes: safetensors raises MetadataIncompleteBuffer
    with pytest.raises(StampError, match="gap.safetensors: not loadable by safetensors: tensors cover 16 bytes"):
        stamp_file(path, V_ZTSNR)
    raw = (b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,12]},'
           b'"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}}')
    bad = tmp_path / "size.safetensors"
    bad.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 16)
    with pytest.raises(StampError, match="tensor 'a' spans 12 bytes, its dtype and shape need 16"):
        stamp_file(bad, V_ZTSNR)
    raw = (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
           b'"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}')
    gap = tmp_path / "gap2.safetensors"
    gap.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 12)
    with pytest.raises(StampError, match="tensor 'b' starts at 8, expected 4"):
        stamp_file(gap, V_ZTSNR)


def test_refuses_to_drop_a_marker_that_holds_data(tmp_path):
    tensors = {**checkpoint_tensors("sdxl"), "v_pred": ("F32", [1])}
    path = write_safetensors(tmp_path / "m.safetensors", tensors)
    with pytest.raises(StampError, match="tensor 'v_pred' holds 4 bytes of data"):
        stamp_file(path, EPS)


def test_a_bad_header_names_the_file(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\0\0")
    with pytest.raises(StampError, match="short.safetensors: file too short"):
        stamp_file(path, V_ZTSNR)


def test_symlinked_path_stamps_the_target(tmp_path):
    (tmp_path / "store").mkdir()
    real = sdxl_file(tmp_path / "store")
    link = tmp_path / "link.safetensors"
    link.symlink_to(real)
    stamp_file(link, V_ZTSNR)
    assert link.is_symlink() and marker_names(real) == {"v_pred", "ztsnr"}


@pytest.mark.parametrize("family, request_, fragment", [
    ("sd1", V_ZTSNR, "write-yaml"),
    ("sd2", V_ONLY, "SDXL base only"),
    ("sdxl", V_ZTSNR, None),
    ("sd1", EPS, None),
])
def test_host_coverage_warnings(tmp_path, family, request_, fragment):
    path = build_checkpoint(tmp_path / "m.safetensors", family)
    warnings = stamp_file(path, request_, dry_run=True).warnings
    assert any(fragment in w for w in warnings) if fragment else warnings == []


def test_edm_tensor_warning(tmp_path):
    path = write_safetensors(tmp_path / "m.safetensors", {**checkpoint_tensors("sdxl"),
                                                           "edm_vpred.sigma_max": ("F32", [])})
    assert any("EDM" in w for w in stamp_file(path, V_ZTSNR, dry_run=True).warnings)
