"""User-facing errors: one line naming the bad value and what is allowed."""
from __future__ import annotations


class FastPNRError(Exception):
    """Base class of every error fastpnr raises for bad input."""


class ConfigError(FastPNRError, ValueError):
    """A configuration value is unknown or out of range."""


class DataError(FastPNRError):
    """Data is missing, unreadable or corrupt."""


def require(condition: bool, field: str, value, allowed) -> None:
    """Raise ``ConfigError("field=value is invalid; allowed: ...")`` unless ``condition`` holds."""
    if not condition:
        if isinstance(allowed, (list, tuple, set, frozenset)):
            allowed = ", ".join(str(a) for a in (sorted(allowed) if isinstance(allowed, (set, frozenset)) else allowed))
        raise ConfigError(f"{field}={value!r} is invalid; allowed: {allowed}")
