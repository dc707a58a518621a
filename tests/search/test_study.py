"""The study layer alone (no torch): samplers, pruners, creation, resume, claiming trials."""

import dataclasses
import threading
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from tuner.search.config import from_dict
from tuner.errors import UserError
from tuner import keys
from tuner.search.study import (claim_trial, create_or_resume, distributions, make_pruner, make_sampler, open_for_worker,
                                reserve_worker_indices, stored_config, sweep, target)


def cfg_with(**sections):
    return from_dict({"data": {"kind": "synthetic"}, **sections})


@pytest.mark.parametrize("kind, cls", [("median", optuna.pruners.MedianPruner), ("hyperband", optuna.pruners.HyperbandPruner),
                                       ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
                                       ("none", optuna.pruners.NopPruner)])
def test_pruner_kinds(kind, cls):
    assert isinstance(make_pruner(cfg_with(pruner={"kind": kind})), cls)


@pytest.mark.parametrize("kind, cls", [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler)])
def test_sampler_kinds(kind, cls):
    assert isinstance(make_sampler(cfg_with(study={"sampler": kind}), seed=1), cls)


def test_grid_sampler_sweeps_the_grid(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    cfg = cfg_with(study={"name": "g", "sampler": "grid", "grid_points": 2, "reference_trials": False, "n_trials": 4},
                   search={"gamma": [0.0, 4.0], "alpha": [0.25, 0.75]})
    create_or_resume(cfg, url, "g")
    study, cfg, storage = open_for_worker(url, "g", worker_index=0)
    seen = set()
    while (trial := claim_trial(study, cfg, storage)) is not None:
        seen.add((trial.params["gamma"], trial.params["alpha"]))
        study.tell(trial, 0.5)
    assert seen == {(0.0, 0.25), (0.0, 0.75), (4.0, 0.25), (4.0, 0.75)}
    assert len(study.trials) == 4


def test_a_grid_cut_short_at_creation_is_completed_when_the_study_resumes(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 's.db'}"
    cfg = cfg_with(study={"name": "g", "sampler": "grid", "grid_points": 3, "reference_trials": False, "n_trials": 9})
    real, calls = optuna.Study.enqueue_trial, []

    def cut(self, *args, **kwargs):
        if len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C while the grid is queued
        calls.append(real(self, *args, **kwargs))

    monkeypatch.setattr(optuna.Study, "enqueue_trial", cut)
    with pytest.raises(KeyboardInterrupt):
        create_or_resume(cfg, url, "g")
    monkeypatch.undo()
    study, notes = create_or_resume(cfg, url, "g")
    assert notes == ["study 'g' had 5 of its grid's points not queued yet (its creation was cut short); queued them now"]
    points = {tuple(t.system_attrs["fixed_params"].values()) for t in study.trials}
    assert len(study.trials) == len(points) == 9 and study.user_attrs["n_trials"] == 9
    assert create_or_resume(cfg, url, "g")[1] == []  # nothing more to queue


def test_claiming_stops_at_exactly_n_trials_and_runs_queued_trials_first(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    cfg = cfg_with(study={"name": "c", "n_trials": 3})
    create_or_resume(cfg, url, "c")
    study, cfg, storage = open_for_worker(url, "c", worker_index=0)
    first, second, third = (claim_trial(study, cfg, storage) for _ in range(3))
    assert (first.params, second.params) == ({"gamma": 0.0, "alpha": 0.5}, {"gamma": 2.0, "alpha": 0.25})
    assert claim_trial(study, cfg, storage) is None  # 3 running: the study is full
    study.tell(third, state=TrialState.FAIL)  # a failed trial does not count as finished
    assert claim_trial(study, cfg, storage) is not None


def test_resume_keeps_stored_settings_and_raises_the_target(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    create_or_resume(cfg_with(study={"name": "r"}, train={"epochs": 2}), url, "r")
    study, notes = create_or_resume(cfg_with(study={"name": "r"}, train={"epochs": 7}), url, "r", n_trials=30)
    assert stored_config(study).train.epochs == 2 and "train.epochs" in notes[0]
    assert study.user_attrs["n_trials"] == 30
    assert len(study.trials) == 2  # the reference trials were queued once, not twice
    # run again without n_trials (the study file's 16): the target set before stays
    study, notes = create_or_resume(cfg_with(study={"name": "r"}), url, "r")
    assert study.user_attrs["n_trials"] == 30 and "keeps its target of 30 finished trials" in notes[-1]
    study, _ = create_or_resume(cfg_with(study={"name": "r"}), url, "r", n_trials=5)  # asked for: lowered
    assert study.user_attrs["n_trials"] == 5
    # the study file's 16 raise a stored 5 with a word, and a target below the finished trials is said to run nothing
    study, notes = create_or_resume(cfg_with(study={"name": "r"}), url, "r")
    assert study.user_attrs["n_trials"] == 16
    assert notes[-1] == ("study 'r' now has a target of 16 finished trials, the study file's study.n_trials (it was 5); "
                         "pass --n-trials to choose it")
    for _ in range(3):
        study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED))
    _, notes = create_or_resume(cfg_with(study={"name": "r"}), url, "r", n_trials=2)
    assert notes[-1] == ("study 'r' already has 3 finished trials, past the target of 2: no more trials run; raise "
                         "--n-trials to run more")


def test_another_search_space_under_the_same_name_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    create_or_resume(cfg_with(study={"name": "x"}), url, "x")
    with pytest.raises(UserError, match="another search space") as refused:
        create_or_resume(cfg_with(study={"name": "x"}, search={"alpha": [0.1, 0.2]}), url, "x")
    assert "(search.alpha: stored [0.05, 0.95], asked [0.1, 0.2]);" in str(refused.value)  # only what differs


@pytest.mark.parametrize("mode, unused, used", [("class_balanced", "alpha", "beta"), ("rare", "beta", "alpha")])
def test_a_range_the_weights_do_not_use_may_change_on_resume(tmp_path, mode, unused, used):
    url = f"sqlite:///{tmp_path / 's.db'}"
    create_or_resume(cfg_with(study={"name": "u"}, search={"alpha_mode": mode}), url, "u")
    _, notes = create_or_resume(cfg_with(study={"name": "u"}, search={"alpha_mode": mode, unused: [0.91, 0.92]}), url, "u")
    assert f"search.{unused}" in notes[0]
    with pytest.raises(UserError, match="another search space"):
        create_or_resume(cfg_with(study={"name": "u"}, search={"alpha_mode": mode, used: [0.91, 0.92]}), url, "u")


def test_pruning_waits_for_a_third_of_the_epochs_by_default():
    # the first epoch a trial may be pruned at (optuna: step == n_warmup_steps), epochs from 1
    for epochs, first in ((1, 1), (2, 1), (3, 2), (5, 2), (6, 3), (9, 4), (10, 4), (12, 5)):
        median = make_pruner(cfg_with(train={"epochs": epochs}))
        assert median._n_warmup_steps == first > epochs / 3  # optuna 5.0 keeps the setting here; no public accessor
    halving = make_pruner(cfg_with(train={"epochs": 10}, pruner={"kind": "successive_halving"}))
    assert halving._min_resource == 4
    assert make_pruner(cfg_with(train={"epochs": 6}, pruner={"n_warmup_steps": 0}))._n_warmup_steps == 0


def test_auto_settings_are_resolved_before_the_study_is_stored():
    cfg = cfg_with(train={"epochs": 5})
    few, many = cfg.resolved(2, "rare", rare_count=63), cfg.resolved(2, "rare", rare_count=400)
    assert (few.data.folds, many.data.folds) == (5, 1)
    assert few.pruner.n_warmup_steps == 2 and few.search.alpha_mode == "rare" and few.data.positive_class == "rare"
    assert cfg_with(data={"kind": "synthetic", "folds": 3}).resolved(2, "rare", 10).data.folds == 3
    assert cfg.resolved(5, None, 10).search.alpha_mode == "class_balanced"
    assert cfg.resolved(2, "rare", rare_count=3).data.folds == 3  # each fold validates on one rare image at least
    with pytest.raises(UserError, match=r'data.folds = 20 is more than the 15 training images of the rarest class, so 5 folds '
                                        r'would validate on none of them; use at most 15 folds, or data.folds = "auto"'):
        cfg_with(data={"kind": "synthetic", "folds": 20}).resolved(2, "rare", 15)


def test_trials_whose_thresholds_an_earlier_rule_chose_are_named_on_resume_and_by_best(tmp_path):
    from tuner.show.summary import margin_notes

    url, cfg = f"sqlite:///{tmp_path / 's.db'}", cfg_with(study={"name": "mixed"}).resolved(2, "rare", 100)
    study, _ = create_or_resume(cfg, url, "mixed", classes=["other", "rare"], class_counts=[900, 100])
    dist = {"gamma": optuna.distributions.FloatDistribution(0, 5), "alpha": optuna.distributions.FloatDistribution(0.01, 0.99)}
    for cut in (0.0688, 0.0389, 0.0844, 0.0508, 0.0508):  # three by the old maximum, two by the share
        study.add_trial(optuna.trial.create_trial(params={"gamma": 1.0, "alpha": 0.5}, distributions=dist, value=0.9,
                                                  user_attrs={keys.THRESHOLD: cut}))
    older = [t.number for t in study.trials if t.user_attrs.get(keys.THRESHOLD) not in (None, 0.0508)]
    assert len(older) == 3
    _, notes = create_or_resume(cfg, url, "mixed")
    said = [n for n in notes if "an earlier rule" in n]
    assert len(said) == 1 and f"trials {', '.join(map(str, older))} chose their thresholds" in said[0]
    assert any(f"Trials {', '.join(map(str, older))} chose" in n for n in margin_notes(study, stored_config(study)))
    other = cfg_with(study={"name": "f1", "operating_point": "f1"}).resolved(2, "rare", 100)  # f1 thresholds differ by trial
    f1, _ = create_or_resume(other, url, "f1", classes=["other", "rare"], class_counts=[900, 100])
    for cut in (0.2, 0.3):
        f1.add_trial(optuna.trial.create_trial(params={"gamma": 1.0, "alpha": 0.5}, distributions=dist, value=0.9,
                                               user_attrs={keys.THRESHOLD: cut}))
    assert not [n for n in create_or_resume(other, url, "f1")[1] if "earlier rule" in n]


def test_a_relative_artifacts_folder_stored_before_they_were_absolute_is_no_note_from_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url, cfg = f"sqlite:///{tmp_path / 's.db'}", cfg_with(study={"name": "old"}).resolved(2, "rare", 100)
    assert cfg.study.artifacts == str(tmp_path / "tuner-artifacts")
    create_or_resume(dataclasses.replace(cfg, study=dataclasses.replace(cfg.study, artifacts="tuner-artifacts")), url, "old")
    _, notes = create_or_resume(cfg, url, "old")
    assert not [n for n in notes if "keeps its checkpoints" in n]  # the same folder, not "in tuner-artifacts, not .../tuner-artifacts"


def test_a_study_stored_before_worker_indices_were_counted_gets_new_ones(tmp_path):
    """Its earlier runs each gave out 0, 1, ...: index 0 again would replay worker 0's sampler (same seed)."""
    url, name = f"sqlite:///{tmp_path / 's.db'}", "old"
    study, _ = create_or_resume(cfg_with(study={"name": name}), url, name)
    for _ in range(3):  # two runs' trials, by workers 0 and 1 of each
        trial = study.ask()
        study.tell(trial, 0.5)
    assert keys.WORKER_SLOTS not in study.user_attrs
    assert reserve_worker_indices(url, name, 2) == 3  # past every index a run of 3 trials can have used
    assert reserve_worker_indices(url, name, 1) == 5


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_start_study_runs_get_disjoint_worker_indices(tmp_path, request, backend):
    """Runs that start at once on one host must not give two workers one index (one sampler seed)."""
    url = f"sqlite:///{tmp_path / 's.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    name = f"w-{uuid.uuid4().hex[:8]}"
    create_or_resume(cfg_with(study={"name": name}), url, name)
    try:
        assert reserve_worker_indices(url, name, 2) == 0  # a study's first run: workers 0 and 1, as always
        got = []
        runs = [threading.Thread(target=lambda: got.append(reserve_worker_indices(url, name, 3))) for _ in range(6)]
        for t in runs:
            t.start()
        for t in runs:
            t.join()
        assert sorted(got) == [2, 5, 8, 11, 14, 17]
    finally:
        optuna.delete_study(study_name=name, storage=url)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sweeps_at_once_queue_one_retry_per_dead_trial(tmp_path, request, backend):
    """Workers, claims and the watching driver sweep at the same time; a dead worker's trial must be
    queued again once, not once per sweeper (on SQLite, Optuna's own sweep alone queued 6-10 retries
    of 6 dead trials from 8 sweepers at once)."""
    url = f"sqlite:///{tmp_path / 's.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    name = f"s-{uuid.uuid4().hex[:8]}"
    create_or_resume(cfg_with(study={"name": name, "heartbeat_interval": 1, "grace_period": 2, "reference_trials": False}), url, name)
    try:
        study, cfg, storage = open_for_worker(url, name, 0, log=lambda msg: None)
        for _ in range(6):  # six trials whose workers die after one heartbeat
            storage.record_heartbeat(study.ask(distributions(cfg))._trial_id)
        time.sleep(cfg.study.grace_period + 1.5)
        sweepers = [open_for_worker(url, name, i, log=lambda msg: None) for i in range(1, 9)]
        start = threading.Barrier(len(sweepers))

        def run(s, c, st):
            start.wait()
            sweep(s, c, st)

        threads = [threading.Thread(target=run, args=opened) for opened in sweepers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        trials = study.get_trials()
        retried = sorted(t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs)
        assert retried == [0, 1, 2, 3, 4, 5]
        assert [t.state for t in trials[:6]] == [TrialState.FAIL] * 6
        assert [t.state for t in trials[6:]] == [TrialState.WAITING] * 6
    finally:
        optuna.delete_study(study_name=name, storage=url)


def test_a_resumed_study_names_only_the_settings_the_user_changed(tmp_path):
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    create_or_resume(cfg_with(train={"epochs": 6}).resolved(2, "rare", 50), url, "s")
    again = cfg_with(train={"epochs": 9})  # so "auto" works out another pruner warm-up: not the user's change
    assert {"pruner.n_warmup_steps", "pruner.min_resource", "data.folds"} <= again.derived()
    _, notes = create_or_resume(again.resolved(2, "rare", 50), url, "s", derived=again.derived())
    assert notes == ["study 's' exists; resuming with its stored settings (ignoring changed train.epochs: stored 6, asked 9)"]


def test_a_grid_study_runs_its_reference_trials_first_and_counts_every_queued_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    cfg = cfg_with(study={"name": "g", "sampler": "grid", "grid_points": 2, "n_trials": 2},
                   search={"gamma": [0.0, 4.0], "alpha": [0.2, 0.8]})
    study, notes = create_or_resume(cfg.resolved(2, "rare", 50), url, "g")
    assert notes == ["sampler grid queues 6 trials (a 2 x 2 grid and the reference trials): the study runs 6, not n_trials = 2"]
    assert target(study, cfg) == 6
    study, cfg, storage = open_for_worker(url, "g", worker_index=0)
    order = []
    while (trial := claim_trial(study, cfg, storage)) is not None:
        order.append(keys.REFERENCE in trial.user_attrs)
        study.tell(trial, 0.5)
    assert order == [True, True, False, False, False, False]


def test_a_reference_trial_outside_the_search_space_is_left_out_with_a_note(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study, notes = create_or_resume(cfg_with(study={"name": "n"}, search={"gamma": [0.5, 3.0]}), url, "n")
    assert [t.user_attrs["reference"] for t in study.trials] == ["focal default, gamma=2, alpha=0.25"]
    assert notes == ["the search space leaves out the reference trial (cross-entropy, gamma=0): not run, so nothing is "
                     "measured against it; widen search.gamma or search.alpha to include it"]
    assert create_or_resume(cfg_with(study={"name": "w"}), url, "w")[1] == []  # both fit: no word
