"""The local cache of lookup answers (PS3.15 H.1.6): served, marked stale, when the
directory cannot be reached; one entry can be dropped, or all of them."""

from __future__ import annotations

import time
from pathlib import Path

from profiles import statefile


class LookupCache:
    def __init__(self, directory: Path):
        self.directory = directory

    def _path(self, title: str) -> Path:
        return self.directory / f"{title.encode().hex()}.json"  # any title, a safe name

    def put(self, answer: dict) -> None:
        statefile.write_json(self._path(answer["aet"]),
                             {"fetched_at": time.time(), "answer": answer})

    def get(self, title: str) -> dict | None:
        record = statefile.read_json(self._path(title))
        if not isinstance(record, dict) or not isinstance(record.get("answer"), dict):
            return None
        return {**record["answer"], "source": "cache", "stale": True,
                "fetched_at": record.get("fetched_at")}

    def drop(self, title: str) -> None:
        self._path(title).unlink(missing_ok=True)

    def purge(self) -> int:
        files = list(self.directory.glob("*.json")) if self.directory.is_dir() else []
        for path in files:
            path.unlink(missing_ok=True)
        return len(files)
