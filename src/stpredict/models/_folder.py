"""Writing a folder all at once: a lock next to it, a temporary sibling, one rename into place.

A reader therefore sees either the old folder or the new one, never a mix, and two writers of the
same folder cannot both succeed: the second finds the lock (or, without ``overwrite``, the
folder the first one wrote) and is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["file_sha256", "replace_folder"]


def file_sha256(path: Path, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


@contextlib.contextmanager
def _lock(target: Path, what: str) -> Iterator[None]:
    """Hold ``<target>.lock`` (created exclusively; a lock left by a dead process is taken over)."""
    lock = target.with_name(target.name + ".lock")
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _pid_alive(pid):
                raise FileExistsError(
                    f"{what}: {str(target)!r} is being written by another process (pid {pid}, lock file "
                    f"{str(lock)!r}); wait for it, or delete the lock file if that process is gone."
                ) from None
            lock.unlink(missing_ok=True)  # stale: its writer died
    else:  # pragma: no cover - lost a race twice
        raise FileExistsError(f"{what}: could not take the lock {str(lock)!r}.")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_folder(
    target: Path, write: Callable[[Path], None], *, may_replace: Callable[[Path], bool], what: str
) -> Path:
    """Create or replace the folder ``target`` with what ``write(tmp_folder)`` puts in a temporary one.

    Parameters
    ----------
    target
        The folder to create.
    write
        Fills the (empty) temporary folder it is given.
    may_replace
        Called, under the lock, with an existing non-empty ``target``: whether it may be replaced.
        When it says no, :class:`FileExistsError` is raised and nothing changes.
    what
        Who is writing (for error messages).

    Returns
    -------
    ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target, what):
        if target.exists() and not target.is_dir():
            raise FileExistsError(f"{what}: {str(target)!r} exists and is not a folder.")
        existing = target.is_dir() and any(target.iterdir())
        if existing and not may_replace(target):
            raise FileExistsError(f"{what}: {str(target)!r} exists and may not be replaced (see above).")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            write(tmp)
            mask = _umask()  # modes as plain open() / mkdir() would give (mkdtemp makes 0700)
            for file in tmp.iterdir():
                file.chmod(0o666 & ~mask)
            tmp.chmod(0o777 & ~mask)
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
                old.rmdir()
                target.rename(old)
                tmp.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target
