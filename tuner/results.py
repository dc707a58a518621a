"""What comes back from a study: the best trial, a status table, the test-set check of the best."""

import optuna
from optuna.trial import TrialState

from tuner.checkpoints import load_trial_model, trial_path
from tuner.config import StudyConfig
from tuner.data import load_data
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


def evaluate_best_on_test(study: optuna.Study, cfg: StudyConfig) -> dict | None:
    """Test-set metrics of the best trial, from its saved model or, when none is kept here,
    by retraining with its parameters and seed. The only place the test split is used."""
    best = best_trial(study)
    data = load_data(cfg.data, seed=cfg.study.seed)
    if data.test_x is None:
        return None
    path = trial_path(cfg, study.study_name, best.number)
    if path.exists():
        model, _ = load_trial_model(path)
        source = "saved model"
    else:
        gamma, alpha = best.params["gamma"], best.params["alpha"]
        model = train_trial(cfg, data, gamma, alpha, best.user_attrs["seed"], device=None).model.cpu()
        source = "retrained"
    logits = predict(model, data.test_x)
    out = {"trial": best.number, "source": source, "n": len(data.test_y),
           **scores(probabilities(logits), data.test_y),
           "confusion_matrix": confusion(probabilities(logits), data.test_y, data.num_classes)}
    study.set_user_attr(TEST_ATTR, out)
    return out
