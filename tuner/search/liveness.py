"""What keeps a study alive while machines fail: the database retry policy, the heartbeat of
running trials, and the sweep that frees the trials of dead workers. No torch; the driver's
watch uses them as well as the workers.

Each timer is a thread started by a ``with`` block and stopped and joined when it ends, as
Optuna's own heartbeat thread is; a tick that raises is logged, then tried again.
"""

import threading
import time

import optuna
import sqlalchemy

from tuner.errors import UserError


class DbRetry:
    """The database retry policy: an operation that fails because the database is away (a restart,
    a failover, a cut link) is tried again with back-off, for at most ``seconds`` counted from the
    first attempt (on a cut link that attempt alone waits for the TCP user timeout); then a
    UserError says so."""

    ERRORS = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)

    def __init__(self, seconds: float, where: str, log):
        self.seconds, self.where, self.log = seconds, where, log

    def __call__(self, what: str, op):
        start, delay = time.time(), 0.5
        while True:
            try:
                return op()
            except self.ERRORS as e:
                if time.time() + delay > start + self.seconds:
                    raise UserError(f"the study database stayed unreachable for {time.time() - start:.0f} s "
                                    f"(study.db_retry_s = {self.seconds}) while {what} on {self.where}; "
                                    f"check the database and restart the worker") from e
                self.log(f"database unreachable while {what}; retrying in {delay:.1f} s")
                time.sleep(delay)
                delay = min(delay * 2, 10.0)


class _Ticker:
    """A thread that calls ``tick()`` every ``interval`` seconds until the ``with`` block ends; then
    it is stopped and joined. A tick that raises is logged once and tried again at the next one."""

    def __init__(self, interval: float, tick, what: str, log):
        self.interval, self.tick, self.what, self.log = interval, tick, what, log
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"tuner {what}")

    def _run(self) -> None:
        failing = False
        while not self.done.wait(self.interval):
            try:
                self.tick()
                failing = False
            except Exception as e:  # noqa: BLE001 - the database may be away; the next tick tries again
                if not failing:
                    self.log(f"{self.what} failed ({type(e).__name__}); trying again every {self.interval} s")
                failing = True

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def heartbeat(storage: optuna.storages.RDBStorage, ids: list[int], log):
    """While the ``with`` block runs, tell the storage every heartbeat interval that the trials
    ``ids`` are alive (one beat at once, so a trial is never without one); nothing when heartbeats
    are off, as Optuna's ``NullHeartbeatThread``."""
    interval = storage.get_heartbeat_interval()
    if not interval:
        return _Nothing()

    def beat():
        for i in ids:
            storage.record_heartbeat(i)

    beat()
    return _Ticker(interval, beat, "heartbeat", log)


def sweeper(study: optuna.Study, storage: optuna.storages.RDBStorage, grace_period: float, log):
    """While the ``with`` block runs, fail the trials of dead workers every ``grace_period``
    seconds, so that their retries are queued (Optuna sweeps only just before an ask)."""
    if not storage.get_heartbeat_interval():
        return _Nothing()
    return _Ticker(grace_period, lambda: optuna.storages.fail_stale_trials(study), "stale-trial sweep", log)
