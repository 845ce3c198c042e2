"""Messages in the words of the node: the widget names a user sees, not the engine's setting names."""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator, Mapping

from colorflow_core.errors import InputError


def in_widget_terms(message: str, node: str, renames: Mapping[str, str] = {}) -> str:
    """``message`` with each engine setting name in ``renames`` replaced by its widget name, and
    prefixed with the node's name."""
    for internal, widget in renames.items():
        message = re.sub(rf"\b{re.escape(internal)}\b", widget, message)
    return message if message.startswith(f"{node}:") else f"{node}: {message}"


@contextmanager
def widget_errors(node: str, renames: Mapping[str, str] = {}) -> Iterator[None]:
    """Re-raise an InputError from the block in the node's terms (`in_widget_terms`)."""
    try:
        yield
    except InputError as exc:
        raise InputError(in_widget_terms(str(exc), node, renames)) from exc
