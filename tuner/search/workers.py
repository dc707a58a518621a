"""A worker process: claim trials, hand each to its lifecycle (``tuner.search.lifecycle``), repeat
until the study is full. ``tuner.search.launch`` starts N of them on one machine; ``tuner worker``
starts one anywhere. This is where the search service meets torch.
"""

import collections
import os
import signal
import socket
import sys
import threading
import time
import warnings
import zlib

import torch

from tuner.errors import UserError
from tuner.learn.checkpoints import study_folder
from tuner.learn.data import load_data
from tuner.learn.folds import train_folds
from tuner.learn.fused import choose_k, train_fused
from tuner.learn.train import pick_device, train_trial
from tuner.learn.weights import focus_class, loss_alpha
from tuner import keys
from tuner.search.lifecycle import State, TrialRun, Worker, run_trials
from tuner.search.liveness import DbRetry, Waiting, sweeper
from tuner.search.study import (check_same_images, claim_trial, counts, open_for_worker, sweep, target, with_artifacts,
                                 with_data_root)

MAX_FAILURES_IN_A_ROW = 3


def log(msg: str) -> None:
    # One write per line: print() writes its pieces one by one, and the workers share one stderr.
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
    sys.stderr.flush()


def stop_on_signals() -> threading.Event:
    """First SIGINT/SIGTERM/SIGHUP (a terminal closed under ``tuner worker``): set the event (the trials under way stop between two batches and are
    queued again; the worker then exits 0). A second one: exit at once."""
    stop = threading.Event()

    def handle(signum, frame):
        if stop.is_set():
            os._exit(130)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handle)
    return stop


def fuse_k(cfg, data, dev) -> int:
    """How many trials this worker trains at once: train.fuse, or measured when it is "auto" (with k
    folds, each of those trials is k members of the fused model)."""
    if cfg.model.kind != "simple_cnn":
        return 1  # only the two-conv CNN has a fused form
    if cfg.train.fuse == "auto":
        return choose_k(cfg, data, dev)
    return cfg.train.fuse


def default_index() -> int:
    """A worker index unlikely to repeat across hosts, so that sampler seeds differ."""
    return zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 100_000


def run_worker(url: str, name: str, index: int | None = None, device: str | None = None,
               threads: int | None = None, max_trials: int | None = None, data_root: str | None = None,
               artifacts: str | None = None, quiet_data: bool = False) -> int:
    """Run trials of study ``name`` until it is full (or ``max_trials`` ran); returns trials run.
    ``data_root``: this machine's copy of an image-folder study's images, if not at the stored root;
    ``artifacts``: this machine's folder for checkpoints and model files, if not the stored one;
    ``quiet_data``: no notes on the images (skipped, loose): the start-study that spawned this
    worker read the same images and gave them once."""
    index = default_index() if index is None else index
    if threads:
        torch.set_num_threads(threads)
    study, cfg, storage = open_for_worker(url, name, index)
    cfg = with_artifacts(with_data_root(cfg, name, data_root), artifacts)
    say = lambda msg: log(f"[worker {index}] {msg}")  # noqa: E731
    w = Worker(study, storage, cfg, index, DbRetry(cfg.study.db_retry_s, f"worker {index}", say), say, stop_on_signals(),
               study.user_attrs.get(keys.STUDY_KEY))
    with warnings.catch_warnings():
        if quiet_data:
            warnings.simplefilter("ignore", UserWarning)
        data = load_data(cfg.data, seed=cfg.study.seed)
    check_same_images(study, data.fingerprints, cfg.data.root, parts=("train",))
    dev = pick_device(device or cfg.train.device)
    if dev.type == "cuda" and dev.index is None:  # one card per worker, round robin
        dev = torch.device("cuda", index % torch.cuda.device_count())
    n = torch.get_num_threads()
    say(f"joined study {name!r} on {dev} ({n} thread{'s' * (n != 1)}), {data.describe_images(cfg.data.folds)}, "
        f"classes {data.classes}" + (f"; {data.describe_positive()}" if data.positive_class else "")
        + f"; checkpoints in {study_folder(cfg, name)}")
    k, focus = fuse_k(cfg, data, dev), focus_class(cfg, data.classes)
    if k > 1:
        say(f"trains {k} trials at once as one fused model")
    ran = failures = 0
    ended, why = collections.Counter(), ""
    waiting = Waiting(max(10 * cfg.study.grace_period, 600), say)
    with sweeper(storage, cfg.study.grace_period, lambda: sweep(study, cfg, storage), say):
        while not w.stop.is_set() and (max_trials is None or ran < max_trials):
            want = k if max_trials is None else min(k, max_trials - ran)
            trials = []
            while len(trials) < want and not w.stop.is_set():
                trial = w.db("asking for a trial", lambda: claim_trial(study, cfg, storage))
                if trial is None:
                    break
                trials.append(trial)
            if not trials:
                c = w.db("counting trials", lambda: counts(study))
                if (storage.get_heartbeat_interval() and c["RUNNING"] and c["FINISHED"] < target(study, cfg)
                        and w.db("looking at running trials", lambda: waiting.more(study))):
                    w.stop.wait(min(2, storage.get_heartbeat_interval()))  # a running trial may die and come back to us
                    continue
                goal = target(study, cfg)
                why = (f"; the study has its {goal} finished trials" if c["FINISHED"] >= goal else
                       f"; no trial left to claim ({c['RUNNING']} running elsewhere)" if c["RUNNING"] else "")
                break
            runs = [TrialRun(w, t, None if t.user_attrs.get(keys.UNWEIGHTED) else loss_alpha(t.params, data.class_counts(), focus))
                    for t in trials]
            states = run_trials(w, runs, lambda group: _train(cfg, data, group, dev, w.stop.is_set), data)
            ran += len(trials)
            ended.update(s.value for s in states)
            failures = failures + 1 if State.FAILED in states else 0
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise UserError(f"{failures} trials in a row failed on worker {index}; see the 'error' attribute of the "
                                "last trials (tuner status)")
    say(f"done after {ran} trial{'s' * (ran != 1)}" + _ended(ended) + why + (" (stopped by signal)" if w.stop.is_set() else ""))
    return ran


def _ended(count: collections.Counter) -> str:
    """How the trials ended, when not all finished: "" or e.g. ": 1 complete, 1 queued again to resume"."""
    words = {"complete": "complete", "pruned": "pruned", "requeued": "queued again to resume",
             "retried": "queued again to retry", "failed": "failed", "taken over": "taken over by a retry"}
    if set(count) <= {"complete", "pruned"}:
        return ""
    return ": " + ", ".join(f"{count[k]} {w}" for k, w in words.items() if count[k])


def _train(cfg, data, group: list[TrialRun], dev, stop):
    if cfg.data.folds > 1:  # k-fold trials always train fused: a trial's folds are members of one model
        return train_folds(cfg, data, [(r.gamma, r.alpha, r.seed) for r in group],
                           report=lambda i, epoch, metrics: group[i].report(epoch, metrics), device=dev,
                           order_seed=group[0].seed, resume=[r.resume for r in group] if group[0].resume else None,
                           save=lambda i, state: group[i].save(state), stop=stop)
    if len(group) == 1:
        r = group[0]
        return [train_trial(cfg, data, r.gamma, r.alpha, r.seed, report=r.report, device=dev,
                            resume=r.resume, save=r.save, stop=stop)]
    return train_fused(cfg, data, [(r.gamma, r.alpha, r.seed) for r in group],
                       report=lambda i, epoch, metrics: group[i].report(epoch, metrics), device=dev,
                       order_seed=group[0].seed, resume=[r.resume for r in group] if group[0].resume else None,
                       save=lambda i, state: group[i].save(state), stop=stop)
