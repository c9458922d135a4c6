"""The one exception type users see from the core package."""


class SelvaError(RuntimeError):
    """A problem the user can fix: the message says what went wrong and what to do about it."""
