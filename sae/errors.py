"""Errors raised by the SAE toolkit for bad user input."""


class SAEError(ValueError):
    """A user-facing error: the message names the field, the value and what is allowed."""
