"""What comes back from a study: the best trial, a status table, the test-set check of the best."""

import optuna
import torch
from optuna.trial import TrialState

from tuner.checkpoints import load_trial_model, model_payload, trial_path
from tuner.config import StudyConfig
from tuner.data import Splits, load_data
from tuner.errors import UserError
from tuner.metrics import confusion, scores
from tuner.study import counts
from tuner.train import predict, probabilities, train_trial

TEST_ATTR = "best_test"


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    try:
        return study.best_trial
    except ValueError:
        c = counts(study)
        raise UserError(f"study {study.study_name!r} has no completed trial yet "
                        f"({c['RUNNING']} running, {c['PRUNED']} pruned, {c['FAIL']} failed); run tuner start-study or tuner worker")


def best_summary(study: optuna.Study, cfg: StudyConfig) -> dict:
    """The contract of ``tuner best --json``."""
    best = best_trial(study)
    test = study.user_attrs.get(TEST_ATTR)
    refs = [
        {"trial": t.number, "label": t.user_attrs["reference"], "state": t.state.name, "value": t.value}
        for t in study.get_trials(deepcopy=False) if "reference" in t.user_attrs and t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    ]
    return {
        "study": study.study_name,
        "metric": cfg.study.metric,
        "value": best.value,
        "trial": best.number,
        "params": {"gamma": best.params["gamma"], "alpha": best.params["alpha"]},
        "validation": {k: best.user_attrs[k] for k in ("average_precision", "balanced_accuracy", "macro_f1", "loss") if k in best.user_attrs},
        "epochs": best.user_attrs.get("epochs"),
        "seed": best.user_attrs.get("seed"),
        "test": test if test and test.get("trial") == best.number else None,
        "references": refs,
        "counts": {k: v for k, v in counts(study).items() if k in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")},
    }


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
            "value": t.value,
            "epochs": t.user_attrs.get("epochs", 0),
            "duration_s": duration,
            "note": "; ".join(str(t.user_attrs[k]) for k in ("reference", "prune_reason", "stop_reason", "error")
                              if k in t.user_attrs),
        })
    return rows


def best_model(study: optuna.Study, cfg: StudyConfig, data=None) -> tuple[torch.nn.Module, dict, str]:
    """The best trial's model, its checkpoint-style payload and where it came from: "checkpoint"
    (``study.artifacts`` seen from the current folder) or "retrained" with the trial's params and seed."""
    best = best_trial(study)
    path = trial_path(cfg, study.study_name, best.number)
    if path.is_file():
        try:
            model, payload = load_trial_model(path)
            return model, payload, "checkpoint"
        except (OSError, RuntimeError, EOFError, KeyError):
            pass  # a torn or foreign file: retraining gives the same model
    seed = best.user_attrs.get("seed")
    if seed is None:
        raise UserError(f"trial {best.number} of study {study.study_name!r} has no checkpoint at {path} and no stored seed to retrain "
                        "it; run this from the folder the study ran in")
    data = data or load_data(cfg.data, seed=cfg.study.seed)
    gamma, alpha = best.params["gamma"], best.params["alpha"]
    model = train_trial(cfg, data, gamma, alpha, seed, device=None).model.cpu()
    return model, model_payload(cfg, best.number, model, data, gamma, alpha, seed), "retrained"


def evaluate_best_on_test(study: optuna.Study, cfg: StudyConfig, data: Splits | None = None) -> dict | None:
    """Test-set metrics of the best trial (the only place the test split is used), stored with
    the study for ``tuner best``; ``data``: the study's data when already loaded."""
    best = best_trial(study)
    data = data or load_data(cfg.data, seed=cfg.study.seed)
    if data.test_x is None:
        return None
    model, _, source = best_model(study, cfg, data)
    logits = predict(model, data.test_x)
    out = {"trial": best.number, "source": source, "n": len(data.test_y),
           **scores(probabilities(logits), data.test_y),
           "confusion_matrix": confusion(probabilities(logits), data.test_y, data.num_classes)}
    study.set_user_attr(TEST_ATTR, out)
    return out
