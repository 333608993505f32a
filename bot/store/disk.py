"""What a failed write says about the disk: the refusal raised, the errors that are the disk's, and its reasons."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path


class StoreUnwritable(sqlite3.OperationalError):
    """The store cannot take a write now (disk full, read-only, I/O error): the action asking is refused whole."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"cannot write the store {path}: {reason}")
        self.path, self.reason = str(path), reason


# What a failed write says about the disk rather than about the statement (a constraint, a typo).
STORAGE_ERRORS = ("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_BUSY", "SQLITE_LOCKED",
                  "SQLITE_PERM", "SQLITE_NOMEM", "SQLITE_PROTOCOL")


def storage_error(exc: BaseException) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return isinstance(exc, sqlite3.OperationalError) and name.startswith(STORAGE_ERRORS)


def fs_problem(directory: Path, min_free_bytes: int) -> str | None:
    """Why the file system holding `directory` would refuse a commit (its flags, its free space), or None."""
    try:
        st = os.statvfs(directory)
    except OSError as exc:
        return f"cannot read its file system: {exc.strerror}"
    if st.f_flag & os.ST_RDONLY:
        return "read-only file system"
    free = st.f_bavail * st.f_frsize
    if free < min_free_bytes:
        return f"disk full ({free // 1024} KiB free)"
    return None


def failure_reason(exc: sqlite3.Error, path: Path | None) -> str:
    """What a person can act on when SQLite refused a write to the file at `path` (None: in memory): the file
    system's own words where SQLite only says "disk I/O error"."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name == "SQLITE_FULL":
        return "disk full"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return "locked by another process"
    if name.startswith(("SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")) and path is not None:
        # An emergency read-only remount (ext4 errors=remount-ro) shows in no flag: try the directory.
        probe = path.parent / f".{path.name}.probe"
        try:
            with open(probe, "wb") as f:
                f.write(b"x")
                os.fsync(f.fileno())
        except OSError as os_exc:
            return (os_exc.strerror or str(os_exc)).lower()
        finally:
            with contextlib.suppress(OSError):
                probe.unlink(missing_ok=True)
    return f"{exc} ({name})" if name else str(exc)
