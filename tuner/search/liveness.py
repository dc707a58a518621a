"""What keeps a study alive while machines fail: the database retry policy, the heartbeat of
running trials, and the sweep that frees the trials of dead workers. No torch; the driver's
watch uses them as well as the workers.

Each timer is a thread started by a ``with`` block and stopped and joined when it ends, as
Optuna's own heartbeat thread is; a tick that raises is logged, then tried again.
"""

import copy
import datetime
import threading
import time

import optuna
import sqlalchemy
from optuna.trial import TrialState

from tuner import keys
from tuner.errors import UserError

# What a failed attempt stored about itself alone; its retry must not seem to have done it too.
# (A prune reason too: a worker killed between storing it and telling the pruning leaves it on a failed trial.)
PER_ATTEMPT = (keys.RESUMED_FROM_EPOCH, keys.CHECKPOINT_DISCARDED, keys.ERROR, keys.STOP_REASON, keys.RETRY_REASON,
               keys.WORKER, keys.DURATION_S, keys.PRUNE_REASON)


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


def sweeper(storage: optuna.storages.RDBStorage, grace_period: float, sweep, log):
    """While the ``with`` block runs, call ``sweep()`` (fail the trials of dead workers, so that their
    retries are queued) every ``grace_period`` seconds, not only when a trial is claimed."""
    if not storage.get_heartbeat_interval():
        return _Nothing()
    return _Ticker(grace_period, sweep, "stale-trial sweep", log)


class Requeue(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a failed trial (same parameters and attributes, a WAITING copy), less the
    attributes of the failed attempt alone (``PER_ATTEMPT``)."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trial = copy.copy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in PER_ATTEMPT}
        super().__call__(study, trial)


def fail_orphans(study: optuna.Study, storage: optuna.storages.RDBStorage, grace_period: float) -> list[int]:
    """Fail (and queue again, as a sweep would) the RUNNING trials that never got a heartbeat and
    started more than ``grace_period`` ago: their worker died between the claim and the first beat,
    and Optuna's sweep skips trials without a heartbeat row, so nothing else would free them.
    Returns their numbers."""
    if not storage.get_heartbeat_interval():
        return []
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace_period)  # datetime_start is the asker's local time
    with storage.engine.connect() as conn:
        ids = conn.execute(sqlalchemy.text(
            "SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
            "WHERE t.study_id = :study AND t.state = 'RUNNING' AND h.trial_id IS NULL AND t.datetime_start < :cutoff"),
            {"study": study._study_id, "cutoff": cutoff}).scalars().all()
    freed = []
    for i in ids:
        try:
            if storage.set_trial_state_values(i, state=TrialState.FAIL):
                freed.append(storage.get_trial(i))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished meanwhile
    retry = storage.get_heartbeat_stale_trial_callback()
    for t in freed:
        if retry is not None:
            retry(study, t)
    return [t.number for t in freed]


class Waiting:
    """A worker with nothing to claim while other workers' trials run: it waits for them (one may
    die and be queued again), says which, and gives up after ``patience`` seconds in which none of
    them reported an epoch or finished. A dead worker's trial is freed within a grace period (by
    the sweep, or ``fail_orphans``), so only a worker that is alive but stuck makes it give up."""

    def __init__(self, patience: float, log):
        self.patience, self.log = patience, log
        self.seen, self.since = None, time.monotonic()

    def more(self, study: optuna.Study) -> bool:
        """True: wait and look again; False: stop waiting (said why)."""
        running = {t.number: len(t.intermediate_values) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        if running != self.seen:
            if running and (self.seen is None or set(running) != set(self.seen)):  # none left: the caller claims again
                self.log(f"waiting for trial{'s' * (len(running) != 1)} {', '.join(map(str, sorted(running)))} running "
                         f"on other workers (up to {self.patience:.0f} s without an epoch from them)")
            self.seen, self.since = running, time.monotonic()
            return True
        if time.monotonic() - self.since < self.patience:
            return True
        self.log(f"stopped waiting: trials {', '.join(map(str, sorted(running)))} reported no epoch for "
                 f"{self.patience:.0f} s; their workers may be stuck (tuner status shows them)")
        return False
