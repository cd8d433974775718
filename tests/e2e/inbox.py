"""Helpers for end-to-end tests through the inbox folder."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bayroute.config import load_settings
from bayroute.local.folder import InboxFolder

SETTINGS = load_settings(env={})


def drop(folder: InboxFolder, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        partial = folder.inbox / f".{name}.part"
        partial.write_bytes(content)
        partial.replace(folder.inbox / name)


def wait_for_outcomes(folder: InboxFolder, names: set[str], timeout: float = 90.0) -> dict[str, dict[str, Any]]:
    """The sidecar of every named file; fails if any is missing after ``timeout`` or lands twice."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sidecars = {
            path.name[: -len(".json")]: path
            for out in (folder.routed, folder.dead_letter)
            for path in out.glob("*.json")
        }
        if names <= sidecars.keys():
            break
        time.sleep(0.2)
    outcomes = {}
    for name in names:
        found = [out / f"{name}.json" for out in (folder.routed, folder.dead_letter) if (out / f"{name}.json").exists()]
        assert len(found) == 1, f"{name}: expected exactly one terminal record, found {found}"
        outcomes[name] = json.loads(found[0].read_text(encoding="utf-8"))
        assert not (folder.inbox / name).exists(), f"{name} is terminal but still in the inbox"
        assert (found[0].parent / name).exists(), f"{name} was not moved beside its sidecar"
    return outcomes


def real_images(dataset: Path, per_class: int) -> dict[str, tuple[str, bytes]]:
    picked = {}
    for label in ("bicycle", "motorcycle"):
        for path in sorted((dataset / "train" / label).glob("*.png"))[:per_class]:
            picked[f"{label}-{path.name}"] = (label, path.read_bytes())
    return picked
