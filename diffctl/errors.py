"""The one exception type for mistakes a user can fix; the CLI prints it as one line."""


class UsageError(Exception):
    """A bad input (path, option, checkpoint): printed as ``diffctl: error: <message>``, exit 2."""
