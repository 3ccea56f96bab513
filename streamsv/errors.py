"""The one exception type that reaches users as a one-line message."""


class StreamsvError(Exception):
    """A problem the user can fix (bad file, bad name, bad config, missing device).

    The CLI prints ``error: <message>`` and exits non-zero; no traceback.
    """
