"""The locators by file kind, and how one locator hands a subtree to another.

A new format is a module with `locate_document(walker, index, root)` (and, when other
formats may embed it, `locate_subtree(walker, index, node, cell, ctx)`) and one line where
locate/__init__.py fills LOCATORS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from yaml.nodes import Node

from .document import Walker
from .fields import ImageField


@dataclass(frozen=True)
class Locator:
    document: Callable[[Walker, int, Node], Iterator[ImageField]]
    subtree: Callable[[Walker, int, Node, tuple | None, tuple], Iterator[ImageField]] | None = None


LOCATORS: dict[str, Locator] = {}


def hand_off(kind: str, w: Walker, index: int, node: Node, cell: tuple, ctx: tuple) -> Iterator[ImageField]:
    """The images of `node` (at `cell` in the document) read as `kind`: paths stay the
    document's, the context (kind, namespace, name) the embedding object's."""
    subtree = LOCATORS[kind].subtree
    if subtree is None:
        raise ValueError(f"the {kind} locator reads whole documents only")
    return subtree(w, index, node, cell, ctx)
