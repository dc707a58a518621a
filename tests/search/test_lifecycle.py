"""The life of a claimed trial, in-process: a real SQLite storage, a fake trainer that completes,
prunes, diverges, raises, is interrupted or is cut off while a sweep takes its trial over."""

import threading
import time

import optuna
import pytest
import sqlalchemy
import torch
from optuna.trial import TrialState

from conftest import fill, make_read_only

from tuner import keys
from tuner.errors import DiskError, UserError
from tuner.learn import checkpoints
from tuner.learn.data import Splits
from tuner.learn.models import build_model
from tuner.learn.train import TrialResult
from tuner.search.config import from_dict
from tuner.search.lifecycle import State, TrialRun, Worker, run_trials
from tuner.search.liveness import DbRetry, Waiting, fail_orphans
from tuner.search.study import claim_trial, create_or_resume, open_for_worker, trial_note

METRICS = {"average_precision": 0.7, "balanced_accuracy": 0.8, "threshold": 0.3, "temperature": 1.2, "loss": 0.1}


@pytest.fixture
def worker(tmp_path):
    return make_worker(tmp_path, tmp_path / "artifacts")


def make_worker(tmp_path, artifacts):
    cfg = from_dict({"study": {"name": "life", "n_trials": 4, "heartbeat_interval": 1, "grace_period": 3,
                               "artifacts": str(artifacts), "db_retry_s": 5, "reference_trials": False},
                     "data": {"kind": "synthetic"}, "train": {"epochs": 3}})
    url = f"sqlite:///{tmp_path / 'life.db'}"
    create_or_resume(cfg, url, "life")
    study, cfg, storage = open_for_worker(url, "life", worker_index=0)
    lines = []
    w = Worker(study, storage, cfg, 0, DbRetry(5, "worker 0", lines.append), lines.append, threading.Event())
    w.lines = lines
    return w


@pytest.fixture(scope="module")
def data():
    x = torch.zeros(8, 1, 16, 16, dtype=torch.uint8)
    y = torch.tensor([0, 0, 0, 1] * 2)
    return Splits(x, y, x, y, None, None, ["background", "rare"])


def claim(w, n=1):
    return [TrialRun(w, claim_trial(w.study, w.cfg, w.storage), alpha=0.25) for _ in range(n)]


def model(data):
    return build_model("simple_cnn", 1, 16, data.class_counts())


def trainer(w, data, outcome, epochs=2, during=None):
    """A fake trainer: reports ``epochs`` epochs, saves a checkpoint after each, calls ``during(run)``
    after the first, and ends with ``outcome`` (or raises it)."""
    def train(group):
        results = []
        for r in group:
            result = TrialResult("complete", None, model(data))
            for epoch in range(1, epochs + 1):
                result.history.append(METRICS)
                result.value = METRICS["average_precision"]
                r.save({"epoch": epoch, "model": result.model.state_dict(), "optimizer": {}, "order": torch.Generator().get_state(),
                        "history": result.history})
                stop = r.report(epoch, METRICS)
                if during and epoch == 1:
                    during(r)
                if stop:
                    break
            if isinstance(outcome, Exception):
                raise outcome
            result.state = outcome
            results.append(result)
        return results
    return train


def frozen(w, run):
    return w.study.trials[run.trial.number]


def test_a_complete_trial_is_told_with_its_value_and_model_file(worker, data):
    (run,) = claim(worker)
    assert run_trials(worker, [run], trainer(worker, data, "complete"), data) == [State.COMPLETE]
    t = frozen(worker, run)
    assert t.state == TrialState.COMPLETE and t.value == 0.7 and t.user_attrs[keys.EPOCHS] == 2
    assert t.user_attrs[keys.SEED] == run.seed and keys.DURATION_S in t.user_attrs
    assert sorted(t.intermediate_values) == [1, 2]
    payload = torch.load(checkpoints.trial_path(worker.cfg, "life", t.number), weights_only=True)
    assert payload["threshold"] == 0.3 and payload["temperature"] == 1.2 and payload["positive_class"] == "rare"
    assert not run.ckpt.exists()  # the running checkpoint is gone once the trial is told
    assert any("-> complete average_precision=0.7000 after 2 epochs" in line for line in worker.lines)


@pytest.mark.parametrize("outcome, reason", [("pruned", "pruner at epoch 2"), ("diverged", "diverged")])
def test_pruned_and_diverged_trials_are_told_pruned_with_the_reason(worker, data, outcome, reason):
    (run,) = claim(worker)
    assert run_trials(worker, [run], trainer(worker, data, outcome), data) == [State.PRUNED]
    t = frozen(worker, run)
    assert t.state == TrialState.PRUNED and t.user_attrs[keys.PRUNE_REASON] == reason
    assert any(f"-> pruned ({reason}) average_precision=0.7000" in line for line in worker.lines)
    assert not checkpoints.trial_path(worker.cfg, "life", t.number).exists()


def test_the_pruner_never_stops_a_reference_trial(worker):
    worker.study.pruner = optuna.pruners.ThresholdPruner(lower=0.9)  # prunes any value below 0.9
    worker.study.enqueue_trial({"gamma": 0.0, "alpha": 0.5}, user_attrs={keys.REFERENCE: "cross-entropy"})
    reference, other = claim(worker, 2)
    reference.start(), other.start()
    assert reference.reference == "cross-entropy" and other.reference is None
    assert reference.report(1, METRICS) is False and other.report(1, METRICS) is True


def test_successive_halving_judges_other_trials_against_the_reference_trials(worker):
    # the pruner records a rung value only when asked: a reference never asked left its rungs empty
    worker.study.pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    worker.study.enqueue_trial({"gamma": 0.0, "alpha": 0.5}, user_attrs={keys.REFERENCE: "cross-entropy"})
    reference, other = claim(worker, 2)
    reference.start(), other.start()
    assert reference.report(1, {**METRICS, "average_precision": 0.9}) is False
    assert "completed_rung_0" in frozen(worker, reference).system_attrs
    assert other.report(1, {**METRICS, "average_precision": 0.2}) is True  # below the reference in its rung


def test_a_trainer_that_raises_fails_its_trial_and_the_worker_goes_on(worker, data):
    (run,) = claim(worker)
    assert run_trials(worker, [run], trainer(worker, data, RuntimeError("CUDA error: boom")), data) == [State.FAILED]
    t = frozen(worker, run)
    assert t.state == TrialState.FAIL and t.user_attrs[keys.ERROR] == "RuntimeError: CUDA error: boom"
    assert not [x for x in worker.study.trials if x.state == TrialState.WAITING]  # not retried


def test_a_user_error_is_not_a_trial_failure_but_stops_the_worker(worker, data):
    (run,) = claim(worker)
    with pytest.raises(UserError):
        run_trials(worker, [run], trainer(worker, data, UserError("database gone")), data)


def test_an_interrupted_trial_is_queued_again_to_resume_from_its_checkpoint(worker, data):
    (run,) = claim(worker)
    states = run_trials(worker, [run], trainer(worker, data, "interrupted", during=lambda r: worker.stop.set()), data)
    assert states == [State.REQUEUED]
    t = frozen(worker, run)
    assert t.state == TrialState.FAIL and t.user_attrs[keys.STOP_REASON] == "interrupted"
    (retry,) = [x for x in worker.study.trials if x.state == TrialState.WAITING]
    assert retry.system_attrs["failed_trial"] == t.number and sorted(retry.intermediate_values) == [1, 2]
    assert keys.SEED in retry.user_attrs and not {keys.STOP_REASON, keys.WORKER} & set(retry.user_attrs)  # the attempt's own
    assert run.ckpt.exists()  # kept for the retry

    worker.stop.clear()
    (again,) = claim(worker)
    assert again.trial.number == retry.number
    assert run_trials(worker, [again], trainer(worker, data, "complete", epochs=3), data) == [State.COMPLETE]
    assert again.resume["epoch"] == 2 and again.ckpt == run.ckpt
    assert frozen(worker, again).user_attrs[keys.RESUMED_FROM_EPOCH] == 2


def test_a_stop_before_training_requeues_without_training(worker, data):
    runs = claim(worker, 2)
    worker.stop.set()
    called = []
    assert run_trials(worker, runs, lambda group: called.append(group), data) == [State.REQUEUED] * 2
    assert not called and len([t for t in worker.study.trials if t.state == TrialState.WAITING]) == 2


def sweep(w, run):
    """What a heartbeat sweep does to a trial whose worker it thinks dead."""
    t = frozen(w, run)
    w.study.tell(run.trial.number, state=TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(w.study, t)


def test_a_trial_swept_while_its_worker_was_cut_off_is_dropped_not_told(worker, data):
    (run,) = claim(worker)
    states = run_trials(worker, [run], trainer(worker, data, "complete", epochs=3, during=lambda r: sweep(worker, r)), data)
    assert states == [State.TAKEN_OVER]
    t = frozen(worker, run)
    assert t.state == TrialState.FAIL and keys.DURATION_S not in t.user_attrs and sorted(t.intermediate_values) == [1]
    assert not checkpoints.trial_path(worker.cfg, "life", t.number).exists()
    assert run.ckpt.exists()  # the retry's now
    assert any(f"trial {t.number} was failed by a heartbeat sweep" in line for line in worker.lines)


def test_a_sweep_between_the_last_report_and_the_tell_leaves_no_model_file(worker, data):
    (run,) = claim(worker)

    def train(group):
        results = trainer(worker, data, "complete")(group)
        sweep(worker, group[0])
        return results

    assert run_trials(worker, [run], train, data) == [State.TAKEN_OVER]
    assert frozen(worker, run).state == TrialState.FAIL
    assert not checkpoints.trial_path(worker.cfg, "life", run.trial.number).exists()


def test_heartbeats_are_recorded_and_the_thread_is_joined(worker, data):
    (run,) = claim(worker)
    seen = []

    def train(group):
        with sqlalchemy.create_engine(worker.storage.engine.url).connect() as conn:
            seen.append(conn.execute(sqlalchemy.text("SELECT count(*) FROM trial_heartbeats")).scalar())
        return trainer(worker, data, "complete", epochs=1)(group)

    run_trials(worker, [run], train, data)
    assert seen == [1]  # a beat before training started
    assert not [t for t in threading.enumerate() if t.name.startswith("tuner ")]


def test_the_database_retry_waits_for_the_database_then_gives_up_with_one_sentence():
    lines, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        return "done"

    assert DbRetry(10, "worker 7", lines.append)("asking for a trial", flaky) == "done"
    assert len(lines) == 2 and "database unreachable while asking for a trial; retrying in 0.5 s" in lines[0]

    def down():
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))

    with pytest.raises(UserError, match=r"unreachable for \d+ s \(study.db_retry_s = 0\) while telling trial 3 on worker 7"):
        DbRetry(0, "worker 7", lines.append)("telling trial 3", down)


def test_an_unreadable_checkpoint_is_moved_aside_and_its_retry_restarts_from_epoch_1(worker, data):
    (run,) = claim(worker)
    states = run_trials(worker, [run], trainer(worker, data, "interrupted", during=lambda r: worker.stop.set()), data)
    assert states == [State.REQUEUED] and run.ckpt.exists()
    run.ckpt.write_bytes(bytes(range(256)) * 40)  # not a zip, not a pickle

    worker.stop.clear()
    (again,) = claim(worker)
    assert run_trials(worker, [again], trainer(worker, data, "complete", epochs=3), data) == [State.COMPLETE]
    assert again.resume is None
    t = frozen(worker, again)
    assert t.state == TrialState.COMPLETE and keys.RESUMED_FROM_EPOCH not in t.user_attrs
    assert "UnpicklingError" in t.user_attrs[keys.CHECKPOINT_DISCARDED]
    assert run.ckpt.with_name(run.ckpt.name + ".bad").read_bytes() == bytes(range(256)) * 40
    assert any(f"trial {t.number}: the checkpoint of trial {run.trial.number} cannot be read" in line
               and "restarting from epoch 1" in line for line in worker.lines)


def test_a_retry_without_its_checkpoint_here_says_it_restarts_from_epoch_1(worker, data):
    (run,) = claim(worker)
    run_trials(worker, [run], trainer(worker, data, "interrupted", during=lambda r: worker.stop.set()), data)
    run.ckpt.unlink()  # as on another host, whose artifacts folder this one does not see
    worker.stop.clear()
    (again,) = claim(worker)
    assert run_trials(worker, [again], trainer(worker, data, "complete", epochs=3), data) == [State.COMPLETE]
    assert again.resume is None
    assert f"trial {again.trial.number} retries trial {run.trial.number} from epoch 1: no checkpoint of it at {run.ckpt}" in worker.lines


def heartbeat_rows(w):
    with sqlalchemy.create_engine(w.storage.engine.url).connect() as conn:
        return conn.execute(sqlalchemy.text("SELECT count(*) FROM trial_heartbeats")).scalar()


def test_a_claim_records_the_first_heartbeat_at_once(worker):
    claim(worker)
    assert heartbeat_rows(worker) == 1  # before any file is read, before the heartbeat thread


def test_a_running_trial_that_never_got_a_heartbeat_is_freed_after_the_grace_period(worker):
    orphan = worker.study.ask()  # claimed by a worker that died before its first beat
    orphan.set_user_attr(keys.PRUNE_REASON, "pruner at epoch 2")  # killed between storing this and the tell
    assert heartbeat_rows(worker) == 0
    assert fail_orphans(worker.study, worker.storage, worker.cfg.study.grace_period) == []  # not before the grace period
    time.sleep(worker.cfg.study.grace_period + 0.5)
    (retry,) = claim(worker)
    assert worker.study.trials[orphan.number].state == TrialState.FAIL
    assert frozen(worker, retry).system_attrs["failed_trial"] == orphan.number
    assert keys.PRUNE_REASON not in frozen(worker, retry).user_attrs  # the retry was not pruned
    assert trial_note(worker.study.trials[orphan.number]) == "its worker went silent: killed, or cut off from the database"
    from tuner.show.export import trial_rows

    row = trial_rows(worker.study)[orphan.number]
    assert row["stop_reason"] == "its worker went silent: killed, or cut off from the database"  # export says it too


def test_a_waiting_worker_says_what_it_waits_for_and_gives_up_when_nothing_moves(worker):
    (run,) = claim(worker)
    waiting = Waiting(0.3, worker.lines.append)
    assert waiting.more(worker.study)
    assert worker.lines[-1].startswith(f"waiting for trial {run.trial.number} running on other workers")
    run.trial.report(0.5, 1)  # an epoch: the clock starts again
    time.sleep(0.35)
    assert waiting.more(worker.study)
    assert waiting.more(worker.study)
    time.sleep(0.35)
    assert not waiting.more(worker.study)
    assert worker.lines[-1].startswith(f"stopped waiting: trials {run.trial.number} reported no epoch for 0 s")
    worker.study.tell(run.trial, 0.5)  # none left running: nothing to name, the caller claims again
    said = len(worker.lines)
    assert Waiting(0.3, worker.lines.append).more(worker.study) and waiting.more(worker.study)
    assert len(worker.lines) == said


def out_of_memory():
    torch.empty(1 << 50, dtype=torch.uint8)  # a petabyte: the allocator refuses


def cuda_out_of_memory():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    torch.empty(1 << 50, dtype=torch.uint8, device="cuda")


def io_error():
    with open("/proc/self/mem", "rb") as f:
        f.read(1)  # address 0 is not mapped: EIO


def database_gone():
    sqlalchemy.create_engine("postgresql+psycopg://postgres@127.0.0.1:1/x").connect()  # nothing listens on port 1


def raising(fault):
    try:
        fault()
    except Exception as e:  # noqa: BLE001 - the real error, raised by the trainer below
        return e
    raise AssertionError(f"{fault.__name__} did not fail")


@pytest.mark.parametrize("fault, why", [(out_of_memory, "out of memory"), (cuda_out_of_memory, "out of memory"),
                                        (io_error, "I/O error (EIO)"),
                                        (database_gone, "database connection lost")])
def test_a_transient_error_queues_the_trial_again_up_to_max_retries(worker, data, fault, why):
    error = raising(fault)
    (run,) = claim(worker)
    assert run_trials(worker, [run], trainer(worker, data, error), data) == [State.RETRIED]
    t = frozen(worker, run)
    assert t.state == TrialState.FAIL and t.user_attrs[keys.RETRY_REASON] == why
    assert t.user_attrs[keys.ERROR].startswith(type(error).__name__)
    (queued,) = [x for x in worker.study.trials if x.state == TrialState.WAITING]
    assert queued.user_attrs[keys.RETRIES] == 1 and keys.ERROR not in queued.user_attrs
    assert queued.system_attrs["failed_trial"] == t.number and sorted(queued.intermediate_values) == [1, 2]

    (second,) = claim(worker)
    assert run_trials(worker, [second], trainer(worker, data, error, epochs=3), data) == [State.RETRIED]
    assert second.resume["epoch"] == 2  # resumed from the checkpoint, not restarted
    (third,) = claim(worker)
    assert run_trials(worker, [third], trainer(worker, data, error, epochs=3), data) == [State.FAILED]
    last = frozen(worker, third)
    assert last.user_attrs[keys.RETRIES] == 2 and "not retried: study.max_retries = 2 reached" in last.user_attrs[keys.RETRY_REASON]
    assert not [x for x in worker.study.trials if x.state == TrialState.WAITING]


def test_a_permanent_error_is_not_retried(worker, data):
    error = raising(lambda: {}["gamma"])  # a bug
    (run,) = claim(worker)
    assert run_trials(worker, [run], trainer(worker, data, error), data) == [State.FAILED]
    t = frozen(worker, run)
    assert t.user_attrs[keys.ERROR] == "KeyError: 'gamma'" and keys.RETRY_REASON not in t.user_attrs
    assert not [x for x in worker.study.trials if x.state == TrialState.WAITING]


@pytest.mark.parametrize("damage, code", [(fill, "ENOSPC"), (make_read_only, "EROFS")])
def test_an_artifacts_folder_that_cannot_be_written_queues_the_trial_again_and_stops_the_worker(
        tmp_path, small_filesystem, data, damage, code):
    w = make_worker(tmp_path, small_filesystem)
    (run,) = claim(w)
    with pytest.raises(DiskError) as stopped:
        run_trials(w, [run], trainer(w, data, "complete", epochs=3, during=lambda r: damage(small_filesystem)), data)
    assert f"cannot write to {small_filesystem / 'life' / 'running'}: {code} (" in str(stopped.value)
    assert run.state == State.REQUEUED
    t = frozen(w, run)
    assert t.state == TrialState.FAIL and t.user_attrs[keys.STOP_REASON].startswith("artifacts not writable: cannot write to")
    (queued,) = [x for x in w.study.trials if x.state == TrialState.WAITING]
    assert queued.system_attrs["failed_trial"] == t.number
    assert not list(small_filesystem.rglob("*.tmp*"))  # no half-written file left behind
    assert checkpoints.load_running(run.ckpt, run.params)["epoch"] == 1  # the last good epoch, for the retry
