"""The user-facing error type: the library raises it, the CLI prints it on one line and exits 2."""

from __future__ import annotations


class TextinvError(Exception):
    """A problem the user can fix; the message names the problem and the fix, on one line."""

    exit_code = 2


class TrainingDiverged(TextinvError):
    """The loss became NaN or infinite; the last good embedding and checkpoint are kept."""
