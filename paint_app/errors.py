"""Errors raised by the app for bad user input."""


class PaintError(ValueError):
    """A user-facing error: the message names the field, the value and what is allowed."""


class SessionError(PaintError):
    """A session file or one of its fields is invalid."""


class ModelError(PaintError):
    """A model, block or SAE cannot be used as asked."""
