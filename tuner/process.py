"""What a tuner process does about signals and about its libraries' output, for every command."""

import contextlib
import sys
from pathlib import Path

from tuner.errors import Terminated


def quiet_libraries() -> None:
    """Once per process, before a command uses Optuna: Optuna logs only warnings (tuner prints its own lines),
    and the experimental-feature warnings of the heartbeats and sweeps tuner relies on stay out of
    every worker's output."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


@contextlib.contextmanager
def stopped_by_sigterm():
    """SIGTERM (a service manager, kill) and SIGHUP (the terminal closed) stop the block as Ctrl-C does,
    instead of ending the process unannounced."""
    import signal

    def stop(signum, frame):
        raise Terminated(signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def signals_held():
    """Ctrl-C, SIGTERM and SIGHUP wait until the block ends, and then act as they would have."""
    import signal

    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def notes_for_warnings() -> None:
    """tuner's own warnings (images skipped, a cache it could not write) as one ``note:`` line on
    stderr, like its other notes, instead of Python's file, line and source line."""
    import warnings

    plain = warnings.showwarning
    if getattr(plain, "tuner", False):
        return
    ours = Path(__file__).resolve().parent

    def show(message, category, filename, lineno, file=None, line=None):
        # PIL's warning of an image of 89 to 179 million pixels, which it reads: a note, as ours are
        if (category is UserWarning and Path(filename).resolve().is_relative_to(ours)
                or category.__name__ == "DecompressionBombWarning"):
            print(f"note: {message}", file=sys.stderr, flush=True)
        else:
            plain(message, category, filename, lineno, file, line)

    show.tuner = True
    warnings.showwarning = show
