"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class E1Error(Exception):
    """Bad input or an unsupported request, described in one line."""
