"""The ``tuner`` command. Thin: parse, call the module that does the work, print."""

import csv
import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.exceptions import TyperException
from rich.console import Console
from rich.table import Table

from tuner.errors import Terminated, UserError
from tuner.process import notes_for_warnings, quiet_libraries, signals_held, stopped_by_sigterm

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Tune focal-loss gamma and alpha with parallel Optuna workers. Data goes to stdout; "
                       "progress, notes and errors to stderr.")


@functools.cache
def out() -> Console:
    """The terminal: made at the first print, not at import. A pipe or log gets 120 columns (not
    Rich's 80), a terminal its own width."""
    return Console(width=None if sys.stdout.isatty() else 120, highlight=False)


Storage = Annotated[Optional[str], typer.Option(
    "--storage", metavar="URL", show_default=False,
    help="SQLAlchemy URL of the studies' database [default: $TUNER_STORAGE, else the URL in the file "
         "$TUNER_STORAGE_FILE names, else sqlite:///tuner.db]")]


def _study_names(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of --study-name: the studies in the storage, when it exists."""
    try:
        from tuner.search.study import study_names

        return [n for n in study_names(_url(ctx.params.get("storage"))) if n.startswith(incomplete)]
    except Exception:
        return []


StudyName = Annotated[Optional[str], typer.Option(
    "--study-name", metavar="NAME", autocompletion=_study_names, show_default=False,
    help="the study [default: the only study in the storage]")]
Device = Annotated[Optional[str], typer.Option(
    metavar="DEVICE", show_default=False, help="auto, cpu, cuda or cuda:N [default: the study's train.device]")]
DataRoot = Annotated[Optional[Path], typer.Option("--data-root", metavar="PATH", show_default=False,
                                                 help="this machine's copy of the study's image folder [default: the "
                                                      "data.root stored with the study]")]
Artifacts = Annotated[Optional[Path], typer.Option("--artifacts", metavar="PATH", show_default=False,
                                                   help="this machine's folder for the study's checkpoints and model files "
                                                        "[default: the study.artifacts stored with the study]")]
Json = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


def _url(storage: str | None) -> str:
    from tuner.search.storage import default_url

    return storage or default_url()


_named: list[str] = []  # the study this command opened, for an error raised where its name is not at hand


def _naming(name: str) -> str:
    _named[:] = [name]
    return name


def _study(url: str, name: str | None):
    from tuner.search.study import load, only_study

    if name is not None and not name.strip():  # a mistake (an unset shell variable), not "the only study"
        raise UserError(f"--study-name {name!r} is empty: pass a study's name, or leave --study-name out "
                        "when the storage holds one study")
    study = load(url, _naming(only_study(url) if name is None else name))
    if len(study.directions) > 1:  # not one tuner made: each trial has several values
        raise UserError(f"study {study.study_name!r} has {len(study.directions)} objectives; tuner reads studies of one "
                        "objective, as it creates them (tuner dashboard shows any study)")
    return study


def _version(value: bool) -> None:
    if value:
        from tuner import __version__

        print(f"tuner {__version__}")
        raise typer.Exit()


@app.callback()
def root(ctx: typer.Context, version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                                   help="print the version and exit")] = False):
    """Tune focal-loss gamma and alpha with parallel Optuna workers. Data goes to stdout; progress,
    notes and errors to stderr."""
    if ctx.invoked_subcommand != "start-study":  # it draws its first frame before Optuna's second of import
        quiet_libraries()


@app.command("start-study", short_help="Create or resume a study and run its workers.")
def start_study(
    study_file: Annotated[Path, typer.Argument(metavar="STUDY_FILE", show_default=False,
                                               help="TOML study file, e.g. studies/digits-rare.toml")],
    storage: Storage = None,
    study_name: Annotated[Optional[str], typer.Option(metavar="NAME", show_default=False,
                                                      help="the study [default: the study file's study.name]")] = None,
    workers: Annotated[int, typer.Option(metavar="N", help="worker processes on this machine; 0: create the study and only watch")] = 1,
    n_trials: Annotated[Optional[int], typer.Option(metavar="N", show_default=False,
                                                    help="finished trials the study is to have in all, this run's and "
                                                         "earlier ones; sets the target of a study that exists "
                                                         "[default: the study file's study.n_trials, or a larger stored target]")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", show_default=False,
                                                      help="override a key of the study file, e.g. --set train.epochs=3 (repeatable)")] = None,
    device: Device = None,
    artifacts: Annotated[Optional[Path], typer.Option(
        "--artifacts", metavar="PATH", show_default=False,
        help="this run's folder for checkpoints and model files (its workers' and its test check's) [default: the "
             "study.artifacts stored with the study, for a new one the study file's]")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress; worker output goes to log files")] = False,
):
    """Create (or resume) a study and run workers until it has n_trials finished trials; then print
    the best trial and its test-set check on stdout."""
    from tuner.search import launch
    from tuner.show.progress import Decoding, Progress

    from tuner.search.config import check_n_trials, check_study_name

    if workers < 0:
        raise UserError(f"--workers must be 0 (only watch) or more, got {workers}")
    if n_trials is not None:
        check_n_trials(n_trials)
    if study_name is not None:
        check_study_name(study_name)
    _check_device(device)
    url, mode = _url(storage), "quiet" if quiet else "live" if sys.stderr.isatty() else "lines"
    with Progress(mode, workers or None) as progress, stopped_by_sigterm():
        progress.step("starting workers")
        procs = launch.spawn(url, workers, device, mode) if workers else []
        try:
            progress.step("reading the study file and the data")
            with signals_held():  # Ctrl-C inside torch's import aborts the process (pybind11): it waits for the import's end
                import torch  # noqa: F401
            quiet_libraries()
            from tuner.search.config import load_config
            from tuner.learn.data import class_to_detect, load_data
            from tuner.search.study import counts, create_or_resume, reserve_worker_indices, target, with_artifacts

            cfg = load_config(study_file, set_ or [])
            _check_device(device or cfg.train.device)
            name = _naming(study_name or cfg.study.name)
            loaded = _data_settings(url, name, cfg)  # a stored study's images are read as it stored them, once
            data = load_data(*loaded, on_decode=Decoding(progress))  # bad data fails here, before any study exists
            detect = class_to_detect(data.classes, data.pool_counts(), cfg.data.positive_class, cfg.study.operating_point,
                                     cfg.search.alpha_mode)
            derived, asked = cfg.derived(), (cfg.data, cfg.study.seed)
            cfg = cfg.resolved(data.num_classes, detect, min(data.pool_counts()))
            if loaded == asked:  # no stored study: resolving named the positive class, the folds and the absolute
                loaded = (cfg.data, cfg.study.seed)  # root, which load_data reads alike, so a new study needs no second load
            progress.step("opening the study")
            study, notes = create_or_resume(cfg, url, name, n_trials, data.classes, data.class_counts(), data.fingerprints,
                                            derived, None if artifacts is None else str(artifacts))
            cfg, data = _as_stored(study, cfg, data, loaded)
            cfg = with_artifacts(cfg, None if artifacts is None else str(artifacts))
            c, goal = counts(study), target(study, cfg)
            if c["FINISHED"] >= goal:
                launch.discard(procs)  # nothing left to run
                procs = []
        except BaseException as e:
            launch.discard(procs)
            if isinstance(e, KeyboardInterrupt):
                progress.say("stopped while starting, before any trial of this run: run the same command again to start")
                raise typer.Exit(e.code if isinstance(e, Terminated) else 130)
            raise
        from tuner.show.start_text import start_lines

        for line in start_lines(notes, name, url, goal, c, cfg, data, derived, len(procs)):
            progress.say(line)
        progress.epochs = cfg.train.epochs
        try:
            if procs:
                progress.first_worker = reserve_worker_indices(url, name, len(procs))
                logs = None if mode == "lines" else Path(cfg.study.artifacts) / name / "logs"
                launch.go(procs, name, logs, progress.first_worker, cfg.data.root, cfg.study.artifacts)
                code = launch.supervise(procs, lambda: _show(progress, study, cfg), say=progress.say, first=progress.first_worker)
            elif workers:
                if c["FINISHED"] == goal:  # past it, a note has said so
                    progress.say(f"the study has its {goal} finished trials; raise --n-trials to run more")
                code = 0
            else:
                from tuner.show.watch import watch

                with stopped_by_sigterm():
                    watch(url, name, progress)
                code = 0
        except KeyboardInterrupt as e:
            progress.say("stopped; run the same command again to resume" if procs or workers else
                         "stopped watching; the workers go on (tuner status shows them); run the same command again to watch")
            raise typer.Exit(e.code if isinstance(e, Terminated) else 130)
    if code != 0:
        raise UserError(launch.failure(procs, progress.first_worker, logs))
    from tuner.show.best_text import best_lines
    from tuner.show.results import evaluate_best_on_test
    from tuner.show.summary import best_summary

    progress.say("checking the final model and the reference trials on the test split")  # below the ended live view
    try:
        with stopped_by_sigterm():
            evaluate_best_on_test(study, cfg, data, retrain=True, say=progress.say)
    except KeyboardInterrupt as e:
        progress.say("stopped during the final test check; every trial is stored: run the same command again (or tuner "
                     "best --retrain) for the result")
        raise typer.Exit(e.code if isinstance(e, Terminated) else 130)
    print("\n".join(best_lines(best_summary(study, cfg))))


def _data_settings(url: str, name: str, cfg):
    """The data settings and seed to load the images with: a study that exists keeps its own (with this
    run's copy of an image folder), so a changed image size is not decoded only to be ignored."""
    import optuna

    from tuner.search.storage import open_storage
    from tuner.search.study import stored_config

    storage = None
    try:
        storage = open_storage(url, existing=True)
        stored = stored_config(optuna.load_study(study_name=name, storage=storage))
    except (UserError, KeyError):  # no storage or no such study yet: a new one
        return cfg.data, cfg.study.seed
    finally:
        if storage is not None:
            storage.engine.dispose()  # the run opens its own: hold no connection for it
    return _with_root(stored, name, cfg).data, stored.study.seed


def _with_root(stored, name: str, cfg):
    """The stored settings with this run's image folder (the study file's data.root, or --set's)."""
    from tuner.search.study import with_data_root

    return with_data_root(stored, name, cfg.data.root if stored.data.kind == "imagefolder" else None, "data.root")


def _as_stored(study, cfg, data, loaded):
    """A resumed study runs with its stored settings (and this run's copy of the images): the
    driver's test check too, on data loaded as the stored settings say (``loaded``: the settings
    and seed ``data`` was loaded with)."""
    from tuner.learn.data import load_data
    from tuner.search.study import stored_config

    stored = _with_root(stored_config(study), study.study_name, cfg)
    if (stored.data, stored.study.seed) != loaded:
        data = load_data(stored.data, seed=stored.study.seed)
    return stored, data


def _settings(study, data_root: Path | None, artifacts: Path | None = None):
    """The study's stored settings, with this machine's copy of its images when ``--data-root`` names
    one, and of its model files when ``--artifacts`` does."""
    from tuner.search.study import stored_config, with_artifacts, with_data_root

    cfg = with_artifacts(stored_config(study), None if artifacts is None else str(artifacts))
    return cfg if data_root is None else with_data_root(cfg, study.study_name, str(data_root))


def _show(progress, study, cfg) -> None:
    import optuna
    import sqlalchemy

    from tuner.show.progress import snapshot
    from tuner.search.study import target

    try:
        progress.update(snapshot(study, target(study, cfg)))
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError):
        pass  # the database is away; the workers retry on their own, and say when they give up


def _check_device(device: str | None) -> None:
    """A device that is not a device, or a CUDA device that is not here: an error before any study
    or worker exists (each worker would fail with a traceback otherwise)."""
    import re

    if device is not None and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise UserError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N")
    if device is not None and device.startswith("cuda"):
        from tuner.learn.train import pick_device

        pick_device(device)


@app.command("worker", short_help="Join a study from any machine and run trials.")
def worker(
    study_name: StudyName = None,
    storage: Storage = None,
    max_trials: Annotated[Optional[int], typer.Option("--max-trials", metavar="N", show_default=False,
                                                      help="stop after N trials of this worker [default: run until the "
                                                           "study has its n_trials finished trials]")] = None,
    n_trials: Annotated[Optional[int], typer.Option("--n-trials", hidden=True)] = None,
    device: Device = None,
    data_root: DataRoot = None,
    artifacts: Artifacts = None,
    worker_index: Annotated[Optional[int], typer.Option(hidden=True)] = None,
    threads: Annotated[Optional[int], typer.Option(hidden=True)] = None,
):
    """Join a study that exists (from any machine) and run its trials; log lines go to stderr."""
    from tuner.search.config import check_n_trials, check_study_name

    if n_trials is not None:
        raise UserError("tuner worker takes --max-trials N (this worker's trials); --n-trials is the study's total, "
                        "set with tuner start-study --n-trials")
    if max_trials is not None:
        check_n_trials(max_trials, "--max-trials")
    if study_name is not None:
        check_study_name(study_name)
    _check_device(device)
    from tuner.search.study import only_study
    from tuner.search.workers import run_worker

    url = _url(storage)
    run_worker(url, _naming(study_name or only_study(url)), worker_index, device, threads, max_trials,
               None if data_root is None else str(data_root), None if artifacts is None else str(artifacts))


@app.command("spawned-worker", hidden=True)
def spawned_worker(threads: Annotated[int, typer.Option()], device: Annotated[Optional[str], typer.Option()] = None):
    """A worker that ``start-study`` spawned before its study existed: it imports what it needs, then
    waits for one line on stdin naming the study, its worker index and its log file; EOF: nothing to do."""

    from tuner.search.workers import run_worker

    line = sys.stdin.readline()
    if not line:
        return
    go = json.loads(line)
    if go["log"]:
        log = os.open(go["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
    run_worker(_url(None), _naming(go["study_name"]), go["index"], device, threads, data_root=go["data_root"] or None,
               artifacts=go["artifacts"] or None, quiet_data=True)


@app.command("status", short_help="The study's trials as a table (or --json).")
def status(storage: Storage = None, study_name: StudyName = None, as_json: Json = False):
    """The study's trials: state, gamma, alpha, value, threshold, epochs, duration, worker, note."""
    from tuner import keys
    from tuner.show.progress import counts_words, cut_text
    from tuner.show.summary import status_rows, threshold_rule
    from tuner.search.study import counts

    study = _study(_url(storage), study_name)
    focus, cut = threshold_rule(study)
    rows, c = status_rows(study, focus), counts(study)
    if as_json:
        classes = study.user_attrs.get(keys.DATA, {}).get("classes")
        positive = study.user_attrs.get(keys.CONFIG, {}).get("data", {}).get("positive_class") or None  # as best --json has it
        print(json.dumps({"study": study.study_name, "classes": classes, "positive_class": positive, "counts": c,
                          "threshold_of": cut, "trials": rows}))
        return
    second = "beta" if any(r["beta"] is not None for r in rows) else "alpha"
    table = Table("trial", "state", "gamma", second, "value", "threshold", "epochs", "duration", "worker", "note",
                  title=f"study {study.study_name}")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        table.add_row(str(r["trial"]), r["state"], fmt(r["gamma"], ".3f"), fmt(r[second], ".4f" if second == "beta" else ".3f"),
                      fmt(r["value"], ".4f"), "-" if r["threshold"] is None else cut_text(r["threshold"]), str(r["epochs"]),
                      fmt(r["duration_s"], ".1f"),
                      r["worker"] or "-", str(r["note"]))
    out().print(table)
    out().print(counts_words(c, every=True))
    if cut:
        out().print(f"threshold: {cut}")


@app.command("list", short_help="The studies in the storage: counts, best value.")
def list_studies(storage: Storage = None, as_json: Json = False):
    """The studies in the storage, with their trial counts and best value."""
    from tuner.show.summary import study_rows

    rows = study_rows(_url(storage))
    if as_json:
        print(json.dumps(rows))
        return
    table = Table()
    # a study's name is what --study-name takes: never cut it
    table.add_column("study", no_wrap=True, min_width=max((len(r["study"]) for r in rows), default=5))
    table.add_column("metric", no_wrap=True, min_width=max((len(r["metric"] or "-") for r in rows), default=6))
    for name in ("finished", "pruned", "running", "waiting", "failed"):
        table.add_column(name, no_wrap=True, min_width=len(name))
    table.add_column("best", no_wrap=True, min_width=max((len(_best(r)) for r in rows), default=4))
    for r in rows:
        failed = str(r["failed"] - r["queued_again"]) + (f" (+{r['queued_again']} queued again)" if r["queued_again"] else "")
        table.add_row(r["study"], r["metric"] or "-", f"{r['complete'] + r['pruned']}/{'-' if r['target'] is None else r['target']}",
                      str(r["pruned"]), str(r["running"]), str(r["waiting"]), failed, _best(r))
    out().print(table, crop=False)  # wider than the terminal rather than a name or number cut


def _best(row: dict) -> str:
    return "-" if row["best_value"] is None else f"{row['best_value']:.4f} (trial {row['best_trial']})"


@app.command("delete", short_help="Delete a study and its trials (asks first).")
def delete(study: Annotated[str, typer.Argument(metavar="STUDY", autocompletion=_study_names, show_default=False,
                                                help="the study to delete, with all its trials")],
           storage: Storage = None,
           yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
           force: Annotated[bool, typer.Option("--force", help="delete even while trials run (their workers then fail)")] = False):
    """Delete a study and its trials from the storage (model files under study.artifacts stay)."""
    from tuner import keys
    from tuner.search.config import StudySection
    from tuner.search.storage import mask
    from tuner.search.study import counts, delete as delete_study, load

    url = _url(storage)
    loaded = load(url, study)
    c = counts(loaded)
    files = Path(loaded.user_attrs.get(keys.CONFIG, {}).get("study", {}).get("artifacts", StudySection.artifacts)) / study
    if not yes:
        print(f"delete study {study!r} and its {c['FINISHED'] + c['FAIL'] + c['RUNNING'] + c['WAITING']} trials from "
              f"{mask(url)}? [y/N] ", end="", file=sys.stderr, flush=True)
        answer = sys.stdin.readline()
        if not answer:  # a script, or no terminal: no one can answer
            print(file=sys.stderr)
            raise UserError(f"no answer on stdin, so study {study!r} was not deleted; pass --yes where no one can answer")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted", file=sys.stderr)
            raise typer.Exit(1)
    n = delete_study(url, study, force)
    print(f"deleted study {study!r} ({n} trials) from {mask(url)}", file=sys.stderr)
    if files.is_dir():  # other hosts may still read them, so removing them is the user's call
        print(f"its model files and checkpoints in {files} were kept; remove that folder to free the space",
              file=sys.stderr)


@app.command("best", short_help="The best trial and its test-set check.")
def best(storage: Storage = None, study_name: StudyName = None,
         as_json: Json = False,
         save_model: Annotated[Optional[Path], typer.Option("--save-model", metavar="PATH", show_default=False,
                                                            help="write the final model (study.final_model) to PATH (+ PATH.json), e.g. best.pt, "
                                                                 "and print only where (with --json, the JSON too)")] = None,
         retrain: Annotated[bool, typer.Option("--retrain", help="train the trials of the final model and the reference trials again with their parameters and seeds when their model files are not here, and check them on the test split")] = False,
         data_root: DataRoot = None, artifacts: Artifacts = None):
    """The best trial: value, metric, gamma/alpha, threshold, reference trials and test-set check."""
    from tuner.show.summary import best_summary

    study = _study(_url(storage), study_name)
    cfg = _settings(study, data_root, artifacts)
    if retrain:
        from tuner.show.results import evaluate_best_on_test

        evaluate_best_on_test(study, cfg, retrain=True)
    if save_model is not None:  # first: a save that fails prints no JSON for a script to take as done
        from tuner.show.best_text import cut_phrase
        from tuner.show.export import save_best_model
        from tuner.show.summary import final_decision, final_label, same_decision

        before = final_decision(study)
        saved = save_best_model(study, save_model, cfg)
        if before and not same_decision(before, saved):
            print(f"note: the final model's temperature {saved['temperature']:.3f} and threshold chosen now are not the stored "
                  f"{before['temperature']:.3f} and its threshold: its trials' validation predictions changed since (as when a "
                  "newer tuner decodes the images otherwise); tuner best --retrain checks it on the test split again",
                  file=sys.stderr)
        what = final_label(saved["trials"]) if saved["final_model"] == "ensemble" else f"the final model, trial {saved['trial']}"
        how = "from checkpoints" if saved["source"] == "checkpoint" else "retrained, as a model file was not found here"
        print(f"saved {what}, {how}, to {save_model} and {save_model}.json; it decides {cut_phrase(saved)}", file=sys.stderr)
    summary = best_summary(study, cfg)
    if as_json:
        print(json.dumps(summary))
    elif save_model is None:
        from tuner.show.best_text import best_lines

        print("\n".join(best_lines(summary)))


@app.command("dashboard", short_help="optuna-dashboard on the storage, read-only.")
def dashboard(storage: Storage = None,
              host: Annotated[str, typer.Option(metavar="ADDRESS", help="address to bind")] = "127.0.0.1",
              port: Annotated[int, typer.Option(metavar="PORT", help="port, 1 to 65535; 0: a free one (printed)")] = 8080,
              allow_writes: Annotated[bool, typer.Option("--allow-writes", help="let the dashboard delete studies and write trials")] = False,
              token_file: Annotated[Optional[Path], typer.Option("--token-file", metavar="FILE", help="require the token in this file (Authorization: Bearer, or ?token= once); or set TUNER_DASHBOARD_TOKEN", show_default=False)] = None,
              token: Annotated[Optional[str], typer.Option(metavar="TOKEN", show_default=False, help="require this token; other users see it in ps, so prefer --token-file")] = None):
    """optuna-dashboard on the same storage: read-only unless --allow-writes, token-protected with --token-file."""
    from tuner.show.dashboard import allowed_hosts, bind, check_port, guard, is_loopback, read_token_file, serve

    check_port(port)
    if token is not None and token_file is not None:
        raise UserError("pass --token-file or --token, not both")
    if token is not None:
        if not token.strip():
            raise UserError("--token is empty; pass a token, or leave --token out for none")
        print("warning: --token on the command line is visible to other users (ps); use --token-file or $TUNER_DASHBOARD_TOKEN",
              file=sys.stderr)
    elif token_file is not None:
        token = read_token_file(token_file)
    else:
        token = os.environ.get("TUNER_DASHBOARD_TOKEN", "").strip() or None
    import optuna_dashboard

    from tuner.search.storage import mask, open_storage

    url = _url(storage)
    app = guard(optuna_dashboard.wsgi(open_storage(url, existing=True)), allow_writes=allow_writes, token=token, hosts=allowed_hosts(host))
    if not token and not is_loopback(host):
        print(f"warning: the dashboard on {host} has no token, so anyone who can reach it can read the studies; "
              "pass --token-file or set TUNER_DASHBOARD_TOKEN", file=sys.stderr)
    server = bind(app, host, port)
    mode = "read-write" if allow_writes else "read-only"
    address = f"[{host}]" if ":" in host else host
    print(f"dashboard for {mask(url)} on http://{address}:{server.server_port}/ ({mode}{', token required' if token else ''}; "
          "Ctrl-C stops)", flush=True)
    serve(server)


@app.command("report", short_help="An offline HTML report with plots.")
def report(storage: Storage = None, study_name: StudyName = None,
           out_dir: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="folder for index.html and the PNGs")] = Path("tuner-report"),
           data_root: DataRoot = None, artifacts: Artifacts = None):
    """An offline HTML report with plots, top trials and the best trial's test-set results."""
    from tuner.show.report import build_report

    study = _study(_url(storage), study_name)
    page = build_report(study, out_dir, _settings(study, data_root, artifacts))
    print(f"report written to {page}")


@app.command("export", short_help="One row per trial, as CSV or JSON.")
def export(storage: Storage = None, study_name: StudyName = None,
           fmt: Annotated[str, typer.Option("--format", "-f", metavar="FORMAT", help="csv or json")] = "csv",
           out_file: Annotated[Optional[Path], typer.Option("--out", "-o", metavar="FILE", show_default=False,
                                                            help="file to write; - for stdout [default: stdout]")] = None):
    """One row per trial: state, gamma, alpha, value, metrics, epochs, duration, notes."""
    from tuner.show.export import FORMATS, trial_rows, write_rows

    fmt = fmt.lower()  # JSON as well as json
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not supported; use --format csv or --format json")
    write_rows(trial_rows(_study(_url(storage), study_name)), fmt, out_file)


@app.command("predict", short_help="Classify images with a saved best model.")
def predict_cmd(model: Annotated[Path, typer.Argument(help="a file from tuner best --save-model")],
                images: Annotated[list[Path], typer.Argument(help="image files, or folders of them, to classify")],
                threshold: Annotated[Optional[float], typer.Option(metavar="P", show_default=False, help="cut on the positive class's probability; with more classes and a class to detect, on its probability divided by the largest other one [default: the model's, chosen on validation]")] = None,
                all_classes: Annotated[bool, typer.Option("--all", help="print the probability of every class")] = False,
                skip_unreadable: Annotated[bool, typer.Option("--skip-unreadable", help="leave out images that cannot be read, "
                                                              "naming each on stderr, instead of stopping at the first")] = False,
                as_json: Json = False):
    """Classify image files (for a folder, every image under it): per image its path, predicted class
    and calibrated probability of the positive class (two classes), of the class to detect (more, with
    an f1 or recall>=X model), or else of the predicted class (the class with the largest probability
    divided by its threshold, chosen on validation)."""
    from tuner.learn.checkpoints import detected_class
    from tuner.show.predict import classify, decision_words, image_files, load_model, positive_of, resize_note
    from tuner.show.progress import cut_text

    net, payload = load_model(model)
    classes, positive = payload["classes"], positive_of(payload)
    files, skipped = image_files([str(p) for p in images]), [] if skip_unreadable else None
    rows = classify(net, payload, files, threshold, skipped)
    if skipped:
        if not rows:
            raise UserError(f"none of the {len(files)} images could be read ({skipped[0]}); pass image files PIL can open")
        for reason in skipped:
            print(f"skipped: {reason}", file=sys.stderr)
        print(f"skipped {len(skipped)} of {len(files)} images that could not be read", file=sys.stderr)
    if note := resize_note([r["path"] for r in rows], payload["model"]["channels"], payload["model"]["image_size"]):
        print(f"note: {note}", file=sys.stderr)
    cut, cut_of, said = decision_words(payload, threshold)
    print(said, file=sys.stderr)
    if as_json:  # each row says the cut its decision was made at, as stderr does
        print(json.dumps([{**r, "threshold": cut, "threshold_of": cut_of} for r in rows], indent=1))
        return
    shown = classes if all_classes else [positive] if positive else [detect] if (detect := detected_class(payload)) else None
    # csv quotes a field only where a path or class name holds a tab, a newline or a quote; a carriage
    # return is no part of this line terminator, so a row with one is quoted whole
    plain, quoted = (csv.writer(sys.stdout, delimiter="\t", lineterminator="\n", quoting=q) for q in (csv.QUOTE_MINIMAL, csv.QUOTE_ALL))
    write = lambda row: (quoted if any("\r" in f for f in row) else plain).writerow(row)  # noqa: E731
    write(["path", "predicted", *(f"p({c})" for c in shown)] if shown else ["path", "predicted", "p(predicted)"])
    for r in rows:
        values = [r["probabilities"][c] for c in shown] if shown else [r["probabilities"][r["predicted"]]]
        write([r["path"], r["predicted"], *(cut_text(v) for v in values)])


def main() -> None:
    notes_for_warnings()
    try:
        code = app(sys.argv[1:] or ["--help"], prog_name="tuner", standalone_mode=False)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyError as e:
        if e.args != ("Record does not exist.",):  # Optuna's word for a study or trial gone from the storage
            raise
        which = f"study {_named[0]!r}" if _named else "the study"
        print(f"error: {which} is no longer in the storage: it was deleted while this command ran (tuner delete "
              "--force); start it again to run it", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Terminated as e:
        sys.exit(e.code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except TyperException as e:  # the command line itself is wrong: unknown option, bad integer...
        ctx = getattr(e, "ctx", None)
        named = ctx.info_name if ctx and ctx.info_name not in (None, "tuner") else None
        # an option missing its value is found before the command's context exists: the command is the first word
        named = named or next((a for a in sys.argv[1:2] if a in {c.name for c in app.registered_commands}), None)
        where = f"tuner {named} --help" if named else "tuner --help"
        print(f"error: {e.format_message()} (see {where})", file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)  # typer returns the code of typer.Exit here


@app.command("healthcheck", hidden=True)
def healthcheck(storage: Storage = None,
                http: Annotated[Optional[str], typer.Option("--http", metavar="URL", help="GET this URL instead; any answer below 500 is healthy")] = None):
    """For container health checks: exit 0 when the storage opens (or the URL answers), else an error line and exit 2."""
    if http is None:
        from tuner.search.storage import open_storage

        open_storage(_url(storage), create=False).engine.dispose()
        return
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a proxy from the environment must not answer for us
    try:
        with opener.open(http, timeout=10) as answer:
            status = answer.status
    except urllib.error.HTTPError as e:
        status = e.code  # 401 from a dashboard with a token: it is up
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise UserError(f"no answer from {http}: {getattr(e, 'reason', None) or e}")
    if status >= 500:
        raise UserError(f"{http} answered {status}")
