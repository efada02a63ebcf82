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


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP) received by a command that has no state to save (sample, eval, export, inspect-schedule): it
    stops as after Ctrl-C, its run folder marked FAILED when it holds anything, and exits 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
