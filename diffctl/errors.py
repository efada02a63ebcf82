"""The two exceptions the CLI reports as a message and an exit code, without a traceback: ``UsageError``
(a mistake the user can fix, exit 2) and ``Interrupted`` (a run stopped on request, its state saved)."""


class UsageError(Exception):
    """A bad input (path, option, checkpoint): printed as ``diffctl: error: <message>``, exit 2."""


class Interrupted(Exception):
    """A run stopped on request (SIGINT / SIGTERM) after saving its state: the CLI prints the message
    (how to resume) and exits with ``code`` (128 + the signal number, as a shell reports it)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code
