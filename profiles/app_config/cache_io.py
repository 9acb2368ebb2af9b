"""The local cache of lookup answers (PS3.15 H.1.6): served, marked stale, when the
directory cannot be reached; one entry can be dropped, or all of them."""

from __future__ import annotations

import time
from pathlib import Path

from profiles import statefile_io


def cache_record(value: object) -> dict:
    """The shape of a cached lookup answer (ValueError for anything else)."""
    if not isinstance(value, dict) or not isinstance(value.get("answer"), dict):
        raise ValueError("not a cached answer")
    answer = value["answer"]
    if not isinstance(answer.get("aet"), str) or answer.get("found") is not True \
            or not isinstance(answer.get("connections"), list):
        raise ValueError("not a lookup answer")
    for conn in answer["connections"]:
        if not isinstance(conn, dict) or not isinstance(conn.get("hostname"), str) \
                or not isinstance(conn.get("port"), int | None) \
                or not isinstance(conn.get("tls_cipher_suites"), list):
            raise ValueError("not a connection")
    if not isinstance(value.get("fetched_at"), int | float | None):
        raise ValueError("fetched_at is not a time")
    return value


class LookupCache:
    def __init__(self, directory: Path):
        self.directory = directory

    def _path(self, title: str) -> Path:
        return self.directory / f"{title.encode().hex()}.json"  # any title, a safe name

    def put(self, answer: dict) -> None:
        statefile_io.save_json(self._path(answer["aet"]),
                               {"fetched_at": time.time(), "answer": answer})

    def get(self, title: str) -> dict | None:
        record = statefile_io.read_json(self._path(title), cache_record)
        if record is None or record["answer"].get("aet") != title:
            return None
        return {**record["answer"], "source": "cache", "stale": True,
                "fetched_at": record.get("fetched_at")}

    def drop(self, title: str) -> None:
        statefile_io.remove(self._path(title))

    def purge(self) -> int:
        files = list(self.directory.glob("*.json")) if self.directory.is_dir() else []
        for path in files:
            statefile_io.remove(path)
        return len(files)
