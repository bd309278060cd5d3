"""Progress of a copy: colour on a terminal, plain lines elsewhere (CI logs).

Engines call `progress(event, info)`: "start" and "done" per image (info: source, target,
and on done the CopyResult fields: status, error, note, bytes_moved), "blob" per blob.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from manifests_rewriter.files import printable

from .engine import Progress
from .report import human_size

_STYLE = {"copied": "green", "present": "dim", "failed": "red", "planned": "yellow"}


def make_progress(is_terminal: bool) -> Progress:
    """One line per finished image; coloured with rich on a terminal."""
    lock = threading.Lock()
    console = None
    if is_terminal:
        from rich.console import Console

        console = Console(stderr=True, highlight=False)

    def emit(event: str, info: dict[str, Any]) -> None:
        if event != "done":
            return
        status = str(info.get("status", ""))
        # not "status:" - the final summary owns the one "failed: ..." line per image
        line = f"{status:>8} {info.get('source', '')} -> {info.get('target', '')}"
        if info.get("bytes_moved"):
            line += f" ({human_size(int(info['bytes_moved']))})"
        if info.get("error"):
            line += f": {info['error']}"
        line = printable(line)  # registry error text is remote input
        with lock:
            if console is not None:
                console.print(line, style=_STYLE.get(status), markup=False)
            else:
                print(line, file=sys.stderr, flush=True)

    return emit
