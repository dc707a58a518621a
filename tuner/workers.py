"""Worker processes: each claims a trial, trains it, tells the result, and repeats until the study
is full (``tuner.launch`` starts N of them on one machine); ``watch`` follows a study whose workers
run elsewhere."""

import os
import signal
import socket
import threading
import time
import zlib

import optuna
import sqlalchemy
import torch
from optuna.trial import TrialState

from tuner import checkpoints
from tuner.data import load_data
from tuner.errors import UserError
from tuner.fused import choose_k, train_fused
from tuner.progress import Progress, snapshot
from tuner.study import UNWEIGHTED, claim_trial, counts, describe_params, open_for_worker, target
from tuner.train import loss_alpha, pick_device, train_trial

MAX_FAILURES_IN_A_ROW = 3


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


class _Heartbeat(threading.Thread):
    """Tells the storage every few seconds that this trial's worker is alive, and sweeps up the
    trials of dead workers (Optuna itself sweeps only just before an ask)."""

    def __init__(self, storage: optuna.storages.RDBStorage, trials: list[optuna.Trial], study: optuna.Study, grace: int):
        super().__init__(daemon=True, name="tuner-heartbeat")  # cli.main looks for it by name
        self.storage, self.study, self.grace = storage, study, grace
        self.trial_ids = [t._trial_id for t in trials]
        self.interval = storage.get_heartbeat_interval()
        self.done = threading.Event()

    def run(self) -> None:
        last_sweep = time.time()
        while not self.done.is_set():
            try:
                for trial_id in self.trial_ids:
                    self.storage.record_heartbeat(trial_id)
                if time.time() - last_sweep > self.grace:
                    optuna.storages.fail_stale_trials(self.study)
                    last_sweep = time.time()
            except Exception:  # a missed beat is retried; the grace period covers a few
                pass
            self.done.wait(self.interval)

    def __enter__(self):
        if self.interval:
            for trial_id in self.trial_ids:
                self.storage.record_heartbeat(trial_id)
            self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()


class _Stop:
    """First SIGINT/SIGTERM: stop the current trial (it is queued again) and exit 0.
    A second one: exit at once."""

    def __init__(self):
        self.requested = False
        self.training = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            os._exit(130)
        self.requested = True
        if self.training:
            raise KeyboardInterrupt


def fuse_k(cfg, data, dev) -> int:
    """How many trials this worker trains at once: train.fuse, or measured when it is "auto"."""
    if cfg.model.kind != "simple_cnn":
        return 1  # only the two-conv CNN has a fused form
    if cfg.train.fuse == "auto":
        return choose_k(cfg, data, dev)
    return cfg.train.fuse


def default_index() -> int:
    """A worker index unlikely to repeat across hosts, so that sampler seeds differ."""
    return zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 100_000


def run_worker(url: str, name: str, index: int | None = None, device: str | None = None,
               threads: int | None = None, max_trials: int | None = None) -> int:
    """Run trials of study ``name`` until it is full (or ``max_trials`` ran); returns trials run."""
    index = default_index() if index is None else index
    if threads:
        torch.set_num_threads(threads)
    study, cfg, storage = open_for_worker(url, name, index)
    stop = _Stop()
    data = load_data(cfg.data, seed=cfg.study.seed)
    dev = pick_device(device or cfg.train.device)
    if dev.type == "cuda" and dev.index is None:  # one card per worker, round robin
        dev = torch.device("cuda", index % torch.cuda.device_count())
    log(f"[worker {index}] joined study {name!r} on {dev} ({torch.get_num_threads()} threads), "
        f"{len(data.train_y)} train / {len(data.val_y)} val images, classes {data.classes}"
        + (f"; {data.describe_positive()}" if data.positive_class else ""))
    k = fuse_k(cfg, data, dev)
    if k > 1:
        log(f"[worker {index}] trains {k} trials at once as one fused model")
    ran = failures = 0
    while not stop.requested and (max_trials is None or ran < max_trials):
        want = k if max_trials is None else min(k, max_trials - ran)
        trials = []
        while len(trials) < want:
            trial = _db(cfg, index, "asking for a trial", lambda: claim_trial(study, cfg, storage))
            if trial is None:
                break
            trials.append(trial)
        if not trials:
            c = _db(cfg, index, "counting trials", lambda: counts(study))
            if storage.get_heartbeat_interval() and c["RUNNING"] and c["FINISHED"] < target(study, cfg):
                time.sleep(min(2, storage.get_heartbeat_interval()))  # a running trial may die and come back to us
                continue
            break
        states = _run(study, storage, trials, cfg, data, dev, index, stop)
        ran += len(trials)
        failures = failures + 1 if TrialState.FAIL in states and not stop.requested else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            raise UserError(f"{failures} trials in a row failed on worker {index}; see the 'error' attribute of the last trials (tuner status)")
    log(f"[worker {index}] done after {ran} trials" + (" (stopped by signal)" if stop.requested else ""))
    return ran


class _TrialRun:
    """One claimed trial's bookkeeping: its seed and checkpoint, reports, and the final tell."""

    def __init__(self, study, storage, trial, cfg, index, counts):
        self.study, self.storage, self.trial, self.cfg, self.index = study, storage, trial, cfg, index
        self.gamma = trial.params["gamma"]
        self.alpha = None if trial.user_attrs.get(UNWEIGHTED) else loss_alpha(trial.params, counts)
        self.retry = self._db("reading a trial", lambda: storage.get_trial(trial._trial_id)).system_attrs
        self.origin = self.retry.get("failed_trial", trial.number)  # the first trial of its retry lineage
        self.seed = trial.user_attrs.get("seed", cfg.study.seed * 100_003 + self.origin)
        self.ckpt = checkpoints.running_path(cfg, study.study_name, self.origin)
        self.params = {"gamma": self.gamma, "alpha": self.alpha, "seed": self.seed}
        self.resume = checkpoints.load_running(self.ckpt, self.params)
        self.started = time.time()
        self.taken_over = False  # the heartbeat sweep failed this trial while we were cut off
        self._db("starting a trial", lambda: (trial.set_user_attr("seed", self.seed),
                                              trial.set_user_attr("worker", f"{socket.gethostname()}:{index}")))
        if self.resume is not None:
            log(f"[worker {index}] trial {trial.number} resumes trial {self.origin} after epoch {self.resume['epoch']}")
            self._db("resuming", lambda: trial.set_user_attr("resumed_from_epoch", self.resume["epoch"]))
            for epoch, metrics in enumerate(self.resume["history"], 1):
                self.report(epoch, metrics)  # fills any gap; steps already inherited are ignored by Optuna

    def _db(self, what, op):
        return _db(self.cfg, self.index, what, op)

    def report(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Store one epoch's metrics; True when training should stop (pruned, or taken over)."""
        def write():
            self.trial.report(metrics[self.cfg.study.metric], epoch)
            for key, value in metrics.items():
                self.trial.set_user_attr(key, value)
            self.trial.set_user_attr("epochs", epoch)
            return self.trial.should_prune()
        if self.taken_over:
            return True
        try:
            return self._db(f"reporting epoch {epoch}", write)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Our heartbeats stopped reaching the database for longer than the grace period, so a
            # sweep failed the trial and queued its retry, which resumes from the shared checkpoint.
            self.taken_over = True
            log(f"[worker {self.index}] trial {self.trial.number} was failed by a heartbeat sweep while this "
                f"worker was cut off; its retry carries on from the checkpoint, this worker drops it")
            return True

    def save(self, state: dict) -> None:
        if not self.taken_over:  # the checkpoint now belongs to the retry
            checkpoints.save_running(self.ckpt, state, self.params)

    def _finished(self) -> bool:
        self.taken_over = self.taken_over or self.storage.get_trial(self.trial._trial_id).state.is_finished()
        return self.taken_over

    def requeue(self) -> None:
        """Fail the trial and queue a copy that resumes from its checkpoint, as a heartbeat retry does."""
        def write():
            frozen = self.storage.get_trial(self.trial._trial_id)
            if frozen.state.is_finished():
                self.taken_over = True  # failed by a sweep, which queued the retry
                return
            self.trial.set_user_attr("stop_reason", "interrupted")
            self.study.tell(self.trial, state=TrialState.FAIL)
            optuna.storages.RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(self.study, frozen)
        self._db("queueing an interrupted trial", write)
        log(f"[worker {self.index}] trial {self.trial.number} interrupted; queued again to resume from its last epoch")

    def fail(self, e: Exception) -> TrialState | None:
        def write():
            if self._finished():
                return
            self.trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:500])
            self.study.tell(self.trial, state=TrialState.FAIL)
        self._db("failing a trial", write)
        if self.taken_over:
            return None
        log(f"[worker {self.index}] trial {self.trial.number} failed: {type(e).__name__}: {e}")
        return TrialState.FAIL

    def finish(self, result, data) -> TrialState | None:
        """Tell the result; None when the trial was taken over (it is neither ours to tell nor a failure)."""
        trial, cfg = self.trial, self.cfg
        if self.taken_over:
            return None
        if result.state == "complete":
            checkpoints.save_trial_model(cfg, self.study.study_name, trial.number, result.model, data,
                                         self.gamma, self.alpha, self.seed, result.history[-1])
            state, reason = TrialState.COMPLETE, None
        else:
            state = TrialState.PRUNED
            reason = "diverged" if result.state == "diverged" else f"pruner at epoch {result.epochs}"

        def tell():  # idempotent: after a lost connection the first attempt may have landed already
            frozen = self.storage.get_trial(trial._trial_id)
            if frozen.state.is_finished():
                # Ours landed (same state), or a sweep failed the trial while this worker was away.
                self.taken_over = frozen.state != state
                return
            trial.set_user_attr("duration_s", round(time.time() - self.started, 2))
            if reason:
                trial.set_user_attr("prune_reason", reason)
            self.study.tell(trial, result.value if state == TrialState.COMPLETE else None, state=state)

        self._db("finishing a trial", tell)
        if self.taken_over:
            checkpoints.trial_path(cfg, self.study.study_name, trial.number).unlink(missing_ok=True)
            log(f"[worker {self.index}] trial {trial.number} was failed by a heartbeat sweep before its result "
                f"landed; its retry carries on from the checkpoint")
            return None
        self.ckpt.unlink(missing_ok=True)
        if state == TrialState.COMPLETE:
            self._db("pruning checkpoints", lambda: checkpoints.keep_best(cfg, self.study))
        value = "-" if result.value is None else f"{result.value:.4f}"
        log(f"[worker {self.index}] trial {trial.number} {describe_params(trial.params)} -> "
            f"{state.name.lower()} {cfg.study.metric}={value} after {result.epochs} epochs ({time.time() - self.started:.1f} s)")
        return state


def _run(study, storage, trials, cfg, data, dev, index, stop) -> list[TrialState | None]:
    """Train the claimed trials, group by group (see ``_groups``), telling each group's results as
    soon as it is done; on a stop signal the trials not yet told are queued again. A trial's state
    is None when a sweep took it over while this worker was cut off from the database."""
    runs = [_TrialRun(study, storage, t, cfg, index, data.class_counts()) for t in trials]
    states = {}
    with _Heartbeat(storage, trials, study, cfg.study.grace_period):
        for group in _groups(runs):
            try:
                stop.training = True
                if stop.requested:  # the signal came while these trials were being claimed
                    raise KeyboardInterrupt
                results = _train(cfg, data, group, dev)
            except KeyboardInterrupt:
                stop.training = False
                for r in runs:
                    if r not in states:
                        r.requeue()
                        states[r] = None if r.taken_over else TrialState.FAIL
                break
            except UserError:
                raise
            except Exception as e:  # a bad trial must not take the worker down
                stop.training = False
                states.update((r, r.fail(e)) for r in group)
                continue
            finally:
                stop.training = False
            states.update((r, r.finish(result, data)) for r, result in zip(group, results))
    return [states[r] for r in runs]


def _groups(runs: list["_TrialRun"]) -> list[list["_TrialRun"]]:
    """Trials that train together: all fresh ones, and resumed ones that stopped after the same
    epoch of the same batch order (the members of one fused run), so they fuse again."""
    groups = {}
    for r in runs:
        key = None if r.resume is None else (r.resume["epoch"], bytes(r.resume["order"].numpy()))
        groups.setdefault(key, []).append(r)
    return list(groups.values())


def _train(cfg, data, group: list["_TrialRun"], dev):
    if len(group) == 1:
        r = group[0]
        return [train_trial(cfg, data, r.gamma, r.alpha, r.seed, report=r.report, device=dev,
                            resume=r.resume, save=r.save)]
    return train_fused(cfg, data, [(r.gamma, r.alpha, r.seed) for r in group],
                       report=lambda i, epoch, metrics: group[i].report(epoch, metrics), device=dev,
                       order_seed=group[0].seed, resume=[r.resume for r in group] if group[0].resume else None,
                       save=lambda i, state: group[i].save(state))


def _db(cfg, index, what, op):
    """Run a storage operation, retrying with back-off while the database is away (a restart, a
    failover), for at most ``study.db_retry_s`` seconds."""
    # Measured from the first attempt: on a cut link that attempt alone waits for the TCP user timeout.
    start, delay = time.time(), 0.5
    deadline = start + cfg.study.db_retry_s
    while True:
        try:
            return op()
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as e:
            if time.time() + delay > deadline:
                raise UserError(f"the study database stayed unreachable for {time.time() - start:.0f} s "
                                f"(study.db_retry_s = {cfg.study.db_retry_s}) while {what} on worker {index}; "
                                f"check the database and restart the worker") from e
            log(f"[worker {index}] database unreachable while {what}; retrying in {delay:.1f} s")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def watch(url: str, name: str, mode: str = "lines", poll_s: float = 2.0) -> None:
    """Follow a study whose workers run elsewhere until it has its finished trials, sweeping the
    trials of dead workers so that they are retried."""
    study, cfg, storage = open_for_worker(url, name, worker_index=0)
    with Progress(mode, cfg.train.epochs) as progress:
        while True:
            s = _db(cfg, -1, "watching", lambda: (optuna.storages.fail_stale_trials(study), snapshot(study, target(study, cfg)))[1])
            progress.update(s)
            if s["finished"] >= s["target"]:
                return
            time.sleep(poll_s)
