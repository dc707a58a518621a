"""A study's trials as CSV or JSON rows, and its final model as a file of its own.

>>> study = optuna.load_study(study_name="smoke", storage="sqlite:///tuner.db")  # doctest: +SKIP
>>> write_rows(trial_rows(study), "csv", "trials.csv")
>>> save_best_model(study, Path("best.pt"))["source"]  # also writes best.pt.json
'checkpoint'
"""

import contextlib
import csv
import io
import json
import math
import os
import sys
from pathlib import Path

import optuna

from tuner import keys
from tuner.errors import UserError
from tuner.show.summary import best_trial, final_test, shown_params, threshold_rule, trial_threshold
from tuner.search.config import StudyConfig
from tuner.search.study import SILENT, queued_again, silent, stored_config, trial_duration

FORMATS = ("csv", "json")
# Stored attribute -> column. Each trial's loss is the focal loss with its own gamma and alpha, so
# the loss columns say so: they rank nothing across trials.
METRICS = {k: k for k in (keys.AVERAGE_PRECISION, keys.THRESHOLD, keys.BALANCED_ACCURACY, keys.MACRO_F1, keys.RECALL,
                          keys.PRECISION, keys.BALANCED_ACCURACY_HALF, keys.MACRO_F1_HALF, keys.ECE, keys.ECE_CALIBRATED,
                          keys.TEMPERATURE, keys.FOLD_SPREAD)} | {keys.LOSS: "own_focal_loss", keys.TRAIN_LOSS: "own_focal_loss_train"}
COLUMNS = ("trial", "state", "gamma", "alpha", "beta", "value", *METRICS.values(), "epochs", "duration_s", "prune_reason", "reference",
           "stop_reason", "error", "retry_of", "queued_again_as", "threshold_of", "worker")


def trial_rows(study: optuna.Study) -> list[dict]:
    """One dict per trial, keys COLUMNS, None where a trial has no such value."""
    rows = []
    trials = study.get_trials(deepcopy=False)
    again = queued_again(trials)
    focus, cut = threshold_rule(study)
    for t in trials:
        a = t.user_attrs
        history = t.system_attrs.get("retry_history")
        params = shown_params(t)
        rows.append({"trial": t.number, "state": t.state.name, "gamma": params.get("gamma"), "alpha": params.get("alpha"),
                     "beta": params.get("beta"), "value": t.value, **{c: a.get(k) for k, c in METRICS.items()},
                     "epochs": a.get(keys.EPOCHS, 0),
                     "duration_s": trial_duration(t), "prune_reason": a.get(keys.PRUNE_REASON), "reference": a.get(keys.REFERENCE),
                     "stop_reason": a.get(keys.STOP_REASON) or (SILENT if silent(t) else None), "error": a.get(keys.ERROR),
                     "retry_of": history[-1] if history else None,
                     "queued_again_as": again.get(t.number) if t.state == optuna.trial.TrialState.FAIL else None,
                     "threshold": trial_threshold(t, focus), "threshold_of": cut, "worker": a.get(keys.WORKER)})
    return rows


def write_rows(rows: list[dict], fmt: str, out: str | Path | None = None) -> None:
    """CSV (empty cell for None) or a JSON list (null for None and NaN) to ``out``, or stdout."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not supported; use --format csv or --format json")
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    else:
        clean = [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()} for r in rows]
        text = json.dumps(clean, indent=1) + "\n"
    if out is None or str(out) == "-":  # "-": stdout, as for most tools
        sys.stdout.write(text)
        return
    if Path(out).is_file() and binary(Path(out)):
        raise UserError(f"--out {out} is a file that is not a CSV or JSON export (a database, a model?); pass another "
                        "path, or delete that file first")
    write_whole({Path(out): text.encode()}, f"{out}", "pass an --out path in a writable folder")


def binary(path: Path) -> bool:
    """Whether a file holds bytes no text export writes (SQLite's header has a NUL, so has a model)."""
    try:
        with open(path, "rb") as f:
            return b"\0" in f.read(4096)
    except OSError:
        return False


def write_whole(files: dict[Path, bytes], what: str, advice: str) -> None:
    """Write each file whole or not at all: to a temporary file beside it, renamed over it once all are
    written, so a full disk leaves neither half a file nor a new model beside its old settings."""
    done = {}
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)  # as report --out does
            done[path] = path.with_name(f".{path.name}.tmp{os.getpid()}")
            done[path].write_bytes(data)
        for path, tmp in done.items():
            os.replace(tmp, path)
    except OSError as e:
        for tmp in done.values():
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        # mkdir says "File exists" where a folder on the way is a file
        blocked = next((p for path in files for p in reversed(path.parents) if p.is_file()), None)
        why = f"{blocked} is a file, not a folder" if blocked else e.strerror
        raise UserError(f"cannot write {what}: {why}; {advice}")


def saved_by_tuner(path: Path) -> bool:
    """Whether ``path`` holds a model ``best --save-model`` wrote, so it may be written over."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types on a file that is not a checkpoint
        return False
    return isinstance(payload, dict) and ("state_dict" in payload or "members" in payload)


def save_best_model(study: optuna.Study, path: str | Path, cfg: StudyConfig | None = None) -> dict:
    """Write the final model (``tuner.show.results.final_model``: the mean of the best trials and the
    reference trials, or the best trial's) to ``path`` (``torch.load(path, weights_only=True)``
    reads it; ``tuner predict`` uses it) and its settings to ``path.json``; returns the settings."""
    import torch  # here, not at the top: ``tuner export`` writes rows without loading torch

    from tuner.learn.checkpoints import detected_class
    from tuner.show.results import decision_of, final_model

    path = Path(path)
    if path.is_dir():
        raise UserError(f"--save-model {path} is a folder; pass a file path such as {path / 'best.pt'}")
    if path.is_file() and not saved_by_tuner(path):
        raise UserError(f"--save-model {path} is a file that is not a model saved by tuner; pass another path, or "
                        "delete that file first")
    cfg = cfg or stored_config(study)
    model, payload, source = final_model(study, cfg)
    best = best_trial(study)
    members = payload.get("members", [payload])
    if "members" in payload:
        test = final_test(study, decision=decision_of(payload, best.number))  # one made at what this file decides by
    else:
        test = study.user_attrs.get(keys.BEST_TEST)
        test = test if test and test.get("trial") == best.number else None  # none yet, or of an earlier best trial
    settings = {"study": study.study_name, "trial": best.number, "metric": cfg.study.metric, "value": best.value,
                "final_model": "ensemble" if "members" in payload else "best_trial", "trials": [m["trial"] for m in members],
                "members": [{"trial": m["trial"], "params": m["params"], "seed": m["seed"], "temperature": m["temperature"]}
                            for m in members],
                "params": members[0]["params"], "seed": members[0]["seed"], "classes": payload["classes"], "model": payload["model"],
                "positive_class": payload["positive_class"] or detected_class(payload), "operating_point": payload["operating_point"],
                "threshold": payload["threshold"], "class_thresholds": payload.get("class_thresholds"),
                "temperature": payload["temperature"],
                "data": {"kind": cfg.data.kind, "image_size": cfg.data.image_size, "grayscale": cfg.data.grayscale},
                # a model file --retrain wrote is a retrained one, though read back from the file
                "source": "retrained" if (test or {}).get("source") == "retrained" else source, "test": test}
    buf = io.BytesIO()
    torch.save(payload, buf)  # in memory: torch's own file writer turns a full disk into errors without an errno
    write_whole({path: buf.getvalue(), Path(f"{path}.json"): (json.dumps(settings, indent=1) + "\n").encode()},
                f"the model to {path}", "pass a --save-model path in a writable folder")
    if "members" in payload:  # best and the report show the threshold predict will use
        study.set_user_attr(keys.FINAL_DECISION, decision_of(payload, best.number))
    return settings
