"""Where a series' files live: local paths, or URIs (``file://``, ``s3://``, ``gs://``, ...) through fsspec.

A *location* is a plain string: a local path, or ``scheme://...``. Local paths use the CLI's own helpers
(`collect_pages`, `page_done`, `files.save_image_atomic`), so a series chapter and a single-chapter run
treat files identically. A URI goes through ``fsspec.core.url_to_fs`` (object stores need their fsspec
package: ``s3fs``, ``gcsfs``, ``adlfs``); a ``file://`` URI takes that generic path too, which is how the
tests exercise it without an object store.

Writes are atomic on both: a local file is written by `save_image_atomic`; a URI's bytes go to a
temporary name in the same folder (``.<name>.<random>.tmp``, as `files` names them) and are then moved
over the target (a rename on a file system; on an object store the target appears only complete).
A worker killed between the two leaves only such a temporary file, which `sweep_temp_files` removes.
"""
from __future__ import annotations

import io
import os
import posixpath
import re
import secrets
import tempfile
from pathlib import Path
from typing import Callable

from PIL import Image

from ..errors import InputError, OutputError
from ..files import TEMP_SUFFIX, save_image_atomic, write_bytes_atomic

# = images.IMAGE_SUFFIXES (images imports torch: the read / write tasks stay light without it)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_TEMP_FILE = re.compile(r"^\..*\.[0-9a-f]{12}" + re.escape(TEMP_SUFFIX) + r"$")  # files._temp_name's pattern
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
Warn = Callable[[str], None]


def is_uri(location: str) -> bool:
    return bool(_URI.match(str(location)))


def _fs(location: str):
    """(fsspec file system, path inside it) for a URI."""
    try:
        from fsspec.core import url_to_fs
    except ImportError as exc:  # pragma: no cover - fsspec comes with ray[data]
        raise InputError(f"{location}: URIs need fsspec (pip install fsspec)") from exc
    try:
        return url_to_fs(location)
    except (ImportError, ValueError) as exc:
        raise InputError(f"{location}: cannot open this kind of location ({exc}); install its fsspec package "
                         f"(s3fs for s3://, gcsfs for gs://, adlfs for az://)") from exc


def _unstrip(location: str, fs, path: str) -> str:
    """A path fsspec listed, back in the form of ``location`` (scheme and all)."""
    return fs.unstrip_protocol(path) if is_uri(location) else path


def join(location: str, *parts: str) -> str:
    if is_uri(location):
        return posixpath.join(location.rstrip("/"), *parts)
    return str(Path(location, *parts))


def name(location: str) -> str:
    return posixpath.basename(str(location).rstrip("/")) if is_uri(location) else Path(location).name


def stem(location: str) -> str:
    return Path(name(location)).stem


def parent(location: str) -> str:
    return posixpath.dirname(location.rstrip("/")) if is_uri(location) else str(Path(location).parent)


def local_path(location: str) -> Path | None:
    """The local path of ``location``: itself, or a ``file://`` URI's path; None for other URIs."""
    if not is_uri(location):
        return Path(location)
    if location.lower().startswith(("file://", "local://")):
        fs, path = _fs(location)
        return Path(path)
    return None


def is_dir(location: str) -> bool:
    if not is_uri(location):
        return Path(location).is_dir()
    fs, path = _fs(location)
    try:
        return bool(fs.isdir(path))
    except OSError:
        return False


def is_file(location: str) -> bool:
    if not is_uri(location):
        return Path(location).is_file()
    fs, path = _fs(location)
    try:
        return bool(fs.isfile(path))
    except OSError:
        return False


def read_text(location: str) -> str:
    try:
        if not is_uri(location):
            return Path(location).read_text(encoding="utf-8-sig")
        fs, path = _fs(location)
        with fs.open(path, "rb") as fh:
            return fh.read().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {location}: {exc}") from exc


def natural_sort_key(path: Path) -> list[object]:
    from ..images import natural_sort_key as key

    return key(path)


def _is_image_name(file_name: str) -> bool:
    return Path(file_name).suffix.lower() in IMAGE_SUFFIXES and not file_name.startswith(".")


def _listing(location: str) -> list[tuple[str, bool]]:
    """(location, is a file) for each entry of a URI folder."""
    fs, path = _fs(location)
    try:
        entries = fs.ls(path, detail=True)
    except OSError as exc:
        raise InputError(f"cannot list {location}: {exc}") from exc
    return [(_unstrip(location, fs, e["name"]), e.get("type") == "file") for e in entries]


def image_files(location: str, warn: Warn) -> list[str]:
    """The image files directly inside a folder (hidden files and non-images skipped), natural order."""
    if not is_uri(location):
        from ..images import list_image_files

        return [str(p) for p in list_image_files(location, warn=warn)]
    if not is_dir(location):
        raise InputError(f"folder not found: {location}")
    found = [loc for loc, is_file_ in _listing(location) if is_file_ and _is_image_name(name(loc))]
    return sorted(found, key=lambda loc: (natural_sort_key(Path(name(loc))), loc))


def collect_pages(inputs: list[str], warn: Warn) -> list[str]:
    """A chapter's page files from files and folders, as the CLI collects them (natural order, one
    output name per page); URIs are listed through fsspec with the same rules."""
    from .. import chapter as layout

    if not any(map(is_uri, inputs)):
        return [str(p) for p in layout.collect_pages(inputs)]
    pages: list[str] = []
    for item in inputs:
        if is_dir(item):
            entries = _listing(item) if is_uri(item) else [(str(p), p.is_file()) for p in Path(item).iterdir()]
            skipped = sorted(name(loc) for loc, f in entries if f and not _is_image_name(name(loc))
                             and not name(loc).startswith("."))
            if skipped:
                warn(f"skipping {len(skipped)} non-image file(s) in {item}: {', '.join(skipped)}")
            pages += [loc for loc, f in entries if f and _is_image_name(name(loc))]
        elif is_file(item):
            if _is_image_name(name(item)):
                pages.append(item)
            else:
                warn(f"skipping {item}: not an image file")
        else:
            raise InputError(f"page file or folder not found: {item}")
    return layout.in_reading_order(pages, inputs, name)


def read_image(location: str, what: str = "page") -> Image.Image:
    """Decode an image as the stages will (`load_image`, `normalize_mode`, `check_page`): 8-bit RGB or L.
    InputError naming ``location`` when it cannot be used."""
    from ..images import check_page, load_image, normalize_mode

    if not is_uri(location):
        image = normalize_mode(load_image(location))
        check_page(image, f"{what} {location}")
        return image
    fs, path = _fs(location)
    try:
        with fs.open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError(f"cannot read {location}: {exc}") from exc
    # through a local file, so a URI gets exactly load_image's checks (frames, EXIF, size limit)
    with tempfile.TemporaryDirectory(prefix="colorflow-") as folder:
        tmp = Path(folder) / f"image{Path(path).suffix}"
        tmp.write_bytes(data)
        try:
            image = normalize_mode(load_image(tmp)).copy()  # a copy forgets the temporary file (`image_source`)
            check_page(image, f"{what} {location}")
        except InputError as exc:
            raise InputError(str(exc).replace(str(tmp), location)) from None
    return image


def check_reference(location: str) -> None:
    """InputError when a colour reference cannot be used (the CLI's up-front check)."""
    read_image(location, "colour reference")


def pool_reference(location: str):
    """A colour reference as the CLI gives it to `ColorFlow.reference_pool`: a local file by its path
    (the pool cache indexes it and reads it when needed), a URI decoded in memory."""
    return read_image(location, "colour reference") if is_uri(location) else Path(location)


def page_done(location: str) -> bool:
    """The CLI's rule (`chapter.page_done`: a regular, non-empty PNG file), for a URI too."""
    if not is_uri(location):
        from .. import chapter as layout

        return layout.page_done(Path(location))
    fs, path = _fs(location)
    try:
        if not fs.isfile(path):
            return False
        with fs.open(path, "rb") as fh:
            return fh.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False


def write_png(image: Image.Image, location: str) -> None:
    """Write ``image`` as a PNG at ``location``, atomically (see the module docstring)."""
    if not is_uri(location):
        save_image_atomic(image, location)
        return
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes(buffer.getvalue(), location)


def write_bytes(data: bytes, location: str) -> None:
    """Write ``data`` at ``location``, atomically (see the module docstring)."""
    if not is_uri(location):
        write_bytes_atomic(location, data)
        return
    fs, path = _fs(location)
    folder = posixpath.dirname(path)
    tmp = posixpath.join(folder, f".{posixpath.basename(path)[:32]}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
    try:
        fs.makedirs(folder, exist_ok=True)
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
        fs.mv(tmp, path)
    except BaseException as exc:
        try:
            if fs.exists(tmp):
                fs.rm(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {location}: {exc}") from exc
        raise


def check_writable(location: str) -> None:
    """Before any model loads: the folder can be created and written (local paths only; a URI is
    found out at its first write, which fails that page with the reason)."""
    if not is_uri(location):
        from ..files import check_writable_folder

        check_writable_folder(location)
    elif local_path(location) is not None:
        from ..files import check_writable_folder

        check_writable_folder(local_path(location))


def sweep_temp_files(folder: str) -> int:
    """Remove the temporary files a killed writer left in ``folder`` (only names of the atomic writers'
    pattern ``.<name>.<12 hex>.tmp``); returns how many."""
    removed = 0
    if not is_uri(folder):
        path = Path(folder)
        if not path.is_dir():
            return 0
        for entry in path.iterdir():
            if _TEMP_FILE.match(entry.name) and entry.is_file():
                try:
                    entry.unlink()
                    removed += 1
                except OSError:
                    pass
        return removed
    if not is_dir(folder):
        return 0
    fs, _ = _fs(folder)
    for loc, is_file_ in _listing(folder):
        if is_file_ and _TEMP_FILE.match(name(loc)):
            try:
                fs.rm(_fs(loc)[1])
                removed += 1
            except OSError:
                pass
    return removed


def absolute(location: str) -> str:
    """A local path made absolute (workers may run in another folder); URIs as they are."""
    return location if is_uri(location) else os.path.abspath(location)
