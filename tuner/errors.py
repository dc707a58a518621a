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
    """SIGTERM: stops a command as Ctrl-C does, and it exits with 143 (128 + SIGTERM), not Ctrl-C's 130."""
