"""The error type every user-facing failure is raised as.

The CLI turns an :class:`AjrError` into one line on stderr and its ``exit_code``; anything else
that escapes is a bug and is reported as such (still on one line, with a pointer to ``--debug``).
"""

from __future__ import annotations


class AjrError(Exception):
    """A failure the user can understand and usually fix: ``message`` says what, ``hint`` how."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.rstrip(". ")
        if self.hint:
            text += f"; {self.hint}"
        return text.replace("\n", " | ")


class UsageError(AjrError):
    """Bad input: a flag, a file or a value the user gave."""

    exit_code = 2
