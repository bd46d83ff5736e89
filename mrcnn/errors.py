"""The one project error type: the CLI prints it as one line and exits 1."""


class MrcnnError(Exception):
    """A user-facing error (bad input, bad file, bad option). Message is one line, no traceback."""
