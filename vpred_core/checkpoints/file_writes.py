"""Every file the pack writes goes through here: exclusive creation, or a replacement that keeps a backup.

- :func:`create_exclusive` creates a file only where nothing exists, not even a dangling symbolic link, and
  never replaces what appears meanwhile: the text is written to a temporary file in the same folder, which is then
  hard-linked to the final name (``link`` fails when the name exists, atomically, at the moment it happens).
- :func:`replace_with_backup` replaces a regular file, after copying it to a backup that is itself created
  exclusively (``<name>.bak``, ``<name>.bak1``...); a symbolic link is refused, never followed or replaced.

Both: readers see the old file or the whole new one, never a partial one; a new file gets the mode the user's
umask gives (``0o666 & ~umask``, applied by the kernel: the umask is never read or changed), a replaced one keeps
the old file's permission bits; whatever fails, the temporary files (and a backup made for a replacement that
then failed) are removed. Errors are OSError, with ``filename`` set.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat

logger = logging.getLogger(__name__)

BACKUP_SUFFIX = ".bak"
MAX_BACKUPS = 1000  # .bak, .bak1 ... .bak999: a folder with more is not being looked after
NEW_FILE_MODE = 0o666  # what open() asks for; the kernel takes the umask (or a default ACL) away
TEMP_ATTEMPTS = 16  # random temporary names tried before giving up (a clash needs 48 equal random bits)
TEMP_RANDOM_BYTES = 6
COPY_CHUNK_BYTES = 2**20  # a backup is copied in chunks: a large file is never held in memory
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
# link() errors meaning "this filesystem has no hard links" (FAT/exFAT: EPERM; some network filesystems: the rest)
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK})


def create_exclusive(path: str | os.PathLike, text: str, durable: bool = False) -> bool:
    """Create ``path`` holding ``text`` (UTF-8, ``\\n`` line ends) if the name is free; True when created.

    False when anything already has the name (a file, a folder, a symbolic link even dangling), including
    something that appeared while the text was being written: it is left exactly as it was. ``durable`` also
    fsyncs the data before the file appears. OSError for anything else (permission, read-only folder...), with
    nothing left behind.
    """
    path = os.fspath(path)
    if os.path.lexists(path):
        return False
    return _publish(path, _bytes_writer(text.encode("utf-8")), None, durable)


def replace_with_backup(path: str | os.PathLike, text: str, durable: bool = False) -> str | None:
    """Replace the regular file ``path`` by one holding ``text``; return the backup path (None: nothing was there).

    The current file is first copied to the first free ``<path>.bak``, ``<path>.bak1``... (created exclusively,
    with the old mode); the new file keeps the old permission bits. A symbolic link (even to a regular file) or
    anything that is not a regular file raises OSError and is left alone, as is a file that changes while it is
    being replaced. When ``path`` is missing the file is created as by :func:`create_exclusive`.
    """
    path = os.fspath(path)
    write = _bytes_writer(text.encode("utf-8"))
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        if _publish(path, write, None, durable):
            return None
        before = os.lstat(path)  # appeared meanwhile: replace it, as asked
    if stat.S_ISLNK(before.st_mode):
        raise OSError(errno.ELOOP, "is a symbolic link: never followed or replaced", path)
    if not stat.S_ISREG(before.st_mode):
        raise OSError(errno.EEXIST, "exists and is not a regular file", path)
    backup = _backup(path, before)
    try:
        _publish(path, write, stat.S_IMODE(before.st_mode), durable, replacing=before)
    except BaseException:
        _remove_quietly(backup)
        raise
    return backup


def _backup(path: str, before: os.stat_result) -> str:
    """Copy the file ``before`` describes (opened without following links, checked to be that very file) to the
    first free backup name, with its mode."""
    source = os.open(path, _READ_FLAGS)
    try:
        _check_same(path, before, os.fstat(source))
        mode = stat.S_IMODE(before.st_mode)
        for index in range(MAX_BACKUPS):
            candidate = f"{path}{BACKUP_SUFFIX}{index or ''}"
            os.lseek(source, 0, os.SEEK_SET)
            if not os.path.lexists(candidate) and _publish(candidate, _copy_writer(source), mode, durable=False):
                return candidate
    finally:
        os.close(source)
    raise OSError(errno.EEXIST, f"too many backups ({MAX_BACKUPS}); remove old {BACKUP_SUFFIX} files", path)


def _check_same(path: str, expected: os.stat_result, found: os.stat_result) -> None:
    """Same file, same type, unchanged (an inode number alone is reused at once by a file created meanwhile)."""
    if _identity(found) != _identity(expected):
        raise OSError(errno.EAGAIN, "changed while being replaced; left as it is", path)


def _identity(info: os.stat_result) -> tuple:
    return info.st_dev, info.st_ino, info.st_mode, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _publish(path: str, write, mode: int | None, durable: bool, replacing: os.stat_result | None = None) -> bool:
    """Write a temporary file beside ``path`` with ``write(fd)``, then give it the name: a hard link (exclusive;
    False when the name is taken) or, with ``replacing``, a rename over the file ``replacing`` describes (checked
    again just before). ``mode`` None keeps the mode the umask gave the temporary file."""
    tmp = _write_temp(path, write, mode, durable)
    try:
        if replacing is None:
            return _link(tmp, path, mode)
        _check_same(path, replacing, os.lstat(path))
        os.replace(tmp, path)
        tmp = None
        return True
    finally:
        _remove_quietly(tmp)


def _link(tmp: str, path: str, mode: int | None) -> bool:
    """Give the finished temporary file the name ``path`` unless it is taken; False when it is."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        logger.debug("%s appeared while it was being written; the existing one is kept", path)
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
    logger.debug("%s: no hard links on this filesystem; created in place with O_EXCL", path)
    try:
        fd = os.open(path, _CREATE_FLAGS, NEW_FILE_MODE)
    except FileExistsError:
        return False
    source = None
    try:
        if mode is not None:
            _set_mode(fd, path, mode)
        source = os.open(tmp, _READ_FLAGS)
        _copy_writer(source)(fd)
    except BaseException:
        os.close(fd)
        _remove_quietly(path)  # ours: this O_EXCL open created it
        raise
    finally:
        if source is not None:
            os.close(source)
    os.close(fd)
    return True


def _write_temp(path: str, write, mode: int | None, durable: bool) -> str:
    """A new, fully written temporary file in ``path``'s folder (removed again if anything fails); its name."""
    folder, name = os.path.split(path)
    for _ in range(TEMP_ATTEMPTS):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(TEMP_RANDOM_BYTES)}.tmp")
        try:
            fd = os.open(tmp, _CREATE_FLAGS, NEW_FILE_MODE)
            break
        except FileExistsError:
            continue
    else:
        raise OSError(errno.EEXIST, "no free temporary file name", path)
    try:
        if mode is not None:
            _set_mode(fd, tmp, mode)
        write(fd)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _remove_quietly(tmp)
        raise
    os.close(fd)
    return tmp


def _set_mode(fd: int, path: str, mode: int) -> None:
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:  # Windows: only the read-only flag exists
        os.chmod(path, mode)


def _bytes_writer(data: bytes):
    def write(fd: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    return write


def _copy_writer(source: int):
    def write(fd: int) -> None:
        while chunk := os.read(source, COPY_CHUNK_BYTES):
            _bytes_writer(chunk)(fd)
    return write


def _remove_quietly(path: str | None) -> None:
    if path is None:
        return
    try:
        os.unlink(path)
    except OSError:
        pass
