"""The retrieval record of a page: what fills each cell of its in-context canvas (which reference, which
of its 5 patches, how similar), as a small dataclass and its JSON file ``colorflow-retrieval/1``.

Built from what retrieval already computed (`canvas.RetrievalResult.placements`), never by retrieving
again. The CLI writes one per page as ``OUT/retrieval/<stem>.json``; Retrieve References outputs the
records of its pages as a JSON list. Read by `evaluate` (the consistency score) and the chapter report.

```json
{"format": "colorflow-retrieval/1", "page": "p3", "page_file": "../pages/p3.png", "size": [512, 800],
 "top_k": 3, "best_similarity": 0.91,
 "cells": [{"query_patch": 0, "query_box": [0, 0, 384, 600], "rank": 0, "cell": [1, 0],
            "reference": "hero.png", "reference_index": 2, "patch": "whole", "patch_box": [0, 0, 512, 800],
            "similarity": 0.83}]}
```
- ``size``: [W, H], the page size retrieval worked at; boxes are [left, top, right, bottom] in pixels.
- ``query_box``: the query patch (0..3, row-major crops) in the page fitted to W x H.
- ``reference``: the reference's file name, or null when it has none (an image connected in ComfyUI);
  ``reference_index``: its position in the pool (from 0), always.
- ``patch``: ``"whole"`` (the reference fitted to W x H by `images.process_image`) or ``"crop k"``
  (k = 1..4, its row-major overlapping crops); ``patch_box``: that patch in the fitted reference.
- ``rank``: 0 = the best pick of that query patch; ``cell``: [row, col] in the 4x4 canvas grid.
- ``best_similarity``: the highest cosine similarity over the cells.

This module needs no torch: readers of the files import it cheaply.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import InputError
from ..sizes import PageSize

if TYPE_CHECKING:
    from .canvas import RetrievalResult

RECORD_FORMAT = "colorflow-retrieval/1"
WHOLE = "whole"
CROPS = 4
SIMILARITY_DECIMALS = 6

Box = tuple[int, int, int, int]


def patch_name(patch: int) -> str:
    """0 → "whole", k (1..4) → "crop k": which of a reference's 5 patches."""
    return WHOLE if patch == 0 else f"crop {patch}"


def patch_number(name: str) -> int:
    """The inverse of `patch_name`; InputError for anything else."""
    if name == WHOLE:
        return 0
    prefix = "crop "
    if name.startswith(prefix) and name[len(prefix):].isdigit() and 1 <= int(name[len(prefix):]) <= CROPS:
        return int(name[len(prefix):])
    raise InputError(f'patch must be "whole" or "crop 1" .. "crop {CROPS}", got {name!r}')


def patch_box(size: PageSize, patch: int) -> Box:
    """Where patch ``patch`` (0 = whole, k = crop k) lies in the reference fitted to W x H."""
    return (0, 0, size.width, size.height) if patch == 0 else size.crop_boxes[patch - 1]


@dataclass(frozen=True)
class CellRecord:
    """One reference patch placed on the canvas."""

    query_patch: int              # 0..3, the page's row-major crop this pick answers
    query_box: Box                # that crop in the W x H page
    rank: int                     # 0 = best
    cell: tuple[int, int]         # (row, col) in the 4x4 canvas grid
    reference: str | None         # file name, None when unnamed
    reference_index: int          # position in the pool, from 0
    patch: str                    # "whole" or "crop k"
    patch_box: Box                # the patch in the reference fitted to W x H
    similarity: float             # cosine similarity of the embeddings

    def to_dict(self) -> dict[str, Any]:
        return {
            "query_patch": self.query_patch, "query_box": list(self.query_box), "rank": self.rank,
            "cell": list(self.cell), "reference": self.reference, "reference_index": self.reference_index,
            "patch": self.patch, "patch_box": list(self.patch_box), "similarity": self.similarity,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "CellRecord":
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected an object, got {type(data).__name__}")
        reference = _field(data, "reference", where)
        if reference is not None and not isinstance(reference, str):
            raise InputError(f"{where}: reference must be a file name or null, got {reference!r}")
        patch = _field(data, "patch", where)
        try:
            patch_number(patch if isinstance(patch, str) else repr(patch))
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
        return cls(
            query_patch=_integer(data, "query_patch", where),
            query_box=_ints(data, "query_box", 4, where),
            rank=_integer(data, "rank", where),
            cell=_ints(data, "cell", 2, where),
            reference=reference,
            reference_index=_integer(data, "reference_index", where),
            patch=patch,
            patch_box=_ints(data, "patch_box", 4, where),
            similarity=_number(data, "similarity", where),
        )


@dataclass(frozen=True)
class RetrievalRecord:
    """What retrieval put in each cell of one page's canvas."""

    page: str                     # the page's name (file stem)
    page_file: str | None         # the page file (CLI: relative to OUT when possible), None when unknown
    size: tuple[int, int]         # (W, H)
    top_k: int
    cells: tuple[CellRecord, ...] = field(default_factory=tuple)

    @property
    def best_similarity(self) -> float | None:
        return max((c.similarity for c in self.cells), default=None)

    @property
    def references(self) -> list[int]:
        """The pool indices of the references used, in order of first use (best picks first)."""
        ordered = sorted(self.cells, key=lambda c: (c.rank, c.query_patch))
        return list(dict.fromkeys(c.reference_index for c in ordered))

    @classmethod
    def from_result(cls, result: "RetrievalResult", page: str, page_file: str | None = None,
                    reference_names: Sequence[str | None] | None = None) -> "RetrievalRecord":
        """The record of a `RetrievalResult`, from its placements (nothing is retrieved again).

        ``reference_names[i]``: the file name of pool reference i (None, or no list: unnamed).
        """
        from .references import REFERENCE_PATCH_KINDS  # torch-free importers of this module never need it

        size = result.size
        queries = size.crop_boxes
        cells = []
        for p in sorted(result.placements, key=lambda p: (p.query_patch, p.rank)):
            patch = REFERENCE_PATCH_KINDS.index(p.patch_kind)
            name = None
            if reference_names is not None and p.reference_index < len(reference_names):
                name = reference_names[p.reference_index]
            cells.append(CellRecord(
                query_patch=p.query_patch,
                query_box=queries[p.query_patch],
                rank=p.rank,
                cell=tuple(p.cell),
                reference=name,
                reference_index=p.reference_index,
                patch=patch_name(patch),
                patch_box=patch_box(size, patch),
                similarity=round(float(p.score), SIMILARITY_DECIMALS),
            ))
        return cls(page=page, page_file=page_file, size=(size.width, size.height),
                   top_k=int(result.top_k_indices.shape[1]), cells=tuple(cells))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT, "page": self.page, "page_file": self.page_file, "size": list(self.size),
            "top_k": self.top_k, "best_similarity": self.best_similarity,
            "cells": [c.to_dict() for c in self.cells],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any, source: str = "retrieval record") -> "RetrievalRecord":
        """The record of a parsed JSON object; InputError naming ``source`` when it is not one."""
        if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
            raise InputError(f"{source} is not a ColorFlow retrieval record (format {RECORD_FORMAT!r})")
        page, page_file = _field(data, "page", source), _field(data, "page_file", source)
        if not isinstance(page, str):
            raise InputError(f"{source}: page must be a string, got {page!r}")
        if page_file is not None and not isinstance(page_file, str):
            raise InputError(f"{source}: page_file must be a string or null, got {page_file!r}")
        cells = _field(data, "cells", source)
        if not isinstance(cells, list):
            raise InputError(f"{source}: cells must be a list")
        return cls(page=page, page_file=page_file, size=_ints(data, "size", 2, source),
                   top_k=_integer(data, "top_k", source),
                   cells=tuple(CellRecord.from_dict(c, f"{source}: cells[{k}]") for k, c in enumerate(cells)))

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "retrieval record") -> "RetrievalRecord":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{source} is not valid JSON: {exc}") from None
        return cls.from_dict(data, source)


def records_to_json(records: Sequence[RetrievalRecord], indent: int | None = None) -> str:
    """Several records as one JSON list (Retrieve References' STRING output)."""
    return json.dumps([r.to_dict() for r in records], indent=indent, allow_nan=False)


def records_from_json(text: str | bytes, source: str = "retrieval records") -> list[RetrievalRecord]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise InputError(f"{source}: expected a JSON list of retrieval records")
    return [RetrievalRecord.from_dict(d, f"{source}[{k}]") for k, d in enumerate(data)]


def _field(data: dict, name: str, where: str) -> Any:
    if name not in data:
        raise InputError(f"{where}: {name!r} is missing")
    return data[name]


def _integer(data: dict, name: str, where: str) -> int:
    value = _field(data, name, where)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"{where}: {name} must be an integer, got {value!r}")
    return value


def _number(data: dict, name: str, where: str) -> float:
    value = _field(data, name, where)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise InputError(f"{where}: {name} must be a finite number, got {value!r}")
    return float(value)


def _ints(data: dict, name: str, length: int, where: str) -> tuple[int, ...]:
    value = _field(data, name, where)
    if (not isinstance(value, list) or len(value) != length
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise InputError(f"{where}: {name} must be a list of {length} integers, got {value!r}")
    return tuple(value)
