"""Pinning or excluding references per page (the CLI's ``--refs-map MAP.json``, Retrieve References'
``pinned_references``): which pool references each named page may retrieve from.

The map is a JSON object, page → references::

    {"p3": ["hero_sheet.png", "cover.jpg"],      pin: only these are candidates for p3
     "p9": {"exclude": ["villain*"]},            every reference except these
     "p12": {"only": ["hero*"], "exclude": ["hero_old.png"]}}

- keys: page names (file stems); with ``page_numbers`` (the node) also page numbers from 1;
- references: file names or globs (`fnmatch`, case-sensitive, matched against the name and the name
  without its extension), or integers: the reference's number in the pool from 1 (as the "r<n>"
  labels of the retrieval sheet show);
- pages the map does not name use the whole pool.

`resolve_refs_map` turns it into one entry per page: the set of allowed reference indices (from 0),
or None for the whole pool — what `canvas.retrieve_many(allowed=...)` takes to mask the similarity
matrix (the pool is never embedded again). Every mistake is one `InputError` naming the map's
``source`` (e.g. ``--refs-map chapter.json``): bad JSON or shape, a page that is not in the chapter,
a name that matches no reference, a page left with fewer candidate patches than top_k (an error:
top_k is never lowered silently).

Pure Python: no torch.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePath
from typing import Any, Mapping, Sequence

from ..errors import InputError

PATCHES_PER_REFERENCE = 5  # references.PATCHES_PER_REFERENCE (whole + 4 crops), without importing torch
_LIST_MAX = 10  # names shown in a message before "..."
EXAMPLE = '{"p3": ["hero_sheet.png", "cover.jpg"], "p9": {"exclude": ["villain*"]}}'

Pattern = str | int


@dataclass(frozen=True)
class PageRule:
    """One page's restriction: ``only`` (None: the whole pool) minus ``exclude``."""

    only: tuple[Pattern, ...] | None = None
    exclude: tuple[Pattern, ...] = ()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _Duplicate(key)
        seen[key] = value
    return seen


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def parse_refs_map_text(text: str, source: str) -> dict[str, PageRule]:
    """A map from its JSON text (empty or blank: no restriction)."""
    if not text.strip():
        return {}
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except _Duplicate as exc:
        raise InputError(f"{source}: page {exc.key!r} is given twice") from None
    except ValueError as exc:
        detail = f"{exc.msg} at line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) \
            else str(exc)
        raise InputError(f"{source}: not valid JSON ({detail})") from None
    return parse_refs_map(data, source)


def read_refs_map(path: str | os.PathLike, source: str | None = None) -> dict[str, PageRule]:
    """A map from a JSON file; ``source`` names it in messages (default: the path)."""
    source = source or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{source}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{source}: cannot be read: {exc}") from None
    return parse_refs_map_text(text, source)


def parse_refs_map(data: Any, source: str) -> dict[str, PageRule]:
    """Check the shape of a parsed map: {page: [refs] | {"only": [refs], "exclude": [refs]}}."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a JSON object mapping pages to references, e.g. {EXAMPLE}")
    rules = {}
    for key, value in data.items():
        where = f"{source}: page {key!r}"
        if isinstance(value, list):
            rules[key] = PageRule(only=_patterns(value, where))
        elif isinstance(value, dict):
            unknown = sorted(set(value) - {"only", "exclude"})
            if unknown or not value:
                raise InputError(f'{where}: expected the keys "only" and/or "exclude", got '
                                 f'{", ".join(map(repr, unknown)) or "an empty object"}')
            for name in value:
                if not isinstance(value[name], list):
                    raise InputError(f"{where}: {name!r} must be a list of reference names, got "
                                     f"{_short(value[name])}")
            only = _patterns(value["only"], where) if "only" in value else None
            exclude = _patterns(value["exclude"], where, allow_empty=True) if "exclude" in value else ()
            rules[key] = PageRule(only=only, exclude=exclude)
        else:
            raise InputError(f'{where}: expected a list of reference names (or {{"exclude": [...]}}), got '
                             f"{_short(value)}")
    return rules


def _patterns(values: list, where: str, allow_empty: bool = False) -> tuple[Pattern, ...]:
    if not values and not allow_empty:
        raise InputError(f"{where}: an empty list pins no reference; leave the page out of the map to use the "
                         f"whole pool")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value):
            raise InputError(f"{where}: {_short(value)} is not a reference name, glob or number")
    return tuple(values)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LIST_MAX])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _LIST_MAX else "")


def _matches(pattern: Pattern, names: Sequence[str | None]) -> set[int]:
    if isinstance(pattern, int):
        return {pattern - 1} if 1 <= pattern <= len(names) else set()
    return {i for i, name in enumerate(names)
            if name is not None and (fnmatchcase(name, pattern) or fnmatchcase(PurePath(name).stem, pattern))}


def _resolve_patterns(patterns: Sequence[Pattern], names: Sequence[str | None], where: str) -> set[int]:
    found: set[int] = set()
    for pattern in patterns:
        hits = _matches(pattern, names)
        if not hits:
            if isinstance(pattern, int):
                raise InputError(f"{where}: reference number {pattern} is not in the pool (1..{len(names)})")
            named = [n for n in names if n is not None]
            known = f"the references: {_listing(named)}" if named else \
                f"the pool's references have no file names: use their numbers 1..{len(names)}"
            raise InputError(f"{where}: {pattern!r} matches no reference ({known})")
        found |= hits
    return found


def resolve_refs_map(rules: Mapping[str, PageRule], pages: Sequence[str], references: Sequence[str | None], *,
                     source: str, top_k: int, page_numbers: bool = False,
                     patches_per_reference: int = PATCHES_PER_REFERENCE) -> list[frozenset[int] | None]:
    """One entry per page of ``pages``: the allowed reference indices (from 0), or None (whole pool).

    ``references[i]``: the file name of pool reference i (None: unnamed, reachable by number only).
    ``page_numbers``: keys may also be page numbers from 1 (a page's name wins over its number).
    """
    index = {name: k for k, name in enumerate(pages)}
    allowed: list[frozenset[int] | None] = [None] * len(pages)
    keys: dict[int, str] = {}
    for key, rule in rules.items():
        k = index.get(key)
        if k is None and page_numbers and key.strip().isdigit() and 1 <= int(key) <= len(pages):
            k = int(key) - 1
        if k is None:
            numbers = f"1..{len(pages)} or " if page_numbers else ""
            raise InputError(f"{source}: {key!r} is not a page of the chapter (its pages: {numbers}"
                             f"{_listing(list(pages))})")
        if k in keys:
            raise InputError(f"{source}: {keys[k]!r} and {key!r} name the same page")
        keys[k] = key
        where = f"{source}: page {key!r}"
        chosen = set(range(len(references))) if rule.only is None else \
            _resolve_patterns(rule.only, references, where)
        chosen -= _resolve_patterns(rule.exclude, references, where)
        candidates = len(chosen) * patches_per_reference
        if candidates < top_k:
            raise InputError(f"{where} is left with {len(chosen)} reference(s), {candidates} candidate patches, "
                             f"fewer than top_k = {top_k}: that is an error, top_k is not lowered; pin more "
                             f"references or exclude fewer")
        allowed[k] = frozenset(chosen)
    return allowed
