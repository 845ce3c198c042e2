"""Writing files safely: the one atomic-write helper every writer of this package uses.

A file is written to a temporary file in its own folder and renamed over the target when complete,
so a crash, a full disk or a Ctrl-C never leaves a partial file, and two processes writing the same
file (a pool cache shared by two chapters) each rename a complete file of their own. Temporary names
are short (at most about 50 bytes, whatever the target's name) and unique per call, and files get the
mode the umask gives (0o666 & ~umask), as any other program's files would.

Every `OSError` while writing becomes an `OutputError` naming the file the user asked for and the
reason ("cannot write OUT/p1.png: No space left on device").
"""
from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import OutputError

TEMP_SUFFIX = ".tmp"
_PREFIX_BYTES = 32  # bytes of the target's name kept in its temporary name (readable, never too long)


def describe_os_error(exc: OSError) -> str:
    """The reason of an OSError without its errno number and file names: "No space left on device"."""
    return exc.strerror or str(exc) or type(exc).__name__


def output_error(path: str | os.PathLike, exc: OSError) -> OutputError:
    """``OutputError("cannot write PATH: reason")`` for an OSError met while writing ``path``."""
    reason = describe_os_error(exc)
    culprit = exc.filename if isinstance(exc.filename, str) else None
    if culprit and Path(culprit) != Path(path) and not Path(culprit).name.endswith(TEMP_SUFFIX):
        reason = f"{reason} ({culprit})"
    return OutputError(f"cannot write {path}: {reason}")


def _blocking_ancestor(folder: Path) -> Path | None:
    """The nearest existing ancestor of ``folder`` (itself included) when it is not a folder."""
    for candidate in (folder, *folder.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def make_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and its parents); `OutputError` when a file is in the way or it cannot be made."""
    folder = Path(folder)
    blocking = _blocking_ancestor(folder)
    if blocking is not None:
        what = "it is" if blocking == folder else f"{blocking} is"
        kind = "a file, not a folder" if blocking.is_file() else "not a folder"
        raise OutputError(f"cannot write {folder}: {what} {kind}")
    if not folder.is_dir():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(folder, exc) from exc
    return folder


def _temp_name(target: Path) -> str:
    prefix = ""
    for char in target.name:  # whole characters only, at most _PREFIX_BYTES in the file system's encoding
        if len(os.fsencode(prefix + char)) > _PREFIX_BYTES:
            break
        prefix += char
    return f".{prefix}.{secrets.token_hex(6)}{TEMP_SUFFIX}"


def _create_temp(target: Path) -> tuple[int, Path]:
    """A new, uniquely named file beside ``target`` (mode 0o666 less the umask), opened for writing."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = target.with_name(_temp_name(target))
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(target.parent))


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(binary file)``, atomically (see the module docstring).

    The folder is created if needed. On any error the temporary file is removed and ``path`` is
    left as it was; OSErrors are raised as `OutputError`.
    """
    path = Path(path)
    make_folder(path.parent)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: a folder of that name is in the way")
    try:
        fd, tmp = _create_temp(path)
    except OSError as exc:
        raise output_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())  # a full disk shows here at the latest, not after the rename
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise output_error(path, exc) from exc
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def save_image_atomic(image, path: str | os.PathLike, format: str = "PNG") -> None:  # noqa: A002 (PIL's name)
    """Save a PIL image atomically (PNG by default)."""
    atomic_write(path, lambda fh: image.save(fh, format=format))


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove a file can be written there, before any long work starts.

    Raises `OutputError` ("cannot write FOLDER: reason") when a file is in the way, the file system
    is read-only, the permissions forbid it, ...
    """
    folder = make_folder(folder)
    probe = folder / ".colorflow-write-test"
    try:
        fd, tmp = _create_temp(probe)
    except OSError as exc:
        raise output_error(folder, exc) from exc
    try:
        os.close(fd)
    finally:
        tmp.unlink(missing_ok=True)
    return folder
