"""What start-study says before its workers start: the study, its images and classes, and a note
for each setting that will not do what its user may think."""

from tuner.search.config import FEW_RARE, unused_range, unused_settings
from tuner.search.storage import mask
from tuner.show.summary import few_to_find


def start_lines(notes: list[str], name: str, url: str, goal: int, c: dict, cfg, data, derived: set[str],
                workers: int) -> list[str]:
    """``notes``: the storage's on creating or resuming; ``c``: the study's trial counts; ``data``: the
    loaded ``Splits``; ``derived``: the settings worked out, not given; ``workers``: started here."""
    lines = [f"note: {note}" for note in notes]
    lines.append(f"study {name!r} in {mask(url)}: target {goal} finished trials, {c['FINISHED']} already; "
                 f"{data.describe_images(cfg.data.folds)}, {data.num_classes} classes, "
                 f"{workers or 'no'} worker{'s' * (workers != 1)} here")
    if c["RUNNING"]:  # two runs on one study is allowed (that is how machines join), but should not surprise
        lines.append(f"note: {c['RUNNING']} trial{'s are' if c['RUNNING'] > 1 else ' is'} running already, by another run "
                     "or machine (tuner status names the workers) or left by one that was killed (queued again once "
                     "its heartbeat is older than study.grace_period); this run's workers take other trials")
    lines.append(_classes_line(cfg, data))
    if note := unused_range(cfg):
        lines.append(f"note: {note}")
    if cfg.model.kind != "simple_cnn" and min(data.pool_counts()) < FEW_RARE:
        counts = data.val_counts()
        rarest = data.classes[counts.index(min(counts))]
        lines.append(f"note: model.kind = {cfg.model.kind!r} has no fused form for k folds, so its trials are scored on one "
                     f"validation split holding {min(counts)} images of {rarest!r}, too few to rank trials "
                     "reliably; model.kind = \"simple_cnn\" with data.folds = \"auto\" scores every training image")
    if cfg.data.folds > 1:
        lines.append(f"{cfg.data.folds}-fold validation on all {sum(data.pool_counts()):,} training images: every epoch "
                     "scores each image once, by the fold model that did not train on it")
    if note := few_to_find(cfg, data):
        lines.append(f"note: {note}")
    if cfg.train.optimizer == "sgd" and cfg.train.lr < 0.01:
        lines.append(f"note: train.optimizer = \"sgd\" with train.lr = {cfg.train.lr:g}, a learning rate for Adam (the default "
                     "optimizer): SGD with momentum learns little at it in a few epochs; set train.lr, e.g. --set train.lr=0.05")
    lines += [f"note: {note}" for note in unused_settings(cfg, derived)]
    p = cfg.pruner
    wait = p.n_warmup_steps if p.kind == "median" else p.min_resource if p.kind != "none" else 0
    key = "n_warmup_steps" if p.kind == "median" else "min_resource"
    if wait >= cfg.train.epochs and f"pruner.{key}" not in derived:  # a value the user gave
        lines.append(f"note: pruner.{key} = {wait} is not below train.epochs = {cfg.train.epochs}: the {p.kind} pruner "
                     "never stops a trial early")
    return lines


def _classes_line(cfg, data) -> str:
    """The positive class, or the classes and how one is picked."""
    if data.positive_class:
        return data.describe_positive() + f"; operating point: {cfg.study.operating_point} on validation"
    if cfg.study.operating_point == "balanced_accuracy":
        how = "per-class thresholds for balanced accuracy"
    elif not cfg.data.positive_class:  # stored before a class to detect among more than two existed
        how = (f"the most probable class decided, as in the study's earlier trials (it was stored before {cfg.study.operating_point} "
               "could name a class to detect)")
    else:
        name, counts = cfg.data.positive_class, data.pool_counts()
        how = (f"class to detect {name!r} ({counts[data.classes.index(name)]:,} of {sum(counts):,} training images, train and "
               f"val), decided when its probability over the largest other one reaches a threshold chosen on validation for "
               f"{cfg.study.operating_point}, else the most probable class")
    return f"classes {', '.join(data.classes)}: {cfg.search.alpha_mode} class weights, {how}"
