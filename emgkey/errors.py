"""Typed errors. Each names what was wrong and where, so a user can act on it."""

from __future__ import annotations

from pathlib import Path


class EmgkeyError(Exception):
    """Base class of every error emgkey raises on purpose."""


class SessionFileError(EmgkeyError, ValueError):
    """A session HDF5 file is missing, malformed, truncated or inconsistent."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(EmgkeyError, ValueError):
    """A configuration (split file, profile, CLI option) is invalid."""


class ProtocolError(EmgkeyError, ValueError):
    """Bytes on the serial link could not be understood."""
