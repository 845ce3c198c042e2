"""Predicted and ground-truth pages paired by file stem (``p3.png`` <-> ``p3.jpg``); every mismatch named.

Nothing is dropped silently: a prediction without ground truth, ground truth without prediction, two
files of one stem in a folder, an unreadable file and a size mismatch each become a `Problem` that the
command prints and writes to its JSON. A size mismatch refuses that pair only (the others are still
evaluated) unless ``resize_to_gt`` is set, which resizes the prediction to the ground truth's size with
bicubic resampling (ColorFlow's outputs are 1.5 times the page size, ground truth may be any size).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import InputError
from ..images import list_image_files, load_image, natural_sort_key, normalize_mode

RESIZE_OPTION = "--resize-to-gt"


@dataclass(frozen=True)
class Problem:
    """One page (or file) left out of some or all metrics, and why."""

    page: str  # the stem, or the file name where the stem is ambiguous
    kind: str  # no-ground-truth | no-prediction | duplicate-stem | unreadable | size-mismatch | resized
    message: str

    def to_json(self) -> dict[str, str]:
        return {"page": self.page, "kind": self.kind, "message": self.message}


@dataclass
class Pairing:
    """Page files of both folders matched by stem, natural order."""

    pairs: list[tuple[str, Path, Path]] = field(default_factory=list)  # (stem, prediction, ground truth)
    predictions: dict[str, Path] = field(default_factory=dict)  # every unambiguous prediction by stem
    problems: list[Problem] = field(default_factory=list)


@dataclass
class LoadedPair:
    stem: str
    prediction: Image.Image  # RGB, the ground truth's size
    ground_truth: Image.Image  # RGB


def _by_stem(folder: Path, what: str, problems: list[Problem]) -> dict[str, Path]:
    files = list_image_files(folder)  # InputError when missing or empty
    groups: dict[str, list[Path]] = {}
    for path in files:
        groups.setdefault(path.stem, []).append(path)
    found = {}
    for stem, paths in groups.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            problems.append(Problem(stem, "duplicate-stem", f"{stem}: {len(paths)} {what} files share this name "
                                                            f"({names} in {folder}); which one to use is ambiguous, "
                                                            f"so the page is left out"))
        else:
            found[stem] = paths[0]
    return found


def pair_pages(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike) -> Pairing:
    """Pair the image files directly inside both folders by stem.

    Raises InputError when a folder is missing or holds no images, or when no stem is in both.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for name, folder in (("PRED_DIR", pred_dir), ("GT_DIR", gt_dir)):
        if not folder.is_dir():
            raise InputError(f"{name} {folder}: folder not found")
    result = Pairing()
    predictions = _by_stem(pred_dir, "prediction", result.problems)
    truths = _by_stem(gt_dir, "ground-truth", result.problems)
    result.predictions = predictions
    ambiguous = {p.page for p in result.problems}  # already named: no second "missing" problem for them
    for stem in sorted(set(predictions) | set(truths), key=lambda s: natural_sort_key(Path(s))):
        if stem in ambiguous:
            continue
        if stem in predictions and stem in truths:
            result.pairs.append((stem, predictions[stem], truths[stem]))
        elif stem in predictions:
            result.problems.append(Problem(stem, "no-ground-truth", f"{stem}: prediction {predictions[stem].name} "
                                                                    f"has no ground truth named {stem}.* in {gt_dir}"))
        else:
            result.problems.append(Problem(stem, "no-prediction", f"{stem}: ground truth {truths[stem].name} has no "
                                                                  f"prediction named {stem}.* in {pred_dir}"))
    if not result.pairs:
        raise InputError(f"no page of {pred_dir} has a ground truth of the same name in {gt_dir} "
                         f"(predictions: {_few(predictions)}; ground truth: {_few(truths)})")
    return result


def _few(stems: dict[str, Path], shown: int = 5) -> str:
    names = sorted(stems, key=lambda s: natural_sort_key(Path(s)))
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return (", ".join(names[:shown]) + more) if names else "none"


def read_rgb(path: Path) -> Image.Image:
    """An image file as 8-bit RGB (`images.load_image` + `normalize_mode`); InputError naming the file."""
    return normalize_mode(load_image(path)).convert("RGB")


def load_pairs(pairing: Pairing, resize_to_gt: bool = False) -> tuple[list[LoadedPair], list[Problem]]:
    """Read every pair; an unreadable file or a size mismatch leaves out that pair, named in the problems.

    With ``resize_to_gt`` a prediction of another size is resized to the ground truth's (bicubic),
    which is reported too (kind "resized"), so a reader knows the metrics saw a resampled image.
    """
    loaded, problems = [], []
    for stem, pred_path, gt_path in pairing.pairs:
        images = []
        for path, what in ((pred_path, "prediction"), (gt_path, "ground truth")):
            try:
                images.append(read_rgb(path))
            except InputError as exc:
                problems.append(Problem(stem, "unreadable", f"{stem}: {what} cannot be read, page left out: {exc}"))
        if len(images) < 2:
            continue
        pred, gt = images
        if pred.size != gt.size:
            sizes = f"prediction {pred_path.name} is {pred.width}x{pred.height}, ground truth {gt_path.name} is " \
                    f"{gt.width}x{gt.height}"
            if not resize_to_gt:
                problems.append(Problem(stem, "size-mismatch", f"{stem}: {sizes}; page left out of PSNR, SSIM, FID "
                                                               f"and CLIP-IS (pass {RESIZE_OPTION} to resize "
                                                               f"predictions to the ground truth's size, bicubic)"))
                continue
            problems.append(Problem(stem, "resized", f"{stem}: {sizes}; prediction resized to "
                                                     f"{gt.width}x{gt.height} (bicubic, {RESIZE_OPTION})"))
            pred = pred.resize(gt.size, Image.Resampling.BICUBIC)
        loaded.append(LoadedPair(stem, pred, gt))
    return loaded, problems
