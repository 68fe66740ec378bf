"""The one exception type for user errors: the CLI prints it as a single red line."""


class JianmuError(Exception):
    """A problem the user can fix (bad config, missing folder, class mismatch, ...)."""
