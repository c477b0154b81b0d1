"""file_writes: exclusive creation and symlink-safe replacement under races, umasks and failures mid-write."""

import errno
import os
import stat
import threading

import pytest
from ckpt_factory import build_checkpoint

from vpred_core.checkpoints import file_writes
from vpred_core.checkpoints.file_writes import create_exclusive, replace_with_backup
from vpred_core.checkpoints.sidecar_yaml import write_yaml_for_checkpoint

WRITERS = 8
posix_only = pytest.mark.skipif(os.name != "posix", reason="symlinks, umask and modes as POSIX has them")


def _names(folder):
    return sorted(os.listdir(folder))


def test_creates_new_file_and_keeps_an_existing_one(tmp_path):
    target = tmp_path / "m.yaml"
    assert create_exclusive(target, "first\n") is True
    assert create_exclusive(target, "second\n") is False
    assert target.read_text() == "first\n" and _names(tmp_path) == ["m.yaml"]


def test_two_writers_at_once_one_wins_the_other_keeps_it(tmp_path):
    """Threads released together: exactly one creates the file, whole; no temporary file is left."""
    target = tmp_path / "m.yaml"
    barrier = threading.Barrier(WRITERS)
    results = [None] * WRITERS
    texts = [f"writer {index}\n" * 2000 for index in range(WRITERS)]

    def write(index):
        barrier.wait()
        results[index] = create_exclusive(target, texts[index])

    threads = [threading.Thread(target=write, args=(index,)) for index in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1
    assert target.read_text() == texts[results.index(True)]
    assert _names(tmp_path) == ["m.yaml"]


def test_file_appearing_between_check_and_write_is_kept(tmp_path, monkeypatch):
    """The name is free when checked, taken by someone else before ours is linked: theirs stays."""
    target = tmp_path / "m.yaml"
    real_write_temp = file_writes._write_temp

    def write_temp_then_someone_else_creates(path, write, mode, durable):
        tmp = real_write_temp(path, write, mode, durable)
        target.write_text("theirs\n")
        return tmp

    monkeypatch.setattr(file_writes, "_write_temp", write_temp_then_someone_else_creates)
    assert create_exclusive(target, "ours\n") is False
    assert target.read_text() == "theirs\n" and _names(tmp_path) == ["m.yaml"]


def test_sidecar_yaml_appearing_meanwhile_is_reported_and_kept(tmp_path, monkeypatch):
    ckpt = build_checkpoint(tmp_path / "m.safetensors", "sd1", markers=("v_pred",))
    real_publish = file_writes._publish

    def publish_after_someone_else(path, *args, **kwargs):
        (tmp_path / "m.yaml").write_text("user: true\n")
        return real_publish(path, *args, **kwargs)

    monkeypatch.setattr(file_writes, "_publish", publish_after_someone_else)
    outcome = write_yaml_for_checkpoint(ckpt)
    assert outcome.status == "exists" and "appeared" in outcome.reason
    assert (tmp_path / "m.yaml").read_text() == "user: true\n"
    assert _names(tmp_path) == ["m.safetensors", "m.yaml"]


@posix_only
def test_dangling_symlink_is_kept_and_never_followed(tmp_path):
    ckpt = build_checkpoint(tmp_path / "m.safetensors", "sd1", markers=("v_pred",))
    link, target = tmp_path / "m.yaml", tmp_path / "elsewhere.yaml"
    link.symlink_to(target)
    assert create_exclusive(link, "x\n") is False
    assert write_yaml_for_checkpoint(ckpt).status == "exists"
    forced = write_yaml_for_checkpoint(ckpt, force=True)
    assert forced.status == "error" and "symbolic link" in forced.reason
    assert write_yaml_for_checkpoint(ckpt, force=True, dry_run=True).status == "error"
    assert link.is_symlink() and os.readlink(link) == str(target) and not target.exists()
    assert _names(tmp_path) == ["m.safetensors", "m.yaml"]


@posix_only
def test_symlink_to_a_real_file_is_not_replaced(tmp_path):
    real, link = tmp_path / "real.yaml", tmp_path / "m.yaml"
    real.write_text("real\n")
    link.symlink_to(real)
    with pytest.raises(OSError) as info:
        replace_with_backup(link, "new\n")
    assert info.value.errno == errno.ELOOP and info.value.filename == str(link)
    assert link.is_symlink() and real.read_text() == "real\n"
    assert _names(tmp_path) == ["m.yaml", "real.yaml"]


@posix_only
@pytest.mark.parametrize("umask, mode", [(0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert create_exclusive(tmp_path / "a.yaml", "a\n")
        assert replace_with_backup(tmp_path / "b.yaml", "b\n") is None
    finally:
        os.umask(old)
    for name in ("a.yaml", "b.yaml"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode


@posix_only
def test_replacement_keeps_mode_and_backup_keeps_old_contents_and_mode(tmp_path):
    target = tmp_path / "m.yaml"
    target.write_text("old\n")
    target.chmod(0o600)
    backup = replace_with_backup(target, "new\n")
    assert backup == f"{target}.bak" and open(backup).read() == "old\n" and target.read_text() == "new\n"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600 == stat.S_IMODE(os.stat(backup).st_mode)
    (tmp_path / "m.yaml.bak1").write_text("someone's\n")
    assert replace_with_backup(target, "newer\n") == f"{target}.bak2"
    assert (tmp_path / "m.yaml.bak1").read_text() == "someone's\n"


def _fail_after_first_write(monkeypatch):
    """os.write writes part of the data then the disk is full."""
    real_write = os.write
    calls = []

    def write(fd, data):
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(data[:10]))

    monkeypatch.setattr(file_writes.os, "write", write)


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    _fail_after_first_write(monkeypatch)
    with pytest.raises(OSError, match="No space"):
        create_exclusive(tmp_path / "m.yaml", "x" * 1000)
    assert _names(tmp_path) == []


def test_failed_replacement_leaves_the_old_file_and_no_backup(tmp_path, monkeypatch):
    target = tmp_path / "m.yaml"
    target.write_text("old\n")
    real_replace = os.replace

    def replace_fails(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(file_writes.os, "replace", replace_fails)
    with pytest.raises(OSError, match="I/O error"):
        replace_with_backup(target, "new\n")
    monkeypatch.setattr(file_writes.os, "replace", real_replace)
    assert target.read_text() == "old\n" and _names(tmp_path) == ["m.yaml"]


@posix_only
def test_file_swapped_for_a_symlink_during_replacement_is_left_alone(tmp_path, monkeypatch):
    target, elsewhere = tmp_path / "m.yaml", tmp_path / "elsewhere"
    target.write_text("old\n")
    real_backup = file_writes._backup

    def backup_then_swap(path, before):
        backup = real_backup(path, before)
        os.unlink(path)
        os.symlink(elsewhere, path)
        return backup

    monkeypatch.setattr(file_writes, "_backup", backup_then_swap)
    with pytest.raises(OSError, match="changed while being replaced"):
        replace_with_backup(target, "new\n")
    assert target.is_symlink() and not elsewhere.exists() and _names(tmp_path) == ["m.yaml"]


def test_filesystem_without_hard_links_still_creates_exclusively(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(file_writes.os, "link", no_links)
    assert create_exclusive(tmp_path / "m.yaml", "fat32\n") is True
    assert create_exclusive(tmp_path / "m.yaml", "again\n") is False
    assert (tmp_path / "m.yaml").read_text() == "fat32\n" and _names(tmp_path) == ["m.yaml"]


def test_folder_in_the_way_is_an_error_not_a_replacement(tmp_path):
    (tmp_path / "m.yaml").mkdir()
    assert create_exclusive(tmp_path / "m.yaml", "x\n") is False
    with pytest.raises(OSError, match="not a regular file"):
        replace_with_backup(tmp_path / "m.yaml", "x\n")
    assert _names(tmp_path) == ["m.yaml"]
