"""Error types shared by every profile and by the agent."""

from __future__ import annotations


class AgentError(Exception):
    """Root of everything dicom-agent raises on purpose."""


class ConfigError(AgentError):
    """A configuration problem. `errors` holds every finding as (key path, reason)."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = list(errors)
        super().__init__("; ".join(f"{key}: {reason}" for key, reason in self.errors))

    def lines(self) -> list[str]:
        return [f"{key}: {reason}" for key, reason in self.errors]


class ParseError(AgentError):
    """Bad bytes or text from outside; `offset` says where parsing stopped."""

    def __init__(self, message: str, offset: int | None = None):
        self.offset = offset
        super().__init__(message if offset is None else f"{message} (at offset {offset})")
