"""User-facing errors.

A :class:`PrivmedError` is a mistake the user can fix (a wrong name, an
impossible split, a missing file). The CLI prints its message on one line and
exits with a non-zero code, without a traceback. Anything else is a bug.
"""


class PrivmedError(Exception):
    """A user error: the message names the problem and the fix."""


def unknown_name(kind: str, name: str, valid: "list[str] | tuple[str, ...]") -> PrivmedError:
    """Error for a name that is not in a registry; lists the valid names."""
    return PrivmedError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(valid))}")
