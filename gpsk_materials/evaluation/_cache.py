"""Append-only JSON-lines caches that let an interrupted evaluation resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def content_key(*parts: object) -> str:
    """SHA-1 of the JSON of ``parts`` (structures as ``as_dict()``), the key of a cache record."""
    blob = json.dumps([p.as_dict() if hasattr(p, "as_dict") else p for p in parts], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


def read_cache(path: str | Path | None) -> dict[str, dict]:
    """Records of a cache file by key; a last line cut short by an interrupted run is skipped."""
    if path is None or not Path(path).exists():
        return {}
    out = {}
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[rec["key"]] = rec
    return out


class CacheWriter:
    """Context manager appending records to a cache file (does nothing when the path is None)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = path
        self.handle = None

    def __enter__(self) -> CacheWriter:
        if self.path is not None:
            self.handle = open(self.path, "a")  # noqa: SIM115 - closed in __exit__
        return self

    def write(self, key: str, **record: object) -> None:
        """Append one record and flush, so that it survives an interruption."""
        if self.handle is not None:
            self.handle.write(json.dumps({"key": key, **record}) + "\n")
            self.handle.flush()

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()
