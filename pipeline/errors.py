"""The error types every layer may raise; the CLI turns them into one line and exit code 2.

They live here, below every other module of ``pipeline``, so that a format reader, a params
section or a phase can raise them without importing the CLI (which imports every stage).
"""

from __future__ import annotations


class ParamsError(ValueError):
    """A params file is missing, unreadable or does not validate; the message names the file
    and the key."""


class StageError(RuntimeError):
    """A stage failed for a reason the user can act on; the message names file and problem."""
