"""Progress reporting: a callback that receives event dicts; the default does nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Progress = Callable[[dict[str, Any]], None]


def no_progress(_event: dict[str, Any]) -> None:
    """The default progress callback: ignore every event."""
    return None
