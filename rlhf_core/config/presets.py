"""The YAML presets under configs/: where they are and their names (stdlib only: the CLI's --help reads it)."""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_PRESET = "demo"


def preset_names() -> list[str]:
    """The presets under configs/, by name ('demo', 'hh-harmless', 'smoke', ...)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
