"""One exception hierarchy: each class's docstring is the message a user sees by default."""

from __future__ import annotations


class ServiceError(Exception):
    """latent-trees failed."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self)


class SettingsError(ServiceError):
    """a setting is invalid."""


class DatabaseUnreachable(ServiceError):
    """the database cannot be reached."""


class EmbeddedServerError(ServiceError):
    """the embedded PostgreSQL server could not be started."""


class NotFound(ServiceError):
    """not found."""


class UnknownFamily(NotFound):
    """unknown family."""


class UnknownSae(NotFound):
    """unknown sae."""


class UnknownLabel(NotFound):
    """unknown label."""


class Conflict(ServiceError):
    """already exists."""


class DuplicateFamily(Conflict):
    """the family already exists."""


class DuplicateSae(Conflict):
    """the sae already exists."""


class BadInput(ServiceError):
    """the input is invalid."""


def describe(error: BaseException) -> str:
    """One line: the error's message followed by its cause chain."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join(str(current).split()) or type(current).__name__
        if not parts or text not in parts[-1]:
            parts.append(text)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return ": ".join(parts)
