"""The one exception type that reaches the user as a sentence instead of a traceback, and the stop by SIGTERM."""


class UserError(Exception):
    """Bad input from the user: a study file, a value, a path, a storage URL, a study name.

    The CLI prints ``error: <message>`` on one line and exits with status 2. The message says
    what is wrong, where, and what to do.
    """


class DiskError(UserError):
    """The artifacts folder cannot be written (full, read-only, no permission): the worker stops and
    its trials are queued again, instead of failing trial after trial."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, or SIGHUP (the terminal closed): stops a command as Ctrl-C does, and it exits with 128 plus
    the signal's number (143 after SIGTERM, 129 after SIGHUP), not Ctrl-C's 130."""

    def __init__(self, signum: int = 15):
        super().__init__(signum)
        self.code = 128 + signum
