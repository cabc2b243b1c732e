"""The one exception type dropbench raises for bad input: its message is one line naming the
problem and the fix, and the CLI prints it without a traceback."""

import difflib


class DropbenchError(Exception):
    pass


def did_you_mean(name: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest of `choices`, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
