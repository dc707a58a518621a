"""Worker processes: each claims a trial, trains it, tells the result, and repeats until the study
is full. ``launch`` starts N of them on this machine and forwards Ctrl-C / SIGTERM to them."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import optuna
import sqlalchemy
import torch
from optuna.trial import TrialState

from tuner import checkpoints
from tuner.data import load_data
from tuner.errors import UserError
from tuner.study import claim_trial, counts, open_for_worker, target
from tuner.train import pick_device, train_trial

MAX_FAILURES_IN_A_ROW = 3


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


class _Heartbeat(threading.Thread):
    """Tells the storage every few seconds that this trial's worker is alive, and sweeps up the
    trials of dead workers (Optuna itself sweeps only just before an ask)."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial: optuna.Trial, study: optuna.Study, grace: int):
        super().__init__(daemon=True)
        self.storage, self.trial_id, self.study, self.grace = storage, trial._trial_id, study, grace
        self.interval = storage.get_heartbeat_interval()
        self.done = threading.Event()

    def run(self) -> None:
        last_sweep = time.time()
        while not self.done.is_set():
            try:
                self.storage.record_heartbeat(self.trial_id)
                if time.time() - last_sweep > self.grace:
                    optuna.storages.fail_stale_trials(self.study)
                    last_sweep = time.time()
            except Exception:  # a missed beat is retried; the grace period covers a few
                pass
            self.done.wait(self.interval)

    def __enter__(self):
        if self.interval:
            self.storage.record_heartbeat(self.trial_id)
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


def default_index() -> int:
    """A worker index unlikely to repeat across hosts, so that sampler seeds differ."""
    return zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 100_000


def run_worker(url: str, name: str, index: int | None = None, device: str | None = None,
               threads: int | None = None, max_trials: int | None = None) -> int:
    """Run trials of study ``name`` until it is full (or ``max_trials`` ran); returns trials run."""
    stop = _Stop()
    index = default_index() if index is None else index
    if threads:
        torch.set_num_threads(threads)
    study, cfg, storage = open_for_worker(url, name, index)
    data = load_data(cfg.data, seed=cfg.study.seed)
    dev = pick_device(device or cfg.train.device)
    log(f"[worker {index}] joined study {name!r} on {dev} ({torch.get_num_threads()} threads), "
        f"{len(data.train_y)} train / {len(data.val_y)} val images, classes {data.classes}")
    ran = failures = 0
    while not stop.requested and (max_trials is None or ran < max_trials):
        trial = _db(cfg, index, "asking for a trial", lambda: claim_trial(study, cfg, storage))
        if trial is None:
            c = _db(cfg, index, "counting trials", lambda: counts(study))
            if storage.get_heartbeat_interval() and c["RUNNING"] and c["FINISHED"] < target(study, cfg):
                time.sleep(storage.get_heartbeat_interval())  # a running trial may die and come back to us
                continue
            break
        state = _run_trial(study, storage, trial, cfg, data, dev, index, stop)
        ran += 1
        failures = failures + 1 if state == TrialState.FAIL and not stop.requested else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            raise UserError(f"{failures} trials in a row failed on worker {index}; see the 'error' attribute of the last trials (tuner status)")
    log(f"[worker {index}] done after {ran} trials" + (" (stopped by signal)" if stop.requested else ""))
    return ran


def _run_trial(study, storage, trial, cfg, data, dev, index, stop) -> TrialState:
    gamma, alpha = trial.params["gamma"], trial.params["alpha"]
    retry = _db(cfg, index, "reading a trial", lambda: storage.get_trial(trial._trial_id)).system_attrs
    origin = retry.get("failed_trial", trial.number)  # the first trial of this retry lineage
    seed = trial.user_attrs.get("seed", cfg.study.seed * 100_003 + origin)
    ckpt = checkpoints.running_path(cfg, study.study_name, origin)
    resume = checkpoints.load_running(ckpt, {"gamma": gamma, "alpha": alpha, "seed": seed})
    _db(cfg, index, "starting a trial", lambda: (trial.set_user_attr("seed", seed),
        trial.set_user_attr("worker", f"{socket.gethostname()}:{index}")))
    started = time.time()

    def report(epoch: int, metrics: dict[str, float]) -> bool:
        def write():
            trial.report(metrics[cfg.study.metric], epoch)
            for key, value in metrics.items():
                trial.set_user_attr(key, value)
            trial.set_user_attr("epochs", epoch)
            return trial.should_prune()
        return _db(cfg, index, f"reporting epoch {epoch}", write)

    def save(state: dict) -> None:
        checkpoints.save_running(ckpt, state, {"gamma": gamma, "alpha": alpha, "seed": seed})

    if resume is not None:
        log(f"[worker {index}] trial {trial.number} resumes trial {origin} after epoch {resume['epoch']}")
        _db(cfg, index, "resuming", lambda: trial.set_user_attr("resumed_from_epoch", resume["epoch"]))
        for epoch, metrics in enumerate(resume["history"], 1):
            report(epoch, metrics)  # fills any gap; steps already inherited are ignored by Optuna
    with _Heartbeat(storage, trial, study, cfg.study.grace_period):
        try:
            stop.training = True
            if stop.requested:  # the signal came while this trial was being claimed
                raise KeyboardInterrupt
            result = train_trial(cfg, data, gamma, alpha, seed, report=report, device=dev, resume=resume, save=save)
        except KeyboardInterrupt:
            stop.training = False
            _db(cfg, index, "queueing an interrupted trial", lambda: _requeue(study, storage, trial))
            log(f"[worker {index}] trial {trial.number} interrupted; queued again to resume from its last epoch")
            return TrialState.FAIL
        except Exception as e:  # a bad trial must not take the worker down
            stop.training = False
            if isinstance(e, UserError):
                raise
            _db(cfg, index, "failing a trial", lambda: (trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:500]),
                                                         study.tell(trial, state=TrialState.FAIL)))
            log(f"[worker {index}] trial {trial.number} failed: {type(e).__name__}: {e}")
            return TrialState.FAIL
        finally:
            stop.training = False
        if result.state == "complete":
            checkpoints.save_trial_model(cfg, study.study_name, trial.number, result.model, data, gamma, alpha, seed)
            state = TrialState.COMPLETE
        else:
            reason = "diverged" if result.state == "diverged" else f"pruner at epoch {result.epochs}"
            state = TrialState.PRUNED
        _db(cfg, index, "finishing a trial", lambda: _tell(study, storage, trial, state, result, reason if state == TrialState.PRUNED else None, started))
        ckpt.unlink(missing_ok=True)
        if state == TrialState.COMPLETE:
            _db(cfg, index, "pruning checkpoints", lambda: checkpoints.keep_best(cfg, study))
    value = "-" if result.value is None else f"{result.value:.4f}"
    log(f"[worker {index}] trial {trial.number} gamma={gamma:.3f} alpha={alpha:.3f} -> {state.name.lower()}"
        f" {cfg.study.metric}={value} after {result.epochs} epochs ({time.time() - started:.1f} s)")
    return state


def _tell(study, storage, trial, state, result, reason, started) -> None:
    """Idempotent: after a lost connection the first attempt may have landed already."""
    if storage.get_trial(trial._trial_id).state.is_finished():
        return
    trial.set_user_attr("duration_s", round(time.time() - started, 2))
    if reason:
        trial.set_user_attr("prune_reason", reason)
    study.tell(trial, result.value if state == TrialState.COMPLETE else None, state=state)


def _requeue(study, storage, trial) -> None:
    """Fail the trial and queue a copy that resumes from its checkpoint, as a heartbeat retry does."""
    frozen = storage.get_trial(trial._trial_id)
    if frozen.state.is_finished():
        return
    trial.set_user_attr("stop_reason", "interrupted")
    study.tell(trial, state=TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(study, frozen)


def _db(cfg, index, what, op):
    """Run a storage operation, retrying with back-off while the database is away (a restart, a
    failover), for at most ``study.db_retry_s`` seconds."""
    deadline, delay = time.time() + cfg.study.db_retry_s, 0.5
    while True:
        try:
            return op()
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as e:
            if time.time() + delay > deadline:
                raise UserError(f"the study database stayed unreachable for {cfg.study.db_retry_s} s while {what} "
                                f"on worker {index}; check the database and restart the worker") from e
            log(f"[worker {index}] database unreachable while {what}; retrying in {delay:.1f} s")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def watch(url: str, name: str, poll_s: float = 2.0) -> None:
    """Follow a study whose workers run elsewhere until it has its finished trials, sweeping the
    trials of dead workers so that they are retried."""
    study, cfg, storage = open_for_worker(url, name, worker_index=0)
    seen = None
    while True:
        c = _db(cfg, -1, "watching", lambda: (optuna.storages.fail_stale_trials(study), counts(study))[1])
        now = (c["COMPLETE"], c["PRUNED"], c["RUNNING"], c["WAITING"], c["FAIL"])
        if now != seen:
            log(f"[watch] {c['FINISHED']} of {target(study, cfg)} finished: {c['COMPLETE']} complete, {c['PRUNED']} pruned, "
                f"{c['RUNNING']} running, {c['WAITING']} waiting, {c['FAIL']} failed")
            seen = now
        if c["FINISHED"] >= target(study, cfg):
            return
        time.sleep(poll_s)


def launch(url: str, name: str, workers: int, device: str = "auto") -> int:
    """Start ``workers`` worker processes here and wait for them; returns the worst exit code."""
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // workers)
    gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    procs = []
    for i in range(workers):
        dev = f"cuda:{i % gpus}" if gpus else device
        env = {**os.environ, "TUNER_STORAGE": url, "OMP_NUM_THREADS": str(threads)}  # URL not on argv: ps shows argv
        cmd = [sys.executable, "-m", "tuner", "worker", "--study-name", name, "--worker-index", str(i),
               "--threads", str(threads), "--device", dev]
        # Own session: a terminal's Ctrl-C reaches only us, and we forward exactly one signal.
        procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))
    signals = []

    def forward(signum, frame):
        signals.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL if len(signals) > 1 else signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if signals:
        raise KeyboardInterrupt
    return max(codes)
