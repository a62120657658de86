"""Per-user console preferences: ``$XDG_CONFIG_HOME/embedops/ui.json`` (theme, for now).

A missing or unreadable file means defaults; writing is best effort (a read-only home
must not stop the console).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def prefs_path() -> Path:
    """Where the preferences live (``~/.config/embedops/ui.json`` without XDG_CONFIG_HOME)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "embedops" / "ui.json"


def load_prefs(path: Path | None = None) -> dict[str, Any]:
    """The saved preferences, or ``{}``."""
    try:
        data = json.loads((path or prefs_path()).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_prefs(updates: dict[str, Any], path: Path | None = None) -> bool:
    """Merge `updates` into the saved preferences; return whether they were written."""
    target = path or prefs_path()
    data = load_prefs(target)
    data.update(updates)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, target)
    except OSError:
        return False
    return True
