"""The study layer: storage, sampler, pruner, reference trials. It knows nothing about torch.

>>> cfg = load_config("studies/synthetic-smoke.toml")            # doctest: +SKIP
>>> study = create_or_resume(cfg, "sqlite:///tuner.db", cfg.study.name)
>>> study, cfg, storage = open_for_worker("sqlite:///tuner.db", cfg.study.name, worker_index=0)
>>> trial = claim_trial(study, cfg, storage)                  # None once the study is full
"""

import dataclasses
import itertools
import socket
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from tuner import keys
from tuner.search import config as config_mod
from tuner.search.config import StudyConfig, check_study_name
from tuner.errors import UserError
from tuner.search.liveness import DbRetry, fail_orphans
from tuner.search.storage import mask, new_sqlite_file, open_storage, study_lock

KEEP_MODELS = 3  # finished trials whose model files are kept, besides the reference trials'

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
REFERENCES = {  # alpha_mode -> (params, label, trial attributes)
    "rare": (
        ({"gamma": 0.0, "alpha": 0.5}, "cross-entropy, gamma=0", {}),
        ({"gamma": 2.0, "alpha": 0.25}, "focal default, gamma=2, alpha=0.25", {}),
    ),
    "class_balanced": (
        ({"gamma": 0.0, "one_minus_beta": None}, "cross-entropy, gamma=0, no class weights; its beta is unused",
         {keys.UNWEIGHTED: True}),
        ({"gamma": 2.0, "one_minus_beta": 0.001}, "focal gamma=2 with class-balanced weights of beta=0.999", {}),
    ),
}



def distributions(cfg: StudyConfig) -> dict[str, FloatDistribution]:
    """gamma, and alpha (the weight of the positive class, or of the class to detect or the rarest) or
    1 - beta (class-balanced weights, log scale: beta = 0.9, 0.99, 0.999 are equally far apart)."""
    if cfg.search.alpha_mode == "class_balanced":
        lo, hi = cfg.search.beta
        return {"gamma": FloatDistribution(*cfg.search.gamma), "one_minus_beta": FloatDistribution(1 - hi, 1 - lo, log=True)}
    return {"gamma": FloatDistribution(*cfg.search.gamma), "alpha": FloatDistribution(*cfg.search.alpha)}


def reserve_worker_indices(url: str, name: str, n: int) -> int:
    """The first of ``n`` worker indices that no earlier start-study of this study got, on any host:
    two workers with one index would share a sampler seed (so propose the same parameters) and a name."""
    storage = open_storage(url)
    study = optuna.load_study(study_name=name, storage=storage)
    with study_lock(storage, name):
        first = study.user_attrs.get(keys.WORKER_SLOTS)
        if first is None:  # none counted yet; a study stored before the count reused 0, 1, ...: start past any index those ran
            first = sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))
        study.set_user_attr(keys.WORKER_SLOTS, first + n)
    return first


def worker_name(index: int) -> str:
    """How a trial names the worker that ran it: host and worker index."""
    return f"{socket.gethostname()}:{index}"


def describe_params(params: dict, unweighted: bool = False) -> str:
    """E.g. "gamma=2.000 alpha=0.250" or "gamma=2.000 beta=0.9990"; an unweighted trial's alpha or beta
    is stored (Optuna needs a value) but unused, so it is not shown."""
    parts = [f"gamma={params['gamma']:.3f}"] if "gamma" in params else []
    if unweighted:
        return " ".join(parts + ["no class weights"])
    if "alpha" in params:
        parts.append(f"alpha={params['alpha']:.3f}")
    if "one_minus_beta" in params:
        parts.append(f"beta={1 - params['one_minus_beta']:.4f}")
    return " ".join(parts)


def describe_trial(trial) -> str:
    """``describe_params`` of a trial (an ``optuna.Trial`` or a frozen one)."""
    return describe_params(trial.params, trial.user_attrs.get(keys.UNWEIGHTED, False))


SILENT = "its worker went silent: killed, or cut off from the database"


def silent(trial) -> bool:
    """A failed trial that gave no reason: only a worker that stopped answering leaves one so."""
    return trial.state == TrialState.FAIL and not (trial.user_attrs.get(keys.STOP_REASON) or trial.user_attrs.get(keys.ERROR))


def trial_note(trial) -> str:
    """What the read commands say beside a trial: its reference label, prune, stop and error reasons;
    for a failed trial that gave none, that its worker died (only a worker that stopped answering
    leaves one so: the study's sweep failed it)."""
    a = trial.user_attrs
    if silent(trial):
        return "; ".join(([str(a[keys.REFERENCE])] if a.get(keys.REFERENCE) else []) + [SILENT])
    return "; ".join(str(a[k]) for k in (keys.REFERENCE, keys.PRUNE_REASON, keys.STOP_REASON, keys.ERROR) if a.get(k))


def trial_duration(trial) -> float | None:
    """Seconds the trial ran: the worker's own clock, as its log line says, else the storage's."""
    duration = trial.user_attrs.get(keys.DURATION_S)
    if duration is None and trial.datetime_start and trial.datetime_complete:
        duration = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 2)
    return duration


def reference_trials(cfg: StudyConfig) -> list[tuple[dict, str, dict]]:
    """The reference trials that fit the search space: (params, label, trial attributes)."""
    space = distributions(cfg)
    out = []
    for params, label, attrs in REFERENCES["class_balanced" if "one_minus_beta" in space else "rare"]:
        params = {k: space[k].high if v is None else v for k, v in params.items()}  # None: any value, unused
        if all(space[k].low <= v <= space[k].high for k, v in params.items()):
            out.append((params, label, attrs))
    return out


def make_sampler(cfg: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    """Each worker passes its own seed: equal seeds make parallel TPE workers propose duplicates."""
    s = cfg.study
    if s.sampler in ("random", "grid"):  # a grid is queued at creation; random fills any trials past it
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(n_startup_trials=s.n_startup_trials, multivariate=True, constant_liar=True, seed=seed)


def make_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    p = cfg.pruner_resolved()
    if p.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, max_resource=cfg.train.epochs, reduction_factor=p.reduction_factor)
    if p.kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def create_or_resume(cfg: StudyConfig, url: str, name: str, n_trials: int | None = None,
                     classes: list[str] | None = None, class_counts: list[int] | None = None,
                     fingerprints: dict[str, str] | None = None,
                     derived: set[str] = frozenset(), artifacts: str | None = None) -> tuple[optuna.Study, list[str]]:
    """Create the study, or resume it when it exists with the same search space and images.
    ``classes`` and ``class_counts`` (of the training split) are stored for reports, ``fingerprints``
    (of an image folder's train and test files) so that every later run, worker and report checks its
    images against them. ``derived``: keys of ``cfg`` worked out, not given (``StudyConfig.derived``).
    ``artifacts``: this run's own folder for model files (``--artifacts``), when it names one.

    Returns the study and notes for the user (settings kept from the stored study).
    """
    check_study_name(name)
    if new_sqlite_file(url):  # so the error leaves no empty database file behind
        check_references_fit(cfg, n_trials or cfg.study.n_trials)
    storage = open_storage(url)
    notes = []
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        existing = None
    check_references_fit(stored_config(existing) if existing else cfg, n_trials or cfg.study.n_trials)
    if existing is None:
        if moved := move_aside(Path(cfg.study.artifacts), name):  # before the study exists: an error leaves nothing half made
            notes.append(f"{Path(cfg.study.artifacts) / name} held the files of an earlier study named {name!r} (deleted, or in "
                         f"another storage); moved them to {moved}, where that study's commands find them with "
                         f"--artifacts {moved.parent}")
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
        study.set_user_attr(keys.STUDY_KEY, uuid.uuid4().hex)  # first: a worker that finds the config finds the key
        study.set_user_attr(keys.CONFIG, cfg.to_dict())
        study.set_metric_names([cfg.study.metric])
        if cfg.study.reference_trials:  # first: the searched trials are measured against them
            for params, label, attrs in reference_trials(cfg):
                study.enqueue_trial(params, user_attrs={keys.REFERENCE: label, **attrs})
            kept = {label for _, label, _ in reference_trials(cfg)}
            mode = "class_balanced" if cfg.search.alpha_mode == "class_balanced" else "rare"
            if left := [label for _, label, _ in REFERENCES[mode] if label not in kept]:
                them = "them" if len(left) > 1 else "it"
                notes.append(f"the search space leaves out the reference trial{'s' * (len(left) > 1)} ({'; '.join(left)}): "
                             f"not run, so nothing is measured against {them}; widen search.gamma or search.alpha to include {them}")
        queue_grid(study, cfg)
    else:
        stored = stored_config(existing)
        check_same_images(existing, fingerprints or {}, cfg.data.root)
        if stored.search_space() != cfg.search_space():
            was, asked = stored.search_space(), cfg.search_space()
            differ = "; ".join(f"{'study' if k == 'metric' else 'search'}.{k}: stored {was.get(k)!r}, asked {asked.get(k)!r}"
                               for k in {**was, **asked} if was.get(k) != asked.get(k))
            raise UserError(f"study {name!r} already exists in {mask(url)} with another search space ({differ}); "
                            "pass a new --study-name or use the stored settings")
        changed = [f"{sec}.{k}" for sec, vals in cfg.to_dict().items() for k, v in vals.items()
                   if stored.to_dict()[sec][k] != v and f"{sec}.{k}" not in {"study.n_trials", "data.root", "study.artifacts", *derived}]
        if "data.positive_class" in changed:  # what alpha weights, AP ranks and the threshold cuts for
            raise UserError(f"study {name!r} exists and detects {stored.data.positive_class!r}, not "
                            f"{cfg.data.positive_class!r}; to detect {cfg.data.positive_class!r} start a new study: "
                            "--study-name NEW")
        if changed:
            value = lambda c, key: repr(c.to_dict()[key.split(".")[0]][key.split(".")[1]])  # noqa: E731
            notes.append(f"study {name!r} exists; resuming with its stored settings (ignoring changed "
                         + "; ".join(f"{k}: stored {value(stored, k)}, asked {value(cfg, k)}" for k in changed) + ")")
        if older := older_rule_trials(existing, stored):
            notes.append(f"study {name!r}: {older_rule_note(older)}")
        if added := queue_grid(existing, stored):
            notes.append(f"study {name!r} had {added} of its grid's points not queued yet (its creation was cut short); "
                         "queued them now")
        # e.g. the study file run from another folder (a relative folder, as studies stored it before, is read from this one)
        if config_mod.absolute(stored.study.artifacts) != config_mod.absolute(cfg.study.artifacts) and artifacts is None:
            notes.append(f"study {name!r} keeps its checkpoints and model files in {stored.study.artifacts}, "
                         f"not {cfg.study.artifacts}")
        study = existing
    kept = stored_config(study)
    asked, queued = n_trials or cfg.study.n_trials, queued_at_creation(kept)
    before = study.user_attrs.get(keys.TARGET, 0) if existing is not None else 0
    if n_trials is None and before > asked:  # e.g. the run of an earlier --n-trials, interrupted and started again
        notes.append(f"study {name!r} keeps its target of {before} finished trials (the study file asks for {asked}); "
                     "pass --n-trials to change it")
        asked = before
    elif n_trials is None and 0 < before < asked:
        notes.append(f"study {name!r} now has a target of {asked} finished trials, the study file's study.n_trials "
                     f"(it was {before}); pass --n-trials to choose it")
    if existing is not None and (done := counts(study)["FINISHED"]) > max(asked, queued):
        notes.append(f"study {name!r} already has {done} finished trials, past the target of {max(asked, queued)}: "
                     "no more trials run; raise --n-trials to run more")
    if queued > asked:  # queued trials always run: the target counts them all
        notes.append(f"sampler grid queues {queued} trials (a {kept.study.grid_points} x {kept.study.grid_points} grid "
                     f"and the reference trials): the study runs {queued}, not n_trials = {asked}")
    study.set_user_attr(keys.TARGET, max(asked, queued))
    if classes is not None and keys.DATA not in study.user_attrs:  # a resumed study keeps what it was created with
        study.set_user_attr(keys.DATA, {"classes": list(classes), "class_counts": list(class_counts),
                                        "fingerprints": fingerprints or {}})
    return study, notes


def move_aside(artifacts: Path, name: str) -> Path | None:
    """Move a new study's folder under ``artifacts``, when another study of its name left files there,
    to artifacts/earlier-TIME/NAME (the layout that --artifacts reads), so that the new study's trials
    overwrite none of them; returns where, or None when there was nothing."""
    folder = artifacts / name
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in itertools.count():
        aside = artifacts / (f"earlier-{stamp}" + (f"-{n}" if n else "")) / name
        if not aside.parent.exists():
            break
    aside.parent.mkdir(parents=True)
    try:
        folder.rename(aside)
    except OSError as e:
        aside.parent.rmdir()
        raise UserError(f"cannot move the files an earlier study named {name!r} left in {folder} aside ({e.strerror}); "
                        "move them yourself, or pass another --study-name")
    return aside


def queue_grid(study: optuna.Study, cfg: StudyConfig) -> int:
    """Queue the points of ``study.sampler = "grid"`` that the study does not hold yet (all at its
    creation; a creation cut short left some out); returns how many. Queued rather than Optuna's
    GridSampler, which stops the study from inside tell()."""
    if cfg.study.sampler != "grid":
        return 0
    space = distributions(cfg)
    axes = [np.geomspace(d.low, d.high, cfg.study.grid_points) if d.log else np.linspace(d.low, d.high, cfg.study.grid_points)
            for d in space.values()]
    have = {tuple((t.params or t.system_attrs.get("fixed_params", {})).get(k) for k in space)
            for t in study.get_trials(deepcopy=False) if t.user_attrs.get(keys.GRID)}
    missing = [point for point in itertools.product(*(a.tolist() for a in axes)) if point not in have]
    for point in missing:
        study.enqueue_trial(dict(zip(space, point)), user_attrs={keys.GRID: True})
    return len(missing)


def queued_at_creation(cfg: StudyConfig) -> int:
    """The trials a study of these settings queues when it is created (reference trials, a grid)."""
    grid = cfg.study.grid_points ** len(distributions(cfg)) if cfg.study.sampler == "grid" else 0
    return grid + (len(reference_trials(cfg)) if cfg.study.reference_trials else 0)


def older_rule_trials(study: optuna.Study, cfg: StudyConfig) -> list[int]:
    """Finished trials of a two-class balanced-accuracy study whose thresholds an earlier rule chose.
    The rule now gives every trial the same threshold, the positive class's share of the validation
    images; before 2026-11-29 each trial took its own maximum of balanced accuracy on validation.
    The share is the value several trials hold; with none held twice, every trial is older."""
    classes = study.user_attrs.get(keys.DATA, {}).get("classes") or []
    if len(classes) != 2 or cfg.study.operating_point != "balanced_accuracy":
        return []
    cuts = {t.number: t.user_attrs[keys.THRESHOLD] for t in study.get_trials(deepcopy=False, states=FINISHED)
            if t.user_attrs.get(keys.THRESHOLD) is not None}
    values = list(cuts.values())
    if len(set(values)) <= 1:
        return []
    share = max(values, key=values.count)
    return sorted(n for n, v in cuts.items() if v != share or values.count(share) == 1)


def older_rule_note(trials: list[int]) -> str:
    return (f"trial{'s' * (len(trials) > 1)} {', '.join(map(str, trials))} chose {'their thresholds' if len(trials) > 1 else 'its threshold'} "
            "by an earlier rule (the maximum of balanced accuracy on validation, tuner before 2026-11-29); trials run now "
            "take the positive class's share, so balanced accuracies of older and newer trials differ by rule as well as by "
            "loss; to compare them alike, start a new study")


def check_same_images(study: optuna.Study, fingerprints: dict[str, str], root: str, parts=("train", "test")) -> None:
    """Trials of one study, and the test check of its models, must see the same images: a different
    copy (files added, removed or changed) is an error, wherever it lies. A worker checks only the
    training images (it never reads test/, which its machine may lack)."""
    stored = study.user_attrs.get(keys.DATA, {}).get("fingerprints", {})
    for part in parts:
        if stored.get(part) and fingerprints.get(part) and stored[part] != fingerprints[part]:
            raise UserError(f"the {part} images under {root} ({fingerprints[part]}) are not those study {study.study_name!r} was "
                            f"created with ({stored[part]}); point data.root (or --data-root) at a copy of the same images; to tune on "
                            "these images, start a new study with --study-name")


def with_data_root(cfg: StudyConfig, name: str, data_root: str | None, option: str = "--data-root") -> StudyConfig:
    """The stored settings with this machine's image folder: ``data_root`` (given by ``option``,
    --data-root or a resumed start-study's data.root) or the stored root; an error when the images
    are not there."""
    if cfg.data.kind != "imagefolder":
        if data_root and option == "--data-root":
            raise UserError(f"--data-root is for image-folder studies, but study {name!r} uses data.kind = {cfg.data.kind!r}; "
                            "leave --data-root out")
        return cfg
    root = config_mod.absolute(data_root) if data_root else cfg.data.root
    pass_ = (lambda path: f"pass --data-root {path}") if option == "--data-root" else (lambda path: f"set data.root={path}")
    given = f"{option} {root}" if data_root else f"the stored data.root {root}"
    if Path(root).name in ("train", "test") and (Path(root).parent / "train").is_dir() and not (Path(root) / "train").is_dir():
        raise UserError(f"{given} is the {Path(root).name}/ folder of {Path(root).parent}; {pass_(Path(root).parent)}, "
                        "the folder holding train/")
    if not Path(root).is_dir():
        made = f" (it was created with those at {cfg.data.root})" if root != cfg.data.root else ""
        raise UserError(f"the images of study {name!r} are not at {root} on this machine{made}; {pass_('PATH')}, "
                        "the folder holding a copy of the same train/<class>/ images")
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=root))


def with_artifacts(cfg: StudyConfig, artifacts: str | None) -> StudyConfig:
    """The stored settings with this machine's artifacts folder: ``artifacts`` (``--artifacts``) or
    the stored one."""
    if not artifacts:
        return cfg
    return dataclasses.replace(cfg, study=dataclasses.replace(cfg.study, artifacts=config_mod.absolute(artifacts)))


def check_references_fit(cfg: StudyConfig, n_trials: int) -> None:
    """The reference trials always run and count towards n_trials, so n_trials must hold them all:
    an error rather than a study that quietly drops a baseline or runs past its target."""
    refs = len(reference_trials(cfg)) if cfg.study.reference_trials else 0
    if n_trials < refs:
        raise UserError(f"n_trials = {n_trials} is fewer than the {refs} reference trials every study runs first; "
                        "ask for more trials, or --set study.reference_trials=false")


def load(url: str, name: str, storage: RDBStorage | None = None) -> optuna.Study:
    """An existing study, or a UserError listing the studies that do exist. Creates nothing."""
    storage = storage or open_storage(url, existing=True)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        known = f"studies there: {', '.join(names)}" if names else "it holds no studies yet; run tuner start-study first"
        raise UserError(f"no study named {name!r} in {mask(url)}; {known}")


def study_names(url: str) -> list[str]:
    """The studies in the storage at ``url``; a storage that holds none yet is an error, not created."""
    return optuna.get_all_study_names(open_storage(url, existing=True))


def only_study(url: str) -> str:
    """The name of the one study in the storage, or a UserError listing them."""
    names = study_names(url)
    if len(names) != 1:
        raise UserError(f"pass --study-name: {mask(url)} holds {len(names)} studies ({', '.join(names)})" if names else
                        f"no study exists in {mask(url)} yet; run tuner start-study first, or pass --storage")
    return names[0]


def stored_config(study: optuna.Study) -> StudyConfig:
    raw = study.user_attrs.get(keys.CONFIG)
    if raw is None:
        raise UserError(f"study {study.study_name!r} was not created by tuner (it has no stored settings)")
    return config_mod.from_stored(raw, source=f"the settings stored with study {study.study_name!r}")


def open_for_worker(url: str, name: str, worker_index: int, log=print) -> tuple[optuna.Study, StudyConfig, RDBStorage]:
    """The study with this worker's own sampler seed, the shared pruner, and heartbeats. A database
    that goes away while the worker starts (a restart) is waited for as long as the default
    study.db_retry_s: the study's own setting is not read yet."""
    check_study_name(name)
    db = DbRetry(config_mod.StudySection.db_retry_s, f"worker {worker_index}", log)
    cfg = stored_config(db("opening the study", lambda: load(url, name)))
    storage = db("opening the study", lambda: open_storage(url, cfg.study.heartbeat_interval, cfg.study.grace_period))
    sampler = make_sampler(cfg, seed=cfg.study.seed * 1000 + worker_index + 1)
    study = db("opening the study", lambda: optuna.load_study(study_name=name, storage=storage, sampler=sampler,
                                                             pruner=make_pruner(cfg)))
    return study, cfg, storage


def delete(url: str, name: str, force: bool = False) -> int:
    """Delete study ``name`` with its trials; returns how many it had. Refused while trials run,
    unless ``force``: their workers would fail on their next write."""
    storage = open_storage(url, existing=True)
    c = counts(load(url, name, storage))
    if c["RUNNING"] and not force:
        raise UserError(f"study {name!r} has {c['RUNNING']} running trial{'s' * (c['RUNNING'] != 1)}; stop its workers "
                        "first, or pass --force")
    optuna.delete_study(study_name=name, storage=storage)
    return sum(c[s.name] for s in TrialState)


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state; FINISHED (complete or pruned) and QUEUED_AGAIN (failed trials another carries on)."""
    trials = study.get_trials(deepcopy=False)
    out = {s.name: 0 for s in TrialState}
    for t in trials:
        out[t.state.name] += 1
    out["FINISHED"] = out["COMPLETE"] + out["PRUNED"]
    out["QUEUED_AGAIN"] = n_queued_again(trials)
    return out


def n_queued_again(trials) -> int:
    """How many failed trials another carries on (``queued_again``)."""
    again = queued_again(trials)
    return sum(t.state == TrialState.FAIL and t.number in again for t in trials)


def queued_again(trials) -> dict[int, int]:
    """Failed trial number -> the trial queued again to carry it on from its checkpoint (after a stop,
    a transient error or a dead worker): such a failure lost nothing."""
    return {t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")}


def target(study: optuna.Study, cfg: StudyConfig) -> int:
    """Finished trials the study is to reach (start-study --n-trials may have raised it)."""
    return study.user_attrs.get(keys.TARGET, cfg.study.n_trials)


def sweep(study: optuna.Study, cfg: StudyConfig, storage: RDBStorage) -> None:
    """Fail the trials of dead workers and queue each one's retry, under the study lock. Workers,
    claims and the watching driver all sweep; Optuna's sweep reads a trial as RUNNING and then fails
    it, and on SQLite (which ignores SELECT ... FOR UPDATE) two sweeps could both do so and queue two
    retries of one trial, which would then share its checkpoint."""
    with study_lock(storage, study.study_name):
        _sweep(study, cfg, storage)


def _sweep(study: optuna.Study, cfg: StudyConfig, storage: RDBStorage) -> None:
    optuna.storages.fail_stale_trials(study)
    fail_orphans(study, storage, cfg.study.grace_period)


def claim_trial(study: optuna.Study, cfg: StudyConfig, storage: RDBStorage) -> optuna.Trial | None:
    """Ask for the next trial, or None when the study has (or is running) all it needs.

    Queued trials (reference trials, retries of dead ones) always run; new ones are asked only
    while finished + running + queued is below the study's target. The trial's first heartbeat is
    recorded under the lock: a trial without one is never swept (Optuna skips it), so a worker
    dying before its heartbeat thread started would leave it RUNNING for good.
    """
    with study_lock(storage, study.study_name):
        _sweep(study, cfg, storage)
        c = counts(study)
        if c["WAITING"] == 0 and c["FINISHED"] + c["RUNNING"] >= target(study, cfg):
            return None
        trial = study.ask(distributions(cfg))
        if storage.get_heartbeat_interval():
            storage.record_heartbeat(trial._trial_id)
        return trial
