"""Errors meant for the user: the CLI prints their message on one line and exits with status 1."""

from typing import Any


def shown(value: Any, width: int = 40) -> str:
    """A value sent by someone else, for an error message: its repr, cut short (it may be megabytes)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long for repr()
        text = "a number too long to show"
    return text if len(text) <= width else text[: width - 3] + "..."


def first_line(exc: BaseException) -> str:
    """The first line of what an exception says (of the driver's error it wraps, if any), for a one-line
    message; its type's name when it says nothing."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class AnimexprError(Exception):
    """A problem the user can fix; its message says what and how."""


class ConfigError(AnimexprError):
    """A bad setting; the message names the key."""


class SchemaError(AnimexprError):
    """The database schema cannot be used by this version of animexpr."""


class DatabaseOpenError(AnimexprError):
    """The database cannot be opened, is not a database, or belongs to another program or store."""
