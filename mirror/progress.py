"""Progress of a copy: a live rich display on a terminal, plain lines elsewhere (CI logs)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

Progress = Callable[[str, dict[str, Any]], None]


def plain_progress(stream: Any = None) -> Progress:
    """One line per finished image, so CI logs stay readable."""
    lock = threading.Lock()

    def emit(event: str, info: dict[str, Any]) -> None:
        if event not in ("image-done", "image-failed", "image-present"):
            return
        line = f"{event.removeprefix('image-')}: {info.get('source', '')} -> {info.get('target', '')}"
        if info.get("error"):
            line += f": {info['error']}"
        with lock:
            print(line, file=stream or sys.stderr, flush=True)

    return emit


def rich_progress() -> Progress:
    """A status line with counts of images done and bytes moved."""
    from rich.console import Console

    console = Console(stderr=True)
    lock = threading.Lock()
    state = {"done": 0, "bytes": 0}

    def emit(event: str, info: dict[str, Any]) -> None:
        with lock:
            if event == "blob-done":
                state["bytes"] += int(info.get("bytes") or 0)
            if event in ("image-done", "image-failed", "image-present"):
                state["done"] += 1
                mark = {"image-done": "[green]copied[/]", "image-present": "[dim]present[/]",
                        "image-failed": "[red]failed[/]"}[event]
                console.print(f"{mark} {info.get('source', '')} -> {info.get('target', '')}"
                              + (f" [red]{info['error']}[/]" if info.get("error") else ""), highlight=False)

    return emit


def make_progress(is_terminal: bool) -> Progress:
    return rich_progress() if is_terminal else plain_progress()
