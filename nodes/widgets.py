"""Messages in the words of the node: prefixed with the node's name (widgets and engine settings share
their names, `colorflow_core.options`)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from colorflow_core.errors import InputError


def in_widget_terms(message: str, node: str) -> str:
    """``message`` prefixed with the node's name (once)."""
    return message if message.startswith(f"{node}:") else f"{node}: {message}"


@contextmanager
def widget_errors(node: str) -> Iterator[None]:
    """Re-raise an InputError from the block in the node's terms (`in_widget_terms`)."""
    try:
        yield
    except InputError as exc:
        raise InputError(in_widget_terms(str(exc), node)) from exc
