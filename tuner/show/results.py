"""What comes back from a study's models: the final model, and the test-set check of the best trial,
the final model and the reference trials, each at the operating point chosen on validation (what
needs no model, from the stored attributes, is in ``summary``).

Reading never trains: a model file that is not there is an error that names the path, unless the
caller (``start-study``'s driver, ``tuner best --retrain``) asks to retrain."""

import sys
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from tuner import keys
from tuner.learn.checkpoints import decision_cut, ensemble_payload, load_trial_model, model_payload, save_trial_model, trial_path
from tuner.learn.ensemble import combine, validation_logits
from tuner.learn.folds import train_folds
from tuner.search.config import StudyConfig
from tuner.learn.data import Splits, load_data
from tuner.errors import UserError
from tuner.search.study import check_same_images, with_data_root
from tuner.learn.metrics import decide, paired_bootstrap
from tuner.learn.train import heldout_metrics, predict, probabilities, train_trial
from tuner.learn.weights import focus_class
from tuner.show.summary import best_trial, final_members, trial_alpha


def study_data(study: optuna.Study, cfg: StudyConfig) -> Splits:
    """The study's data as ``cfg`` says, checked to be the images the study was created with: a
    report or a test check on other images would not be the study's."""
    data = load_data(with_data_root(cfg, study.study_name, None).data, seed=cfg.study.seed)
    check_same_images(study, data.fingerprints, cfg.data.root)
    return data


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def trial_model(study: optuna.Study, cfg: StudyConfig, trial: optuna.trial.FrozenTrial, data=None,
                retrain: bool = False, say=_note) -> tuple[torch.nn.Module, dict, str]:
    """A finished trial's model, its payload and where it came from: "checkpoint" (its file under
    ``study.artifacts``) or, only with ``retrain``, "retrained" with the trial's parameters and seed
    (and written there, so later reads find it); ``say`` gives that note (a live view's, with its clock)."""
    path = trial_path(cfg, study.study_name, trial.number)
    key = study.user_attrs.get(keys.STUDY_KEY)
    try:
        model, payload = load_trial_model(path)
        if payload.get("study_key") == key:
            return model, payload, "checkpoint"
        problem = (f"has at {path} a model file of another study named {study.study_name!r} (one deleted, or in another storage)"
                   if payload.get("study_key") else  # files of a tuner from before study keys (an older worker, say) have none
                   f"has at {path} a model file with no study key (a tuner older than 2026-11-30 wrote it: give every machine "
                   "of a study the same tuner), so it cannot be told from another study's")
    except FileNotFoundError:
        problem = f"has no model file at {path}"
    except Exception as e:  # torch raises many types on a torn or foreign file
        problem = f"has an unreadable model file at {path} ({type(e).__name__})"
    where = ("pass --artifacts PATH, the folder holding a copy of its model files" if Path(cfg.study.artifacts).is_absolute()
             else "run this from the folder the study ran in (its study.artifacts is relative to it)")
    if not retrain:
        raise UserError(f"trial {trial.number} of study {study.study_name!r} {problem}; {where}, or run tuner best --retrain "
                        "to train it again with its parameters and seed")
    seed = trial.user_attrs.get(keys.SEED)
    if seed is None:
        raise UserError(f"trial {trial.number} of study {study.study_name!r} {problem} and no stored seed to retrain it; {where}")
    data = data or study_data(study, cfg)
    gamma, alpha = trial.params["gamma"], trial_alpha(trial, data.class_counts(), focus_class(cfg, data.classes))
    folds = f" x {cfg.data.folds} folds" if cfg.data.folds > 1 else ""
    say(f"note: trial {trial.number} {problem}; training it again with its parameters and seed "
        f"({cfg.train.epochs} epochs{folds})")  # minutes, where it said nothing
    if cfg.data.folds > 1:  # the trial's model is the ensemble of its k fold models
        result = train_folds(cfg, data, [(gamma, alpha, seed)])[0]
    else:
        result = train_trial(cfg, data, gamma, alpha, seed, device=None)
    model = result.model.cpu()
    save_trial_model(cfg, study.study_name, trial.number, model, data, gamma, alpha, seed, result.history[-1], key)
    return model, model_payload(cfg, trial.number, model, data, gamma, alpha, seed, result.history[-1], key), "retrained"


def final_model(study: optuna.Study, cfg: StudyConfig, data=None, retrain: bool = False,
                loaded: dict | None = None, say=_note) -> tuple[torch.nn.Module, dict, str]:
    """The model the study hands back (``best --save-model``, ``predict``, the report): the best
    trial's, or the mean of ``final_members`` with the temperature and threshold chosen on their
    averaged validation logits (``tuner.learn.ensemble``). ``loaded``: trial number -> what
    ``trial_model`` gave, for trials the caller has already read (filled in here)."""
    members = final_members(study, cfg)
    loaded = {} if loaded is None else loaded
    for t in members:
        if t.number not in loaded:
            loaded[t.number] = trial_model(study, cfg, t, data, retrain, say)
    if len(members) == 1:
        return loaded[members[0].number]
    data = data or study_data(study, cfg)
    got = [loaded[t.number] for t in members]
    parts = []
    for model, payload, _ in got:
        logits, y = validation_logits(model, data, cfg.data.folds, cfg.study.seed)
        parts.append((model, payload["temperature"], logits))
    model, metrics = combine(parts, y, cfg.study.operating_point, focus_class(cfg, data.classes))
    source = "retrained" if any(src == "retrained" for _, _, src in got) else "checkpoint"
    return model, ensemble_payload([p for _, p, _ in got], metrics), source


def decision_of(payload: dict, best: int) -> dict:
    """What a final model that is a mean of trials decides with, as stored for ``tuner best``
    (``best``: the best trial it was made for)."""
    classes = payload["classes"]
    cut = payload.get("class_thresholds")
    return {"trials": payload["trials"], "best_trial": best, "temperature": payload["temperature"],
            "threshold": payload.get("threshold"), "class_thresholds": dict(zip(classes, cut)) if cut else None}


def check_on_test(model: torch.nn.Module, payload: dict, source: str, data: Splits,
                  focus: int | None = None) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """Test-split metrics of a model at its own threshold and temperature, and its probabilities and
    decisions on each test image (to compare models image by image)."""
    logits, temperature = predict(model, data.test_x).float(), payload.get("temperature", 1.0)
    cut = decision_cut(payload)
    out = heldout_metrics(model, data.test_x, data.test_y, cut, temperature, logits=logits, focus=focus)
    decisions = decide(probabilities(logits.double() / temperature).numpy(), cut)
    return {"source": source, "temperature": temperature, **out}, (probabilities(logits).numpy(), decisions)


def evaluate_best_on_test(study: optuna.Study, cfg: StudyConfig, data: Splits | None = None,
                          retrain: bool = False, say=_note) -> dict | None:
    """Test-set metrics of the best trial, of the final model when it is a mean of trials, and of the
    complete reference trials, each reference also against the final model image by image
    (``paired_bootstrap``): the only place the test split is used. Stored with the study for
    ``tuner best``; ``data``: the study's data when already loaded; ``retrain``: train a trial again
    when its model file is not here."""
    best = best_trial(study)
    data = data or study_data(study, cfg)
    loaded = {best.number: trial_model(study, cfg, best, data, retrain, say)}  # each trial's file read once
    final, mean = None, len(final_members(study, cfg)) > 1
    if mean:
        model, payload, source = final_model(study, cfg, data, retrain, loaded, say)
        study.set_user_attr(keys.FINAL_DECISION, decision_of(payload, best.number))
    if data.test_x is None:
        return None
    focus = focus_class(cfg, data.classes)
    out, final_outputs = check_on_test(*loaded[best.number], data, focus)
    out = {"trial": best.number, **out}
    if mean:
        final, final_outputs = check_on_test(model, payload, source, data, focus)
        final = {"trials": payload["trials"], "best_trial": best.number, **final}
    refs = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if keys.REFERENCE in t.user_attrs and (t.number != best.number or final is not None):  # a best reference vs the mean
            if t.number not in loaded:
                loaded[t.number] = trial_model(study, cfg, t, data, retrain, say)
            ref, outputs = check_on_test(*loaded[t.number], data, focus)
            refs.append({"trial": t.number, **ref, "against_final": paired_bootstrap(data.test_y.numpy(), outputs, final_outputs, focus=focus)})
    study.set_user_attr(keys.BEST_TEST, out)
    study.set_user_attr(keys.FINAL_TEST, final)
    study.set_user_attr(keys.REFERENCES_TEST, refs)
    return out


