"""One owner per data directory: an exclusive `flock` on `DATA_DIR/genqueue.lock`.

Two queues on one directory would each recover the other's jobs in flight and run them
twice (with Veo, two paid videos per job). `JobQueue.open()` takes this lock before it
reads anything and holds it until `close()`; the kernel drops it when the process ends,
however it ends (kill -9 included), so a stale lock file never blocks a restart.

`flock` locks belong to an open file description, so a second `JobQueue` in the same
process is refused just like another process. The holder writes its pid into the file
(after locking it), so the refusal can name it. The folder is created 0700 and the lock
file 0600 (see `private_dir` and `private_file`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
from pathlib import Path

from genqueue.errors import DataDirInUse, StorageError

__all__ = ["LOCK_FILE", "DataDirLock", "private_dir", "private_file"]

log = logging.getLogger("genqueue.storage")

LOCK_FILE = "genqueue.lock"


def private_dir(path: Path) -> None:
    """Create `path` (and its parents) with mode 0700 if missing. An existing folder keeps
    its mode (it may be shared on purpose), with a warning if others can enter it."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning(
                "the data directory is open to other users (mode %o); 0700 is advised",
                stat.S_IMODE(mode),
                extra={"data_dir": str(path)},
            )
        return
    os.chmod(path, 0o700)  # mkdir's mode is masked by the umask; this is exact


def private_file(path: Path) -> None:
    """Make `path` exist with mode 0600 (created empty if missing; an existing one of ours
    is narrowed to 0600). SQLite gives its -wal and -shm files the database file's mode."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class DataDirLock:
    """The exclusive lock on a data directory, held from `acquire` to `release`."""

    def __init__(self, data_dir: Path, fd: int):
        self.data_dir = data_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: str | Path) -> DataDirLock:
        """Lock `data_dir` (created 0700 if missing) or raise DataDirInUse naming it and,
        when the file says, the holder's pid."""
        folder = Path(data_dir)
        try:
            private_dir(folder)
            fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot use the data directory {folder}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise DataDirInUse(folder, holder) from None
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot lock the data directory {folder}: {exc}") from exc
        with contextlib.suppress(OSError):  # the pid is a courtesy to the next opener
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(folder, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the directory up (closing the file drops the lock). Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)


def _holder(fd: int) -> int | None:
    """The pid the holder wrote, if the file holds one."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
