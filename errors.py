"""Errors whose message is meant for the user; the CLI prints them without a stack trace."""


class KaffeeError(Exception):
    """A clear, user-facing error (bad input, missing file, mismatched model...)."""
