"""ASEN++: attribute-specific fashion similarity, from training to serving."""

__version__ = "0.2.0"


class AsenError(Exception):
    """A user-facing error: the CLI prints its message as one line and exits 1."""
