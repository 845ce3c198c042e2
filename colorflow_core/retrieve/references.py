"""One colour reference of the reference pool: where its pixels come from (`ReferenceSource`: its file, or
the image itself), how it is fitted to the page size and digested, and its 5 patches (the whole fitted
reference + 4 overlapping crops, `reference_patch_boxes`).

Its own module because both the pool (which embeds and cuts patches) and the canvas (which crops query
pages the same way) need this geometry, and none of it is about embedding or the cache.
"""
from __future__ import annotations

import hashlib
import os
import weakref
from pathlib import Path
from typing import Callable, Sequence, TypeVar, Union

from PIL import Image

from ..errors import InputError
from ..images import image_source, load_image, process_image
from ..sizes import PageSize

QUERY_PATCH_KINDS = ("top-left", "top-right", "bottom-left", "bottom-right")
REFERENCE_PATCH_KINDS = ("whole",) + QUERY_PATCH_KINDS
PATCHES_PER_REFERENCE = len(REFERENCE_PATCH_KINDS)

Reference = Union[Image.Image, str, "os.PathLike[str]"]
T = TypeVar("T")


def reference_patch_boxes(size: PageSize) -> list[tuple[int, int, int, int]]:
    """The 5 patch boxes (left, top, right, bottom) in a reference fitted to W x H, in
    `REFERENCE_PATCH_KINDS` order: the whole, then the 4 crops."""
    return [(0, 0, size.width, size.height)] + size.crop_boxes


def crop_patches(image: Image.Image, size: PageSize) -> list[Image.Image]:
    """The 4 overlapping crops (W//4*3 x H//4*3, stride W//4, H//4) of a W x H image, row-major."""
    return [image.crop(box) for box in size.crop_boxes]


def reference_patches(reference: Image.Image, size: PageSize) -> list[Image.Image]:
    """A reference fitted to W x H (`process_image`, so small ones are upscaled) → whole + 4 crops."""
    fitted = process_image(reference, size.width, size.height)
    return [fitted] + crop_patches(fitted, size)


def labelled(fit: Callable[..., T], *args: object, label: str) -> T:
    """Run a fitting step; an InputError says which of several images it was about."""
    try:
        return fit(*args)
    except InputError as exc:
        raise InputError(f"{label}: {exc}") from exc


def fitted_digest(fitted: Image.Image) -> str:
    """sha256 of one fitted reference's pixels (checked when the reference is read again)."""
    digest = hashlib.sha256(f"{fitted.mode}|{fitted.size}|".encode())
    digest.update(fitted.tobytes())
    return digest.hexdigest()

class ReferenceSource:
    """Where one reference's pixels come from when a patch is cut again.

    A file path (given as a path, or the file `load_image` read the image from) is read again; an
    image read from a file is used directly for as long as its caller still holds it (a weak
    reference), so a pool never keeps decoded files alive. An image made in memory is kept.
    ``prefitted``: the image already is the fitted W x H reference.
    """

    __slots__ = ("from_path", "image", "number", "path", "prefitted", "weak")

    def __init__(self, reference: Reference, number: int, prefitted: bool = False) -> None:
        self.number = number
        self.prefitted = prefitted
        self.image: Image.Image | None = None
        self.weak: weakref.ref | None = None
        self.from_path = not isinstance(reference, Image.Image)
        if isinstance(reference, Image.Image):
            source = image_source(reference)
            self.path = Path(source) if source and not prefitted else None
            if self.path is None:
                self.image = reference
            else:
                self.weak = weakref.ref(reference)
        elif isinstance(reference, (str, os.PathLike)):
            self.path = Path(reference)
        else:
            raise InputError(f"colour reference {number}: expected an image or an image file path, "
                             f"got {type(reference).__name__}")

    def __getstate__(self) -> dict[str, object]:  # pickling / deepcopy: a weak reference is dropped (re-read)
        return {name: getattr(self, name) for name in self.__slots__ if name != "weak"}

    def __setstate__(self, state: dict[str, object]) -> None:
        for name in self.__slots__:
            setattr(self, name, state.get(name))

    @property
    def label(self) -> str:
        return f"colour reference {self.number}" + (f" ({self.path})" if self.path is not None else "")

    def open(self) -> Image.Image:
        """The reference image: held in memory, or read from its file."""
        if self.image is not None:
            return self.image
        held = self.weak() if self.weak is not None else None
        if held is not None:
            return held
        assert self.path is not None
        try:
            return load_image(self.path)
        except InputError as exc:
            raise InputError(f"colour reference {self.number}: {exc}") from exc

    def fit(self, size: PageSize) -> Image.Image:
        """The reference fitted to W x H (`process_image`), as it is embedded."""
        image = self.open()
        if self.prefitted:
            return image
        return labelled(process_image, image, size.width, size.height, label=self.label)


def reference_sources(references: Sequence[Reference]) -> list[ReferenceSource]:
    if not references:
        raise InputError("the reference pool is empty: give at least one colour reference image")
    return [ReferenceSource(ref, i + 1) for i, ref in enumerate(references)]
