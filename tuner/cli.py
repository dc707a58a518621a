"""The ``tuner`` command. Thin: parse, call the module that does the work, print."""

import json
import os
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.exceptions import TyperException
from rich.console import Console
from rich.table import Table

from tuner.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Tune focal-loss gamma and alpha with parallel Optuna workers.")
out = Console(width=120, highlight=False)

Storage = Annotated[Optional[str], typer.Option("--storage", help="SQLAlchemy URL [default: $TUNER_STORAGE or sqlite:///tuner.db]", show_default=False)]
StudyName = Annotated[Optional[str], typer.Option("--study-name", help="study in the storage (optional when it holds just one)")]


def _url(storage: str | None) -> str:
    from tuner.storage import default_url

    return storage or default_url()


def _study(url: str, name: str | None):
    import optuna

    from tuner.storage import mask, open_storage
    from tuner.study import load

    if name is None:
        names = optuna.get_all_study_names(open_storage(url))
        if len(names) != 1:
            found = f"it holds {', '.join(names)}" if names else "it holds none"
            raise UserError(f"pass --study-name: {mask(url)} {found}")
        name = names[0]
    return load(url, name)


@app.command("start-study")
def start_study(
    study_file: Annotated[Path, typer.Argument(help="TOML study file, e.g. studies/digits-rare.toml")],
    storage: Storage = None,
    study_name: Annotated[Optional[str], typer.Option(help="default: [study] name of the file")] = None,
    workers: Annotated[int, typer.Option(help="worker processes on this machine; 0: create the study and only watch")] = 1,
    n_trials: Annotated[Optional[int], typer.Option(help="finished trials to reach [default: study.n_trials]")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a key: --set train.epochs=3")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N [default: the study's train.device]")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress; worker output goes to log files")] = False,
):
    """Create (or resume) a study and run workers until it has n_trials finished trials."""
    from tuner import launch

    if workers < 0:
        raise UserError(f"--workers must be 0 (only watch) or more, got {workers}")
    if n_trials is not None and n_trials < 1:
        raise UserError(f"--n-trials must be 1 or more, got {n_trials}")
    _check_device(device)
    url, mode = _url(storage), "quiet" if quiet else "live" if sys.stdout.isatty() else "lines"
    procs = launch.spawn(url, workers, device, mode) if workers else []
    try:
        from tuner.config import load_config
        from tuner.data import load_data
        from tuner.study import counts, create_or_resume

        cfg = load_config(study_file, set_ or [])
        name = study_name or cfg.study.name
        data = load_data(cfg.data, seed=cfg.study.seed)  # bad data fails here, before any study exists
        study, notes = create_or_resume(cfg, url, name, n_trials)
    except BaseException:
        launch.discard(procs)
        raise
    from tuner import results
    from tuner.progress import Progress
    from tuner.storage import mask

    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    c = counts(study)
    out.print(f"study {name!r} in {mask(url)}: {c['FINISHED']} of {n_trials or cfg.study.n_trials} trials finished; "
              f"{len(data.train_y)} train / {len(data.val_y)} val images, {data.num_classes} classes, {workers} workers")
    try:
        if workers:
            launch.go(procs, name, None if mode == "lines" else Path(cfg.study.artifacts) / name / "logs")
            with Progress(mode, cfg.train.epochs) as progress:
                code = launch.supervise(procs, lambda: _show(progress, study, cfg))
        else:
            from tuner.workers import watch

            code = watch(url, name, mode) or 0
    except KeyboardInterrupt:
        out.print("stopped; run the same command again to resume")
        raise typer.Exit(130)
    if code != 0:
        raise UserError(f"a worker exited with status {code}; see its output above")
    test = results.evaluate_best_on_test(study, cfg, data)
    _print_best(results.best_summary(study, cfg) | {"test": test})


def _show(progress, study, cfg) -> None:
    import optuna
    import sqlalchemy

    from tuner.progress import snapshot
    from tuner.study import target

    try:
        progress.update(snapshot(study, target(study, cfg)))
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError):
        pass  # the database is away; the workers retry on their own, and say when they give up


def _check_device(device: str | None) -> None:
    import re

    if device is not None and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise UserError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N")


def _print_best(s: dict) -> None:
    c = s["counts"]
    out.print(f"\n{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed")
    p = s["params"]
    out.print(f"best trial {s['trial']}: {s['metric']} {s['value']:.4f} with gamma {p['gamma']:.3f}, alpha {p['alpha']:.3f}")
    for r in s["references"]:
        value = "-" if r["value"] is None else f"{r['value']:.4f}"
        out.print(f"  reference trial {r['trial']} {r['label']}: {value} ({r['state'].lower()})")
    t = s["test"]
    if t:
        out.print(f"test set ({t['n']} images, {t['source']}): average precision {t['average_precision']:.4f}, "
                  f"balanced accuracy {t['balanced_accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f}, confusion {t['confusion_matrix']}")


@app.command()
def worker(
    study_name: Annotated[str, typer.Option(help="the study to join")],
    storage: Storage = None,
    n_trials: Annotated[Optional[int], typer.Option(help="stop after this many trials of this worker")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N [default: the study's train.device]")] = None,
    worker_index: Annotated[Optional[int], typer.Option(hidden=True)] = None,
    threads: Annotated[Optional[int], typer.Option(hidden=True)] = None,
):
    """Join a study that exists (from any machine) and run its trials."""
    if n_trials is not None and n_trials < 1:
        raise UserError(f"--n-trials must be 1 or more, got {n_trials}")
    _check_device(device)
    from tuner.workers import run_worker

    run_worker(_url(storage), study_name, worker_index, device, threads, n_trials)


@app.command("spawned-worker", hidden=True)
def spawned_worker(worker_index: Annotated[int, typer.Option()], threads: Annotated[int, typer.Option()],
                   device: Annotated[Optional[str], typer.Option()] = None):
    """A worker that ``start-study`` spawned before its study existed: it imports what it needs, then
    waits for one line on stdin naming the study (and its log file); EOF: nothing to do."""
    import os

    from tuner.workers import run_worker

    line = sys.stdin.readline()
    if not line:
        return
    go = json.loads(line)
    if go["log"]:
        log = os.open(go["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
    run_worker(_url(None), go["study_name"], worker_index, device, threads)


@app.command()
def status(storage: Storage = None, study_name: StudyName = None):
    """A table of the study's trials."""
    from tuner.results import status_rows
    from tuner.study import counts

    study = _study(_url(storage), study_name)
    table = Table("trial", "state", "gamma", "alpha", "value", "epochs", "duration", "note", title=f"study {study.study_name}")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in status_rows(study):
        table.add_row(str(r["trial"]), r["state"], fmt(r["gamma"], ".3f"), fmt(r["alpha"], ".3f"), fmt(r["value"], ".4f"),
                      str(r["epochs"]), fmt(r["duration_s"], ".1f"), str(r["note"]))
    out.print(table)
    c = counts(study)
    out.print(f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['RUNNING']} running, {c['WAITING']} waiting, {c['FAIL']} failed")


@app.command()
def best(storage: Storage = None, study_name: StudyName = None,
         as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
         save_model: Annotated[Optional[Path], typer.Option("--save-model", help="write the best model to PATH (+ PATH.json), e.g. best.pt")] = None):
    """The best trial: value, metric, gamma/alpha, trial number."""
    from tuner.results import best_summary
    from tuner.study import stored_config

    study = _study(_url(storage), study_name)
    summary = best_summary(study, stored_config(study))
    if as_json:
        print(json.dumps(summary))
    else:
        _print_best(summary)
    if save_model is not None:
        from tuner.export import save_best_model

        saved = save_best_model(study, save_model)
        print(f"saved trial {saved['trial']} ({saved['source']}) to {save_model} and {save_model}.json",
              file=sys.stderr if as_json else sys.stdout)


@app.command()
def dashboard(storage: Storage = None,
              host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
              port: Annotated[int, typer.Option(help="port")] = 8080,
              allow_writes: Annotated[bool, typer.Option("--allow-writes", help="let the dashboard delete studies and write trials")] = False,
              token: Annotated[Optional[str], typer.Option(envvar="TUNER_DASHBOARD_TOKEN", show_envvar=True,
                                                           help="require this token (Authorization: Bearer, or ?token= once)")] = None):
    """optuna-dashboard on the same storage: read-only unless --allow-writes, token-protected with --token."""
    import optuna_dashboard

    from tuner.dashboard import guard, is_loopback, serve
    from tuner.storage import mask, open_storage

    url = _url(storage)
    app = guard(optuna_dashboard.wsgi(open_storage(url)), allow_writes=allow_writes, token=token or None)
    if not token and not is_loopback(host):
        print(f"warning: the dashboard on {host}:{port} has no token, so anyone who can reach it can read the studies; "
              "pass --token or set TUNER_DASHBOARD_TOKEN", file=sys.stderr)
    mode = "read-write" if allow_writes else "read-only"
    print(f"dashboard for {mask(url)} on http://{host}:{port}/ ({mode}{', token required' if token else ''}; Ctrl-C stops)", flush=True)
    serve(app, host, port)


@app.command()
def report(storage: Storage = None, study_name: StudyName = None,
           out_dir: Annotated[Path, typer.Option("--out", help="folder for index.html and the PNGs")] = Path("tuner-report")):
    """An offline HTML report with plots, top trials and the best trial's test-set results."""
    from tuner.report import build_report

    page = build_report(_study(_url(storage), study_name), out_dir)
    print(f"report written to {page}")


@app.command()
def export(storage: Storage = None, study_name: StudyName = None,
           fmt: Annotated[str, typer.Option("--format", help="csv or json")] = "csv",
           out_file: Annotated[Optional[Path], typer.Option("--out", help="file to write [default: stdout]")] = None):
    """One row per trial: state, gamma, alpha, value, metrics, epochs, duration, notes."""
    from tuner.export import FORMATS, trial_rows, write_rows

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not supported; use --format csv or --format json")
    write_rows(trial_rows(_study(_url(storage), study_name)), fmt, out_file)


@app.command("predict")
def predict_cmd(model: Annotated[Path, typer.Argument(help="a file from tuner best --save-model")],
                images: Annotated[list[Path], typer.Argument(help="image files to classify")]):
    """Classify image files: one line per image with its path, predicted class and probability."""
    from tuner.predict import classify, load_model

    net, payload = load_model(model)
    for path, name, prob in classify(net, payload, [str(p) for p in images]):
        print(f"{path}\t{name}\t{prob:.4f}")


def main() -> None:
    try:
        code = app(sys.argv[1:] or ["--help"], standalone_mode=False)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        if any(t.name == "tuner-heartbeat" and t.is_alive() for t in threading.enumerate()):
            # A heartbeat blocked on a dead database connection can make the interpreter's
            # shutdown abort (SIGABRT) after the error line: leave without that shutdown.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except TyperException as e:  # the command line itself is wrong: unknown option, bad integer...
        ctx = getattr(e, "ctx", None)
        where = f"tuner {ctx.info_name} --help" if ctx and ctx.info_name not in (None, "tuner") else "tuner --help"
        print(f"error: {e.format_message()} (see {where})", file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)  # typer returns the code of typer.Exit here
