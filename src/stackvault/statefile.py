"""Small state files (task records, tokens, schedule state, reports, progress): written whole
and swapped in with a rename, so a reader sees the old content or the new, never half."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


def replace_text(path: str | os.PathLike[str], text: str, mode: int = 0o644) -> None:
    """Write ``text`` to a temporary file beside ``path`` (created with ``mode``), then
    rename it over ``path``. The temporary name is unique per process and thread."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def replace_json(path: str | os.PathLike[str], doc: Any, *, mode: int = 0o644,
                 indent: int | None = None) -> None:
    """`replace_text` with ``doc`` as JSON (non-JSON values as their str)."""
    replace_text(path, json.dumps(doc, indent=indent, default=str) + "\n", mode)
