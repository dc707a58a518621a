"""The life of claimed trials, from the claim to the final tell.

Modelled on Optuna's ``study/_optimize.py`` ``_run_trial``: ``run_trials`` is the whole story, top
to bottom, for the trials one worker claimed at once (one, or the members of one fused model), and
``_final_tell`` is the one place that decides what reaches the storage. A claimed trial goes

    CLAIMED -> RUNNING -> COMPLETE | PRUNED | REQUEUED | RETRIED | TAKEN_OVER | FAILED

- COMPLETE, PRUNED: told so (a diverged loss is pruned, with the reason "diverged");
- REQUEUED: a stop signal came, or the artifacts folder cannot be written (then the worker stops):
  failed, and a copy queued that resumes from the checkpoint;
- RETRIED: the trainer raised a transient error (out of memory, I/O, a lost database connection)
  and the lineage has been retried fewer than study.max_retries times: failed with the error and
  the reason stored, and a copy queued that resumes from the checkpoint;
- TAKEN_OVER: a heartbeat sweep failed it while this worker was cut off from the database; its
  retry owns the checkpoint now, so nothing is told and it is not this worker's failure;
- FAILED: the trainer raised anything else (a bug, a bad setting), or retries ran out: failed,
  with the error stored.

The trainer is passed in as ``train(group)``: it calls ``run.report`` after each epoch and
``run.save`` with its checkpoint, and returns one result per trial whose ``state`` is "complete",
"pruned", "diverged" or "interrupted" (it saw the stop request between two batches).
"""

import copy
import enum
import errno
import threading
import time
from dataclasses import dataclass

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from tuner import keys
from tuner.errors import DiskError, UserError
from tuner.learn import checkpoints
from tuner.search.liveness import DbRetry, Requeue, heartbeat
from tuner.search.study import KEEP_MODELS, describe_trial, worker_name


class State(enum.Enum):
    CLAIMED = "claimed"
    RUNNING = "running"
    COMPLETE = "complete"
    PRUNED = "pruned"
    REQUEUED = "requeued"
    RETRIED = "retried"
    TAKEN_OVER = "taken over"
    FAILED = "failed"


TOLD_AS = {State.COMPLETE: TrialState.COMPLETE, State.PRUNED: TrialState.PRUNED,
           State.REQUEUED: TrialState.FAIL, State.RETRIED: TrialState.FAIL, State.FAILED: TrialState.FAIL}
OUTCOMES = {"complete": State.COMPLETE, "pruned": State.PRUNED, "diverged": State.PRUNED,
            "interrupted": State.REQUEUED, "failed": State.FAILED}


def trial_id(trial: optuna.Trial) -> int:
    """The storage's id of a trial. Optuna (checked against 5.0.0) has no public accessor on
    ``optuna.Trial``, and the storage calls that heartbeats and the final tell need take it."""
    return trial._trial_id


@dataclass
class Worker:
    """What every claimed trial of one worker shares."""

    study: optuna.Study
    storage: optuna.storages.RDBStorage
    cfg: object  # tuner.search.config.StudyConfig
    index: int
    db: DbRetry
    log: object  # log(message)
    stop: threading.Event
    key: str | None = None  # the study's STUDY_KEY (None for studies created before it was given)


class TrialRun:
    """One claimed trial: its loss settings, seed, checkpoint and state, and the callbacks the
    trainer calls (``report``, ``save``)."""

    def __init__(self, w: Worker, trial: optuna.Trial, alpha):
        self.w, self.trial, self.alpha = w, trial, alpha
        self.gamma = trial.params["gamma"]
        self.state = State.CLAIMED
        self.started = time.time()
        self.resume = self.ckpt = self.reference = None
        self.inherited = set()  # epochs a retry inherited from the trial it retries

    def start(self) -> None:
        """Read the trial's lineage, seed and checkpoint; store its seed and worker."""
        w, trial = self.w, self.trial
        frozen = w.db("reading a trial", lambda: w.storage.get_trial(trial_id(trial)))
        retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        self.origin = trial.number if retried is None else retried  # the first trial of its retry lineage
        self.seed = frozen.user_attrs.get(keys.SEED, w.cfg.study.seed * 100_003 + self.origin)
        self.ckpt = checkpoints.running_path(w.cfg, w.study.study_name, self.origin)
        # The study key: a checkpoint left by a deleted study of this name, or by one in another
        # storage, has the same path, seed and parameters (a reference trial's always), not the same key.
        self.params = {"gamma": self.gamma, "alpha": self.alpha, "seed": self.seed, **({"study": w.key} if w.key else {})}
        self.inherited = set(frozen.intermediate_values)
        self.reference = frozen.user_attrs.get(keys.REFERENCE)
        try:
            self.resume = checkpoints.load_running(self.ckpt, self.params)
            if self.resume is None and retried is not None:  # its checkpoint is on another host, or it died in epoch 1
                w.log(f"trial {trial.number} retries trial {self.origin} from epoch 1: no checkpoint of it at {self.ckpt}")
        except checkpoints.Unreadable as e:
            reason = e.reason
            w.log(f"trial {trial.number}: the checkpoint of trial {self.origin} cannot be read ({reason}); "
                  f"moved to {e.moved_to}, restarting from epoch 1")
            w.db("noting a bad checkpoint", lambda: trial.set_user_attr(keys.CHECKPOINT_DISCARDED, reason))
        w.db("starting a trial", lambda: (trial.set_user_attr(keys.SEED, self.seed),
                                          trial.set_user_attr(keys.WORKER, worker_name(w.index))))
        self.state = State.RUNNING
        if self.resume is not None:
            w.log(f"trial {trial.number} resumes trial {self.origin} after epoch {self.resume['epoch']}")
            w.db("resuming", lambda: trial.set_user_attr(keys.RESUMED_FROM_EPOCH, self.resume["epoch"]))
            for epoch, metrics in enumerate(self.resume["history"], 1):
                self.report(epoch, metrics)  # fills any gap left by the steps inherited

    def report(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Store one epoch's metrics; True when training should stop (pruned, or taken over)."""
        if self.state == State.TAKEN_OVER:
            return True

        def write():
            if epoch not in self.inherited:  # Optuna would warn and ignore it
                self.trial.report(metrics[self.w.cfg.study.metric], epoch)
            for key, value in metrics.items():
                self.trial.set_user_attr(key, value)
            self.trial.set_user_attr(keys.EPOCHS, epoch)
            # asked for every trial: successive halving and hyperband record a trial's rung value only
            # when asked, and the reference trials are what other trials are judged against; a
            # reference itself runs to the end, as the final model is measured against it
            prune = self.trial.should_prune()
            return prune and self.reference is None

        try:
            return self.w.db(f"reporting epoch {epoch}", write)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._taken_over()
            return True

    def save(self, state: dict) -> None:
        if self.state != State.TAKEN_OVER:  # the checkpoint belongs to the retry then
            checkpoints.save_running(self.ckpt, state, self.params)

    def _taken_over(self) -> None:
        self.state = State.TAKEN_OVER
        self.w.log(f"trial {self.trial.number} was failed by a heartbeat sweep while this worker was cut off "
                   "from the database; its retry carries on from the checkpoint, this worker drops it")


def groups(runs: list[TrialRun]) -> list[list[TrialRun]]:
    """Trials that train together: all fresh ones, and resumed ones that stopped after the same
    epoch of the same batch order (the members of one fused run), so they fuse again."""
    out = {}
    for r in runs:
        key = None if r.resume is None else (r.resume["epoch"], bytes(r.resume["order"].numpy()))
        out.setdefault(key, []).append(r)
    return list(out.values())


def run_trials(w: Worker, runs: list[TrialRun], train, data) -> list[State]:
    """The life of the trials one worker claimed at once; returns their final states.
    ``train(group)`` trains a group of them (see ``groups``) and returns one result per trial;
    ``data`` is what they train on (a complete trial's model file records its classes)."""
    with heartbeat(w.storage, [trial_id(r.trial) for r in runs], w.log):
        try:
            for r in runs:
                r.start()
            for group in groups(runs):
                if w.stop.is_set():  # the stop came while these trials were claimed or trained
                    for r in group:
                        _final_tell(r, "interrupted")
                    continue
                try:
                    results = train(group)
                except UserError:
                    raise
                except Exception as e:  # noqa: BLE001 - a bad trial must not take the worker down
                    for r in group:
                        _final_tell(r, "failed", error=e)
                    continue
                for r, result in zip(group, results):
                    _final_tell(r, result.state, result, data)
        except DiskError as e:  # every trial would fail the same way: queue them again, stop the worker
            for r in runs:
                if r.state in (State.CLAIMED, State.RUNNING):
                    _final_tell(r, "interrupted", stop_reason=f"artifacts not writable: {e}")
            raise
    return [r.state for r in runs]


TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                    errno.ECONNABORTED, errno.EPIPE, errno.ENOMEM, errno.ESTALE, errno.EHOSTUNREACH, errno.ENETUNREACH}


def transient(error: Exception) -> str | None:
    """Why ``error`` may not happen again on a retry, or None for an error that would (a bug, a bad
    setting): what is worth queueing the trial again for."""
    text = str(error).lower()
    if type(error).__name__ == "OutOfMemoryError" or "out of memory" in text or "can't allocate memory" in text:
        return "out of memory"
    if isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS:
        return f"I/O error ({errno.errorcode[error.errno]})"
    if isinstance(error, DbRetry.ERRORS):
        return "database connection lost"
    return None


def _final_tell(r: TrialRun, outcome: str, result=None, data=None, error: Exception | None = None,
                stop_reason: str = "interrupted") -> None:
    """Decide the end of a trial from the trainer's outcome and from what the storage says, then
    tell it (once: a tell retried after a lost connection finds its first attempt landed)."""
    w, trial = r.w, r.trial
    if r.state == State.TAKEN_OVER:
        return
    state = OUTCOMES[outcome]
    why = None if error is None else transient(error)
    retries = trial.user_attrs.get(keys.RETRIES, 0)
    reason = "diverged" if outcome == "diverged" else f"pruner at epoch {result.epochs}" if result else None
    if why is not None and retries < w.cfg.study.max_retries:
        state = State.RETRIED
    if state == State.COMPLETE:
        checkpoints.save_trial_model(w.cfg, w.study.study_name, trial.number, result.model, data,
                                     r.gamma, r.alpha, r.seed, result.history[-1], study_key=w.key)
    took = round(time.time() - r.started, 2)  # one reading, stored and logged alike

    def tell() -> bool:
        """False when the trial was finished by someone else: a sweep while we were cut off."""
        frozen = w.storage.get_trial(trial_id(trial))
        if frozen.state.is_finished():
            return frozen.state == TOLD_AS[state] and state not in (State.REQUEUED, State.RETRIED)  # ours landed already
        if state == State.REQUEUED:
            trial.set_user_attr(keys.STOP_REASON, stop_reason[:500])
        elif state in (State.FAILED, State.RETRIED):
            trial.set_user_attr(keys.ERROR, f"{type(error).__name__}: {error}"[:500])
            if why is not None:
                trial.set_user_attr(keys.RETRY_REASON, why if state == State.RETRIED
                                    else f"{why}, not retried: study.max_retries = {w.cfg.study.max_retries} reached")
        else:
            trial.set_user_attr(keys.DURATION_S, took)
            if state == State.PRUNED:
                trial.set_user_attr(keys.PRUNE_REASON, reason)
        w.study.tell(trial, result.value if state == State.COMPLETE else None, state=TOLD_AS[state])
        if state in (State.REQUEUED, State.RETRIED):
            queued = copy.copy(frozen)
            queued.user_attrs = {**frozen.user_attrs, keys.RETRIES: retries + (state == State.RETRIED)}
            Requeue(inherit_intermediate_values=True)(w.study, queued)
        return True

    if not w.db(f"telling trial {trial.number}", tell):
        if state == State.COMPLETE:
            checkpoints.trial_path(w.cfg, w.study.study_name, trial.number).unlink(missing_ok=True)
        r._taken_over()
        return
    r.state = state
    if state == State.REQUEUED:
        w.log(f"trial {trial.number} {stop_reason}; queued again to resume from its last epoch")
        return
    if state == State.RETRIED:
        w.log(f"trial {trial.number} failed ({why}: {type(error).__name__}: {str(error)[:200]}); queued again "
              f"(retry {retries + 1} of {w.cfg.study.max_retries}) to resume from its last epoch")
        return
    if state == State.FAILED:
        w.log(f"trial {trial.number} failed: {type(error).__name__}: {error}")
        return
    r.ckpt.unlink(missing_ok=True)
    if state == State.COMPLETE:
        w.db("pruning model files", lambda: keep_best(w.cfg, w.study))
    value = "-" if result.value is None else f"{result.value:.4f}"
    label = f" ({r.reference})" if r.reference else ""
    how = f"{state.value} ({reason})" if state == State.PRUNED else state.value
    w.log(f"trial {trial.number} {describe_trial(trial)}{label} -> {how} {w.cfg.study.metric}={value} "
          f"after {result.epochs} epoch{'s' * (result.epochs != 1)} ({took:.1f} s)")


def keep_best(cfg, study: optuna.Study, keep: int = KEEP_MODELS) -> None:
    """Delete the model files of complete trials outside the best ``keep``, to bound disk use; the
    reference trials' models stay, for the comparison on the test split."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and keys.REFERENCE not in t.user_attrs]
    done.sort(key=lambda t: t.value, reverse=True)
    for t in done[keep:]:
        checkpoints.trial_path(cfg, study.study_name, t.number).unlink(missing_ok=True)
