"""Errors the `modelreg` command reports as one line (kept apart from `main`, which also runs
as `__main__`, so every module raises the same class)."""


class UserError(Exception):
    """An operation failed for a reason the person can act on."""
