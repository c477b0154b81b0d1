"""Atomic small-file writes (temp file in the same folder + ``os.replace``) and numbered backups."""

from __future__ import annotations

import os
import shutil
import tempfile

NEW_FILE_MODE = 0o644
BACKUP_SUFFIX = ".bak"
MAX_BACKUPS = 1000


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` so that readers see the old or the new file, never a partial one.

    ``durable`` also fsyncs the data before the rename. Raises OSError (permission, read-only folder...).
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else NEW_FILE_MODE
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def backup_file(path: str | os.PathLike) -> str:
    """Copy ``path`` to ``path.bak`` (or ``path.bak1``, ``path.bak2``... if taken); return the backup path."""
    path = os.fspath(path)
    for index in range(MAX_BACKUPS):
        candidate = f"{path}{BACKUP_SUFFIX}{index or ''}"
        if not os.path.exists(candidate):
            shutil.copy2(path, candidate)
            return candidate
    raise OSError(f"{path}: too many backups ({MAX_BACKUPS}); remove old {BACKUP_SUFFIX} files")


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
