"""Study files: TOML in, validated frozen dataclasses out; every error names the key.

Example::

    >>> cfg = load_config("studies/digits-rare.toml", overrides=["train.epochs=2"])
    >>> cfg.train.epochs
    2
"""

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner import keys
from tuner.errors import UserError

METRICS = keys.OBJECTIVES
# balanced_accuracy, f1, or recall>=X with 0 < X <= 1 (tuner.learn.metrics.choose_threshold reads them)
OPERATING_POINT = re.compile(r"balanced_accuracy|f1|recall>=(0?\.\d*[1-9]\d*|1(\.0*)?)")
DATA_KINDS = ("imagefolder", "digits", "synthetic")
AUTO_FOLDS, FEW_RARE = 5, 300  # data.folds = "auto": AUTO_FOLDS when the rare class has fewer training images
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "successive_halving", "none")
FINAL_MODELS = ("ensemble", "best_trial")
MODELS = ("simple_cnn", "resnet")
OPTIMIZERS = ("adam", "adamw", "sgd")
ALPHA_MODES = ("auto", "rare", "class_balanced")
AUTO_KEYS = ("train.fuse", "data.folds", "pruner.n_warmup_steps", "pruner.min_resource")  # integers that may be "auto"
MAX_TRIALS = 100_000  # far past any search of two parameters; a typo's 10**20 is an error, not a study
MAX_GRID = math.isqrt(MAX_TRIALS)  # grid_points ** 2 trials are queued
MAX_SEED = 1_000_000
STUDY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}")
# Keys added after studies were first stored, with what such a study ran with (not today's default)
STORED_BEFORE = {"data.folds": 1, "study.final_model": "best_trial"}


def check_study_name(name: str, where: str = "--study-name") -> None:
    """A study name becomes a folder under study.artifacts, so it must be one plain folder name:
    1 to 100 letters, digits, '_', '-', '.', not starting with '.' or '-', and no '..'."""
    if not STUDY_NAME.fullmatch(name) or ".." in name:
        raise UserError(f"{where} {name!r} is not a valid study name: use 1 to 100 ASCII letters, digits, '_', '-' and '.', "
                        "starting with a letter, digit or '_' (no '/', '..', spaces or control characters)")


def check_n_trials(n: int, where: str = "--n-trials") -> None:
    if not 1 <= n <= MAX_TRIALS:
        raise UserError(f"{where} must be from 1 to {MAX_TRIALS}, got {n}")


DATA_CHECKS = (  # field, valid(value), what to use instead
    ("kind", lambda v: v in DATA_KINDS, f"one of {', '.join(DATA_KINDS)}"),
    ("image_size", lambda v: 8 <= v <= 1024, "an integer from 8 to 1024"),
    ("val_fraction", lambda v: 0 < v < 0.9, "a number above 0 and below 0.9"),
    ("test_fraction", lambda v: 0 < v < 0.9, "a number above 0 and below 0.9"),
    ("rare_fraction", lambda v: 0 < v <= 0.5, "a number above 0 and at most 0.5"),
    ("rare_class", lambda v: v in range(10), "a digit from 0 to 9"),
    ("n_samples", lambda v: v >= 50, "an integer of at least 50"),
    ("max_bad_fraction", lambda v: 0 <= v < 1, "a number from 0 up to, not including, 1"),
)


@dataclass(frozen=True)
class DataConfig:
    kind: str = "digits"  # "imagefolder" | "digits" | "synthetic"
    root: str = ""  # imagefolder only: holds train/<class>/* and optionally test/<class>/*
    image_size: int = 32
    grayscale: bool = True
    val_fraction: float = 0.2
    test_fraction: float = 0.25  # digits/synthetic only
    rare_class: int = 9  # digits only
    rare_fraction: float = 0.05  # digits/synthetic
    n_samples: int = 1200  # synthetic only
    max_bad_fraction: float = 0.01  # imagefolder only
    positive_class: str = ""  # the class to detect, by name (with 3+ classes, for an f1 or recall>=X rule); "" = the one with fewest training images
    folds: int | str = "auto"  # k-fold validation on train + val; "auto": 5 when the rare class has < 300 images, else 1


@dataclass(frozen=True)
class StudySection:
    name: str = "tuner-study"
    metric: str = keys.AVERAGE_PRECISION
    operating_point: str = "balanced_accuracy"  # how a trial picks its threshold on validation: f1, recall>=0.95, ...
    n_trials: int = 16
    seed: int = 0
    sampler: str = "tpe"
    n_startup_trials: int = 6  # TPE: random trials before the model kicks in
    grid_points: int = 4  # grid: values per parameter
    reference_trials: bool = True
    final_model: str = "ensemble"  # what best --save-model, predict and the test check use; or "best_trial"
    heartbeat_interval: int = 10  # seconds; 0 turns heartbeats off
    grace_period: int = 60  # seconds without a heartbeat before a trial counts as dead
    artifacts: str = "tuner-artifacts"  # where trial checkpoints go
    db_retry_s: int = 120  # how long workers retry while the database is unreachable
    max_retries: int = 2  # times a trial that failed with a transient error (out of memory, I/O) is queued again


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "simple_cnn"
    width: int = 16  # channels of the first conv; later layers scale from it


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10  # the budget the defaults were measured at (bench/results/epochs.md)
    batch_size: int = 16
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    device: str = "auto"
    amp: bool = False  # bfloat16 autocast (GPU)
    fuse: int | str = 1  # trials trained at once as one fused model per worker, or "auto"


@dataclass(frozen=True)
class SearchConfig:
    gamma: tuple[float, float] = (0.0, 5.0)
    alpha: tuple[float, float] = (0.05, 0.95)  # alpha_mode "rare": the weight of the positive class or class to detect
    alpha_mode: str = "auto"  # "rare", "class_balanced" or "auto": class_balanced with more than two classes
    beta: tuple[float, float] = (0.9, 0.9999)  # class_balanced: searched on a log scale of 1 - beta


@dataclass(frozen=True)
class PrunerConfig:
    kind: str = "median"
    n_startup_trials: int = 4  # median: trials finished before any pruning
    # Optuna's steps are epochs, counted from 1: n_warmup_steps = N lets the median pruner stop a trial
    # from epoch N on (0 and 1 alike: from the first); "auto": the epoch after the first third
    n_warmup_steps: int | str = "auto"
    min_resource: int | str = "auto"  # hyperband / successive_halving: the first epoch judged; "auto": likewise
    reduction_factor: int = 3  # hyperband / successive_halving


@dataclass(frozen=True)
class StudyConfig:
    study: StudySection = field(default_factory=StudySection)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, stored with the study so any worker can rebuild the config."""
        return {
            name: {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(sec).items()}
            for name, sec in ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))
        }

    def resolved(self, num_classes: int, positive_class: str | None, rare_count: int) -> "StudyConfig":
        """The config as stored with a study, every "auto" made concrete for data of ``num_classes``
        whose rarest (or positive) class has ``rare_count`` training images, the positive class
        named, so that every worker agrees on them, and an image folder's root and the artifacts
        folder absolute paths, so that a worker or a reader started from another folder finds them."""
        mode = self.search.alpha_mode
        if mode == "auto":
            mode = "class_balanced" if num_classes > 2 else "rare"
        folds = self.data.folds
        if folds == "auto":  # bench/results/quality.md: folds halve the spread over seeds where rare images are few
            # folds need simple_cnn's fused form; each fold holds at least one rare image
            folds = min(AUTO_FOLDS, rare_count) if rare_count < FEW_RARE and self.model.kind == "simple_cnn" else 1
        elif folds > rare_count:
            raise UserError(f"data.folds = {folds} is more than the {rare_count} training images of the rarest class, so "
                            f"{folds - rare_count} fold{'s' * (folds - rare_count != 1)} would validate on none of them; use at most {rare_count} folds, "
                            'or data.folds = "auto"')
        return dataclasses.replace(self, search=dataclasses.replace(self.search, alpha_mode=mode), pruner=self.pruner_resolved(),
                                   study=dataclasses.replace(self.study, artifacts=absolute(self.study.artifacts)),
                                   data=dataclasses.replace(self.data, positive_class=positive_class or "", folds=folds,
                                                            root=absolute(self.data.root)))

    def derived(self) -> set[str]:
        """The keys ``resolved`` works out (from "auto", or an unnamed positive class): where a resumed
        study keeps another value, the user did not ask for this one, so no note names them."""
        d = self.to_dict()
        auto = {f"{section}.{k}" for section, values in d.items() for k, v in values.items() if v == "auto"}
        return auto | ({"data.positive_class"} if not self.data.positive_class else set())

    def pruner_resolved(self) -> "PrunerConfig":
        """The pruner settings with "auto" made concrete: no pruning in the first third of the epochs
        (every trial's first epochs look alike; high-alpha trials start slower and catch up). Optuna
        may prune at step == n_warmup_steps (and judges at step == min_resource), and epochs count
        from 1: so the first epoch after that third."""
        third = self.train.epochs // 3 + 1
        p = self.pruner
        return dataclasses.replace(p, n_warmup_steps=third if p.n_warmup_steps == "auto" else p.n_warmup_steps,
                                   min_resource=third if p.min_resource == "auto" else p.min_resource)

    def search_space(self) -> dict[str, Any]:
        """What must match for two runs to share a study: the metric and the ranges the sampler draws
        from (class-balanced weights leave search.alpha unused, the rare class's weight search.beta)."""
        space = {"metric": self.study.metric, **self.to_dict()["search"]}
        space.pop({"class_balanced": "alpha", "rare": "beta"}.get(self.search.alpha_mode, ""), None)
        return space


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(StudyConfig)}


def unused_range(cfg: StudyConfig) -> str | None:
    """A sentence when a resolved study sets the search range its alpha_mode does not search."""
    s, default = cfg.search, SearchConfig()
    if s.alpha_mode == "class_balanced" and s.alpha != default.alpha:
        return (f"search.alpha = {list(s.alpha)} is not searched: with class-balanced weights (search.alpha_mode) the "
                f"search tunes search.beta = {list(s.beta)}")
    if s.alpha_mode == "rare" and s.beta != default.beta:
        return (f"search.beta = {list(s.beta)} is not searched: with search.alpha_mode = \"rare\" the search tunes "
                f"search.alpha = {list(s.alpha)}")
    return None


UNUSED_BY = {"median": ("min_resource", "reduction_factor"), "none": ("n_startup_trials", "n_warmup_steps", "min_resource",
              "reduction_factor"), "hyperband": ("n_startup_trials", "n_warmup_steps"),
             "successive_halving": ("n_startup_trials", "n_warmup_steps")}


def unused_settings(cfg: StudyConfig, derived: set[str]) -> list[str]:
    """A sentence per setting given a value that the chosen pruner, sampler or optimizer does not use
    (``derived``: the keys the study file left to "auto", see ``StudyConfig.derived``)."""
    p, s, default = cfg.pruner, cfg.study, StudyConfig()
    notes = [f"pruner.{k} = {getattr(p, k)!r} is not used by pruner.kind = {p.kind!r}" for k in UNUSED_BY[p.kind]
             if getattr(p, k) != getattr(default.pruner, k) and f"pruner.{k}" not in derived]
    if s.sampler != "grid" and s.grid_points != default.study.grid_points:
        notes.append(f"study.grid_points = {s.grid_points} is not used by study.sampler = {s.sampler!r}")
    if s.sampler != "tpe" and s.n_startup_trials != default.study.n_startup_trials:
        notes.append(f"study.n_startup_trials = {s.n_startup_trials} is not used by study.sampler = {s.sampler!r} (it is TPE's)")
    if cfg.train.optimizer == "adamw" and cfg.train.weight_decay == 0:
        notes.append('train.optimizer = "adamw" with train.weight_decay = 0 is Adam: set train.weight_decay, e.g. '
                     "--set train.weight_decay=0.01 (torch's AdamW default)")
    return notes


def absolute(root: str) -> str:
    return str(Path(root).expanduser().absolute()) if root else root


def load_config(path: str | Path, overrides: list[str] = ()) -> StudyConfig:
    """Read a study file, apply ``KEY=VALUE`` overrides, validate."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # -sig: Windows editors start a file with a BOM
    except FileNotFoundError:
        raise UserError(f"study file {path} does not exist; pass the path of a .toml file such as studies/digits-rare.toml")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read study file {path}: {e}")
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"study file {path} is not valid TOML: {e}")
    if not any(v != {} for v in raw.values()):  # an empty file (a failed copy, the wrong path) would run every default silently
        raise UserError(f"study file {path} holds no settings; copy studies/digits-rare.toml and edit it")
    for item in overrides:
        apply_override(raw, item)
    return from_dict(raw, source=str(path))


def apply_override(raw: dict, item: str) -> None:
    """``section.key=value``; the value is read as TOML when it parses as TOML, else as a string."""
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise UserError(f"--set {item!r} is not of the form SECTION.KEY=VALUE, e.g. --set train.epochs=3")
    section, name = parts
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    if section not in SECTIONS:
        raise UserError(f"--set {item}: unknown section [{section}]; known sections: {', '.join(SECTIONS)}")
    fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
    if name not in fields:
        raise UserError(f"--set {item}: unknown key {section}.{name}{elsewhere(name, section)}; known keys of [{section}]: "
                        f"{', '.join(fields)}")
    if isinstance(fields[name].default, str) and not isinstance(value, str) and f"{section}.{name}" not in AUTO_KEYS:
        value = text.strip()  # a class named 9, a study named 2024: the text as given, not a number
    if not isinstance(raw.get(section, {}), dict):
        raise UserError(f"[{section}] in the study file must be a table")
    raw.setdefault(section, {})[name] = value


def from_dict(raw: dict[str, Any], source: str = "study file") -> StudyConfig:
    """Build and validate a StudyConfig from parsed TOML (or a stored ``to_dict()``)."""
    for section in raw:
        if section not in SECTIONS and not isinstance(raw[section], dict):  # a key above the first [section]
            raise UserError(f"{section} in {source} comes before any [section] line{elsewhere(section)}; move it under "
                            "its section")
        if section not in SECTIONS:
            raise UserError(f"unknown section [{section}] in {source}; known sections: {', '.join(SECTIONS)}")
    sections = {}
    for section, factory in SECTIONS.items():
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise UserError(f"{section} in {source} must be a table [{section}]")
        sections[section] = _build(factory, section, values, source)
    cfg = StudyConfig(**sections)
    _validate(cfg)
    return cfg


def from_stored(raw: dict[str, Any], source: str) -> StudyConfig:
    """The config stored with a study; a key the study was stored without reads as it ran then."""
    raw = {section: dict(values) if isinstance(values, dict) else values for section, values in raw.items()}
    for key, value in STORED_BEFORE.items():
        section, name = key.split(".")
        if isinstance(raw.setdefault(section, {}), dict):
            raw[section].setdefault(name, value)
    return from_dict(raw, source)


def elsewhere(key: str, section: str | None = None) -> str:
    """Where a key of that name lives, for an error about one put in the wrong place ("" if nowhere)."""
    homes = [f"{s}.{key}" for s, factory in SECTIONS.items() if s != section and key in {f.name for f in dataclasses.fields(factory)}]
    if key in SECTIONS:
        return f" ([{key}] is a section of its own)"
    return f" ({' and '.join(homes)} {'is the key' if len(homes) == 1 else 'are the keys'} of that name)" if homes else ""


def _build(cls, section: str, values: dict, source: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise UserError(f"unknown key {section}.{key} in {source}{elsewhere(key, section)}; known keys of [{section}]: "
                            f"{', '.join(known)}")
        kwargs[key] = _coerce(f"{section}.{key}", value, known[key].default)
    return cls(**kwargs)


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check a value against the type of its default."""
    if key in AUTO_KEYS:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise UserError(f'{key} must be an integer or "auto", got {value!r}')
    if isinstance(default, bool):
        ok = isinstance(value, bool)
        want = "true or false"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = "an integer" + (' or "auto"' if key in AUTO_KEYS else "")
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        want = "a number"
    elif isinstance(default, tuple):
        ok = (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        )
        value = tuple(float(v) for v in value) if ok else value
        want = "a range [low, high] of two numbers"
    else:
        if isinstance(value, int) and not isinstance(value, bool):  # positive_class = 9 names the folder 9
            value = str(value)
        ok = isinstance(value, str)
        want = "a string"
    if not ok:
        raise UserError(f"{key} must be {want}, got {value!r}")
    return value


def _validate(cfg: StudyConfig) -> None:
    def need(ok: bool, key: str, value: Any, what: str) -> None:
        if not ok:
            raise UserError(f"{key} = {value!r} is invalid: {what}")

    for section in SECTIONS:
        for f in dataclasses.fields(values := getattr(cfg, section)):
            v = getattr(values, f.name)
            numbers = v if isinstance(v, tuple) else (v,)
            if any(isinstance(x, float) and not math.isfinite(x) for x in numbers):
                need(False, f"{section}.{f.name}", list(v) if isinstance(v, tuple) else v, "must be a finite number")
    s, t, p = cfg.study, cfg.train, cfg.pruner
    check_study_name(s.name, "study.name =")
    # each worker's sampler seed is seed * 1000 + its index (< 100000), and numpy takes seeds below 2**32
    need(0 <= s.seed <= MAX_SEED, "study.seed", s.seed, f"must be from 0 to {MAX_SEED}")
    need(s.metric in METRICS, "study.metric", s.metric, f"choose one of {', '.join(METRICS)}")
    need(bool(OPERATING_POINT.fullmatch(s.operating_point)), "study.operating_point", s.operating_point,
         "use balanced_accuracy, f1 or recall>=X with 0 < X <= 1, e.g. recall>=0.95")
    check_n_trials(s.n_trials, "study.n_trials")
    need(s.sampler in SAMPLERS, "study.sampler", s.sampler, f"choose one of {', '.join(SAMPLERS)}")
    need(s.n_startup_trials >= 0, "study.n_startup_trials", s.n_startup_trials, "must be >= 0")
    need(s.final_model in FINAL_MODELS, "study.final_model", s.final_model,
         f"choose {' or '.join(FINAL_MODELS)} (the mean of the best trials and the reference trials, or the best trial alone)")
    need(1 <= s.grid_points <= MAX_GRID, "study.grid_points", s.grid_points,
         f"must be from 1 to {MAX_GRID} (a grid of at most study.n_trials' limit of {MAX_TRIALS} trials)")
    need(s.heartbeat_interval >= 0, "study.heartbeat_interval", s.heartbeat_interval, "seconds, >= 0 (0 turns heartbeats off)")
    need(s.grace_period > s.heartbeat_interval, "study.grace_period", s.grace_period, "must be longer than study.heartbeat_interval")
    need(bool(s.artifacts), "study.artifacts", s.artifacts, "give a folder for checkpoints")
    need(s.db_retry_s >= 0, "study.db_retry_s", s.db_retry_s, "seconds, >= 0")
    need(0 <= s.max_retries <= 100, "study.max_retries", s.max_retries, "must be from 0 (never retry) to 100")
    need(cfg.model.kind in MODELS, "model.kind", cfg.model.kind, f"choose one of {', '.join(MODELS)}")
    need(1 <= cfg.model.width <= 512, "model.width", cfg.model.width, "must be between 1 and 512")
    need(t.epochs >= 1, "train.epochs", t.epochs, "need at least 1 epoch")
    need(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    need(t.lr > 0, "train.lr", t.lr, "must be > 0")
    need(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
    need(t.fuse == "auto" or 1 <= t.fuse <= 1024, "train.fuse", t.fuse, 'use 1 to 1024 trials per fused model, or "auto"')
    need(t.optimizer in OPTIMIZERS, "train.optimizer", t.optimizer, f"choose one of {', '.join(OPTIMIZERS)}")
    need(bool(re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device)), "train.device", t.device, "use auto, cpu, cuda or cuda:N")
    lo, hi = cfg.search.gamma
    need(0 <= lo <= hi <= 20, "search.gamma", [lo, hi], "need 0 <= low <= high <= 20")
    lo, hi = cfg.search.alpha
    need(0 <= lo <= hi <= 1, "search.alpha", [lo, hi], "alpha is a class weight: need 0 <= low <= high <= 1")
    need(cfg.search.alpha_mode in ALPHA_MODES, "search.alpha_mode", cfg.search.alpha_mode, f"choose one of {', '.join(ALPHA_MODES)}")
    lo, hi = cfg.search.beta
    need(0 < lo <= hi < 1, "search.beta", [lo, hi], "need 0 < low <= high < 1, e.g. [0.9, 0.9999]")
    need(p.kind in PRUNERS, "pruner.kind", p.kind, f"choose one of {', '.join(PRUNERS)}")
    need(p.n_startup_trials >= 0, "pruner.n_startup_trials", p.n_startup_trials, "must be >= 0")
    need(p.n_warmup_steps == "auto" or p.n_warmup_steps >= 0, "pruner.n_warmup_steps", p.n_warmup_steps, 'must be >= 0 or "auto"')
    need(p.min_resource == "auto" or p.min_resource >= 1, "pruner.min_resource", p.min_resource, 'must be >= 1 or "auto"')
    folds = cfg.data.folds
    need(folds == "auto" or 1 <= folds <= 20, "data.folds", folds, 'use 1 (one validation split) to 20 folds, or "auto"')
    need(folds in ("auto", 1) or cfg.model.kind == "simple_cnn", "data.folds", folds,
         "k folds train as fused members, which only model.kind = simple_cnn has; use data.folds = 1 with resnet")
    need(t.fuse in ("auto", 1) or cfg.model.kind == "simple_cnn", "train.fuse", t.fuse,
         "trials train together as one fused model only with model.kind = simple_cnn; use train.fuse = 1 with resnet")
    need(p.reduction_factor >= 2, "pruner.reduction_factor", p.reduction_factor, "must be >= 2")
    check_data(cfg.data)


def check_data(cfg: DataConfig) -> None:
    """Raise UserError naming data.<field> for the first value out of range."""
    for field_name, valid, want in DATA_CHECKS:
        value = getattr(cfg, field_name)
        try:
            ok = valid(value)
        except TypeError:
            ok = False
        if not ok:
            raise UserError(f"data.{field_name} = {value!r} is invalid; use {want} in the [data] section.")
    if cfg.kind == "imagefolder" and not cfg.root:
        raise UserError("data.root is empty but data.kind = 'imagefolder'; set data.root to the folder holding train/<class>/.")
