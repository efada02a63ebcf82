"""The one exception type for mistakes a user can fix; the CLI prints it as one line."""


class UsageError(Exception):
    """A bad input (path, option, checkpoint): printed as ``diffctl: error: <message>``, exit 2."""


class Interrupted(Exception):
    """A run stopped on request (SIGINT / SIGTERM) after saving its state: the CLI prints the message
    (how to resume) and exits with ``code`` (128 + the signal number, as a shell reports it)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code
