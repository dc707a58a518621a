"""What comes back from a study: the best trial, a status table, the test-set check of the best
trial and of the reference trials, each at the operating point its trial chose on validation.

Reading never trains: a model file that is not there is an error that names the path, unless the
caller (``start-study``'s driver, ``tuner best --retrain``) asks to retrain."""

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from tuner import keys
from tuner.learn.checkpoints import decision_cut, ensemble_payload, load_trial_model, model_payload, save_trial_model, trial_path
from tuner.learn.ensemble import combine, validation_logits
from tuner.search.config import StudyConfig
from tuner.learn.data import Splits, load_data
from tuner.errors import UserError
from tuner.search.storage import open_storage
from tuner.search.lifecycle import KEEP_MODELS
from tuner.search.study import check_same_images, counts, with_data_root
from tuner.learn.metrics import decide, paired_bootstrap
from tuner.learn.train import alpha_per_class, focus_class, heldout_metrics, loss_alpha, predict, probabilities, train_trial



def study_data(study: optuna.Study, cfg: StudyConfig) -> Splits:
    """The study's data as ``cfg`` says, checked to be the images the study was created with: a
    report or a test check on other images would not be the study's."""
    data = load_data(with_data_root(cfg, study.study_name, None).data, seed=cfg.study.seed)
    check_same_images(study, data.fingerprints, cfg.data.root)
    return data


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    try:
        return study.best_trial
    except ValueError:
        c = counts(study)
        raise UserError(f"study {study.study_name!r} has no completed trial yet "
                        f"({c['RUNNING']} running, {c['PRUNED']} pruned, {c['FAIL']} failed); run tuner start-study or tuner worker")


def trial_alpha(trial: optuna.trial.FrozenTrial, class_counts: list[int]):
    """The class weighting the trial trained with, as the loss took it."""
    return None if trial.user_attrs.get(keys.UNWEIGHTED) else loss_alpha(trial.params, class_counts)


def shown_params(trial: optuna.trial.FrozenTrial) -> dict:
    """The trial's parameters, with beta next to the searched 1 - beta."""
    params = dict(trial.params)
    if "one_minus_beta" in params:
        params["beta"] = 1.0 - params["one_minus_beta"]
    return params


def best_summary(study: optuna.Study, cfg: StudyConfig) -> dict:
    """The contract of ``tuner best --json``."""
    best = best_trial(study)
    data = study.user_attrs.get(keys.DATA, {})
    classes, class_counts = data.get("classes"), data.get("class_counts")
    test = study.user_attrs.get(keys.BEST_TEST)
    test = test if test and test.get("trial") == best.number else None
    ref_tests = {r["trial"]: r for r in study.user_attrs.get(keys.REFERENCES_TEST, [])}
    refs = [
        {"trial": t.number, "label": t.user_attrs[keys.REFERENCE], "state": t.state.name, "value": t.value,
         "params": shown_params(t), "threshold": t.user_attrs.get(keys.THRESHOLD),
         "test": test if t.number == best.number else ref_tests.get(t.number)}
        for t in study.get_trials(deepcopy=False) if keys.REFERENCE in t.user_attrs and t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    ]
    return {
        "study": study.study_name,
        "metric": cfg.study.metric,
        "value": best.value,
        "trial": best.number,
        "params": shown_params(best),
        "alpha_mode": cfg.search.alpha_mode,
        "alpha_per_class": alpha_per_class(trial_alpha(best, class_counts), classes) if classes and class_counts else None,
        "positive_class": cfg.data.positive_class or None,
        "operating_point": cfg.study.operating_point,
        "threshold": best.user_attrs.get(keys.THRESHOLD),
        "class_thresholds": (dict(zip(classes, best.user_attrs[keys.CLASS_THRESHOLDS]))
                             if classes and keys.CLASS_THRESHOLDS in best.user_attrs else None),
        "temperature": best.user_attrs.get(keys.TEMPERATURE),
        "validation": {k: best.user_attrs[k] for k in keys.VALIDATION if k in best.user_attrs},
        "epochs": best.user_attrs.get(keys.EPOCHS),
        "folds": cfg.data.folds,
        "final_model": final_words(cfg, [t.number for t in final_members(study, cfg)]),
        "final": final_test(study),
        "notes": margin_notes(study, cfg),
        "seed": best.user_attrs.get(keys.SEED),
        "test": test,
        # an image folder without test/ has none: say so rather than leave the test check out unexplained
        "test_split": study.user_attrs.get(keys.DATA, {}).get("fingerprints", {}).get("test") != "",
        "test_notes": notes_on_test(study) if test else [],
        "references": refs,
        "counts": {k: v for k, v in counts(study).items() if k in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")},
    }


def margin_notes(study: optuna.Study, cfg: StudyConfig) -> list[str]:
    """A sentence for each reference trial that the best trial beats by less than its fold spread."""
    best = best_trial(study)
    spread = best.user_attrs.get(keys.FOLD_SPREAD)
    if spread is None:
        return []
    notes = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if keys.REFERENCE in t.user_attrs and t.number != best.number and best.value - t.value <= spread:
            notes.append(f"The best trial's margin over reference trial {t.number} ({t.user_attrs[keys.REFERENCE]}) is "
                         f"{best.value - t.value:.4f}, within its fold spread of {spread:.4f}: on this data the "
                         "two cannot be told apart.")
    return notes


def notes_on_test(study: optuna.Study) -> list[str]:
    """A sentence per reference trial on how it compares on the test split with the model the study
    hands back (``final_model``), on average precision and balanced accuracy, told apart from the
    test split's noise: a difference counts only when it exceeds twice its bootstrap standard
    deviation (``paired_bootstrap``)."""
    best = study.user_attrs.get(keys.BEST_TEST)
    if not best or best.get("trial") != best_trial(study).number:  # none yet, or of an earlier best trial
        return []
    final = final_test(study)
    if final:
        ours, short = final_label(final["trials"]), "the final model"
    else:
        final, ours, short = best, f"the best trial {best['trial']}", "the best trial"
    labels = {t.number: t.user_attrs.get(keys.REFERENCE) for t in study.get_trials(deepcopy=False)}
    notes = []
    for ref in study.user_attrs.get(keys.REFERENCES_TEST, []):
        gap = ref.get("against_final", {})  # checks stored before the bootstrap have none
        who = f"reference trial {ref['trial']} ({labels.get(ref['trial'])})"
        said, real = {}, {}
        for k, name in ((keys.AVERAGE_PRECISION, "AP"), (keys.BALANCED_ACCURACY, "balanced accuracy")):
            std = gap.get(k + "_std")
            real[k] = std is None or abs(ref[k] - final[k]) > 2 * std
            said[k] = (f"{name} {ref[k]:.4f} for the reference against {final[k]:.4f} for {short}"
                       + ("" if std is None else f" (bootstrap std of the difference {std:.4f})"))
        higher = [k for k in real if real[k] and ref[k] > final[k]]
        unclear = [k for k in real if not real[k]]
        if higher:
            notes.append(f"On the test split {who} scored higher than {ours}: "
                         f"{', '.join(said[k] for k in higher)}. The tuned loss did not beat it here; if this holds on "
                         "more data, train with the reference's settings.")
        elif unclear:
            notes.append(f"On the test split {ours} is not shown to beat {who}: "
                         f"{', '.join(said[k] for k in unclear)}; a difference under twice its bootstrap std is the luck "
                         "of the test images.")
        elif gap:
            notes.append(f"On the test split {ours} beat {who} by more than twice the bootstrap "
                         f"std of each difference: {', '.join(said.values())}.")
    return notes


def study_rows(url: str) -> list[dict]:
    """One row per study in the storage (``tuner list``): trial counts and the best value so far."""
    storage = open_storage(url, existing=True)
    rows = []
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        c = counts(study)
        try:
            best = study.best_trial
        except (ValueError, RuntimeError):  # none complete yet, or a multi-objective study of another tool
            best = None
        metric = (study.user_attrs.get(keys.CONFIG, {}).get("study", {}).get("metric") or
                  ",".join(study.metric_names or []) or None)
        rows.append({"study": study.study_name, "metric": metric, "target": study.user_attrs.get(keys.TARGET),
                     "complete": c["COMPLETE"], "pruned": c["PRUNED"], "running": c["RUNNING"], "waiting": c["WAITING"],
                     "failed": c["FAIL"], "best_value": None if best is None else best.value,
                     "best_trial": None if best is None else best.number})
    return rows


def status_rows(study: optuna.Study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        end = t.datetime_complete
        duration = (end - t.datetime_start).total_seconds() if end and t.datetime_start else None
        rows.append({
            "trial": t.number,
            "state": t.state.name,
            "gamma": t.params.get("gamma"),
            "alpha": t.params.get("alpha"),
            "beta": shown_params(t).get("beta"),
            "value": t.value,
            "threshold": t.user_attrs.get(keys.THRESHOLD),
            "epochs": t.user_attrs.get(keys.EPOCHS, 0),
            "duration_s": duration,
            "note": "; ".join(str(t.user_attrs[k]) for k in (keys.REFERENCE, keys.PRUNE_REASON, keys.STOP_REASON, keys.ERROR)
                              if k in t.user_attrs),
        })
    return rows


def trial_model(study: optuna.Study, cfg: StudyConfig, trial: optuna.trial.FrozenTrial, data=None,
                retrain: bool = False) -> tuple[torch.nn.Module, dict, str]:
    """A finished trial's model, its payload and where it came from: "checkpoint" (its file under
    ``study.artifacts``, seen from the current folder) or, only with ``retrain``, "retrained" with
    the trial's parameters and seed (and written there, so later reads find it)."""
    path = trial_path(cfg, study.study_name, trial.number)
    try:
        model, payload = load_trial_model(path)
        return model, payload, "checkpoint"
    except FileNotFoundError:
        problem = f"has no model file at {path}"
    except Exception as e:  # torch raises many types on a torn or foreign file
        problem = f"has an unreadable model file at {path} ({type(e).__name__})"
    if not retrain:
        raise UserError(f"trial {trial.number} of study {study.study_name!r} {problem}; run this from the folder the "
                        "study ran in (study.artifacts is relative to it), or run tuner best --retrain to train it again "
                        "with its parameters and seed")
    seed = trial.user_attrs.get(keys.SEED)
    if seed is None:
        raise UserError(f"trial {trial.number} of study {study.study_name!r} {problem} and no stored seed to retrain it; "
                        "run this from the folder the study ran in")
    data = data or study_data(study, cfg)
    gamma, alpha = trial.params["gamma"], trial_alpha(trial, data.class_counts())
    result = train_trial(cfg, data, gamma, alpha, seed, device=None)
    model = result.model.cpu()
    save_trial_model(cfg, study.study_name, trial.number, model, data, gamma, alpha, seed, result.history[-1])
    return model, model_payload(cfg, trial.number, model, data, gamma, alpha, seed, result.history[-1]), "retrained"


def final_members(study: optuna.Study, cfg: StudyConfig) -> list[optuna.trial.FrozenTrial]:
    """The trials whose models the final model averages: with ``study.final_model = "ensemble"``
    the best KEEP_MODELS complete trials and the complete reference trials (the models a study
    keeps), best first; else the best trial alone."""
    best = best_trial(study)
    if cfg.study.final_model != "ensemble":
        return [best]
    done = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value, reverse=True)
    top = [t for t in done if keys.REFERENCE not in t.user_attrs][:KEEP_MODELS]
    return sorted(top + [t for t in done if keys.REFERENCE in t.user_attrs], key=lambda t: (t.number != best.number, -t.value))


def final_model(study: optuna.Study, cfg: StudyConfig, data=None, retrain: bool = False,
                loaded: dict | None = None) -> tuple[torch.nn.Module, dict, str]:
    """The model the study hands back (``best --save-model``, ``predict``, the report): the best
    trial's, or the mean of ``final_members`` with the temperature and threshold chosen on their
    averaged validation logits (``tuner.learn.ensemble``). ``loaded``: trial number -> what
    ``trial_model`` gave, for trials the caller has already read (filled in here)."""
    members = final_members(study, cfg)
    loaded = {} if loaded is None else loaded
    for t in members:
        if t.number not in loaded:
            loaded[t.number] = trial_model(study, cfg, t, data, retrain)
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


def final_label(trials: list[int]) -> str:
    """How tuner names a final model that is a mean of trials."""
    return f"the final model (the mean of trials {', '.join(map(str, trials))})"


def final_words(cfg: StudyConfig, trials: list[int] | None = None) -> str:
    """What the final model is, in words."""
    if cfg.data.folds > 1:
        one = (f"an ensemble of the {cfg.data.folds} fold models (mean of their logits), each trained on "
               f"{cfg.data.folds - 1}/{cfg.data.folds} of the training images")
    else:
        one = f"one model trained on {1 - cfg.data.val_fraction:.0%} of the training images (the rest validated it)"
    if trials is None or len(trials) < 2:
        return f"the best trial's model, {one}"
    return (f"the mean of the calibrated logits of trials {', '.join(map(str, trials))} (the best {KEEP_MODELS} trials and "
            f"the reference trials), each {one}; one temperature and threshold chosen on their averaged "
            "validation predictions")


def check_on_test(model: torch.nn.Module, payload: dict, source: str, data: Splits,
                  focus: int | None = None) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """Test-split metrics of a model at its own threshold and temperature, and its probabilities and
    decisions on each test image (to compare models image by image)."""
    logits, temperature = predict(model, data.test_x).float(), payload.get("temperature", 1.0)
    cut = decision_cut(payload)
    out = heldout_metrics(model, data.test_x, data.test_y, cut, temperature, logits=logits, focus=focus)
    decisions = decide(probabilities(logits.double() / temperature).numpy(), cut)
    return {"source": source, **out}, (probabilities(logits).numpy(), decisions)


def evaluate_best_on_test(study: optuna.Study, cfg: StudyConfig, data: Splits | None = None,
                          retrain: bool = False) -> dict | None:
    """Test-set metrics of the best trial, of the final model when it is a mean of trials, and of the
    complete reference trials, each reference also against the final model image by image
    (``paired_bootstrap``): the only place the test split is used. Stored with the study for
    ``tuner best``; ``data``: the study's data when already loaded; ``retrain``: train a trial again
    when its model file is not here."""
    best = best_trial(study)
    data = data or study_data(study, cfg)
    if data.test_x is None:
        return None
    loaded = {best.number: trial_model(study, cfg, best, data, retrain)}  # each trial's file read once
    focus = focus_class(cfg, data.classes)
    out, final_outputs = check_on_test(*loaded[best.number], data, focus)
    out = {"trial": best.number, **out}
    final = None
    if len(final_members(study, cfg)) > 1:
        model, payload, source = final_model(study, cfg, data, retrain, loaded)
        final, final_outputs = check_on_test(model, payload, source, data, focus)
        final = {"trials": payload["trials"], "best_trial": best.number, **final}
    refs = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if keys.REFERENCE in t.user_attrs and t.number != best.number:
            if t.number not in loaded:
                loaded[t.number] = trial_model(study, cfg, t, data, retrain)
            ref, outputs = check_on_test(*loaded[t.number], data, focus)
            refs.append({"trial": t.number, **ref, "against_final": paired_bootstrap(data.test_y.numpy(), outputs, final_outputs)})
    study.set_user_attr(keys.BEST_TEST, out)
    study.set_user_attr(keys.FINAL_TEST, final)
    study.set_user_attr(keys.REFERENCES_TEST, refs)
    return out


def final_test(study: optuna.Study) -> dict | None:
    """The stored test check of the final model when it is a mean of trials and of the current best."""
    final = study.user_attrs.get(keys.FINAL_TEST)
    return final if final and final.get("best_trial") == best_trial(study).number else None
