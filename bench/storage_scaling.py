"""How the study storage holds up as workers are added: latency per ask / report / tell and
connections used, for 2, 8 and 32 worker processes (or --processes) with a trivial objective (no
training), on SQLite, on PostgreSQL, and on PostgreSQL through PgBouncer.

    python bench/storage_scaling.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test \
        --pgbouncer postgresql+psycopg://postgres@127.0.0.1:6432/test --processes 2,8,32,64

Prints a table and writes bench/results/storage-scaling.md. Each process runs a fixed number of
trials with three intermediate reports each, as a worker does per epoch; the sampler is random so
that the numbers are the storage's, not TPE's.
"""

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import optuna
import sqlalchemy

from tuner.search.storage import open_storage, study_lock

TRIALS_PER_WORKER = 8
REPORTS = 3


def worker(url: str, name: str, barrier, out) -> None:
    try:
        out.put(_trials(url, name, barrier))
    except Exception as e:  # e.g. the server's max_connections: a row says so instead of hanging
        barrier.abort()
        while e.__cause__ or e.__context__:  # the root cause, not Optuna's wrapper
            e = e.__cause__ or e.__context__
        out.put({"error": (str(e).strip().splitlines() or [""])[0]})


def _trials(url: str, name: str, barrier) -> dict:
    storage = open_storage(url)
    study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
    dist = {"gamma": optuna.distributions.FloatDistribution(0, 5)}
    times = {"ask": [], "report": [], "tell": []}
    barrier.wait()
    for _ in range(TRIALS_PER_WORKER):
        t = time.perf_counter()
        with study_lock(storage, name):  # what tuner's workers do: count, then ask, under one lock
            study.get_trials(deepcopy=False)
            trial = study.ask(dist)
        times["ask"].append(time.perf_counter() - t)
        for step in range(1, REPORTS + 1):
            t = time.perf_counter()
            trial.report(trial.params["gamma"] * step, step)
            trial.should_prune()
            times["report"].append(time.perf_counter() - t)
        t = time.perf_counter()
        study.tell(trial, trial.params["gamma"])
        times["tell"].append(time.perf_counter() - t)
    return times


def pg_connections(url: str, stop: threading.Event, peak: list) -> None:
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        while not stop.is_set():
            n = conn.execute(sqlalchemy.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
            conn.commit()  # pg_stat_activity is a snapshot per transaction
            peak[0] = max(peak[0], n)
            stop.wait(0.05)
    engine.dispose()


def run(url: str, processes: int, server: str | None) -> dict:
    """One row; ``server`` is the PostgreSQL server's own URL, to count its connections."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    optuna.create_study(storage=open_storage(url), study_name=name, direction="maximize")
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(processes + 1), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(url, name, barrier, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    peak, stop = [0], threading.Event()
    watcher = threading.Thread(target=pg_connections, args=(server, stop, peak)) if server else None
    if watcher:
        watcher.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass  # a worker failed to start; its error is in the queue
    start = time.perf_counter()
    results = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - start
    for p in procs:
        p.join()
    stop.set()
    if watcher:
        watcher.join()
    optuna.delete_study(study_name=name, storage=open_storage(url))
    failed = [r["error"] for r in results if "error" in r]
    if failed:
        why = max(failed, key=len)  # the others only saw the start barrier break
        return {"processes": processes, "error": f"{len(failed)} of {processes} processes failed: {why}",
                "connections": peak[0] if watcher else "-"}
    row = {"processes": processes, "wall_s": wall, "trials_per_s": processes * TRIALS_PER_WORKER / wall,
           "connections": peak[0] if watcher else "-"}
    for op in ("ask", "report", "tell"):
        values = sorted(v for r in results for v in r[op])
        row[f"{op}_ms_median"] = 1000 * statistics.median(values)
        row[f"{op}_ms_p95"] = 1000 * values[int(0.95 * (len(values) - 1))]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default=os.environ.get("TUNER_TEST_POSTGRES_URL"))
    parser.add_argument("--pgbouncer", help="the same database through PgBouncer in session mode, e.g. "
                        "postgresql+psycopg://postgres@127.0.0.1:6432/test (tuner_pool=off is added)")
    parser.add_argument("--processes", default="2,8,32")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "storage-scaling.md"))
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    backends = [("sqlite", f"sqlite:///{tmp}/bench.db", None)]
    if args.postgres:
        backends.append(("postgresql", args.postgres, args.postgres))
    if args.postgres and args.pgbouncer:
        sep = "&" if "?" in args.pgbouncer else "?"
        backends.append(("PgBouncer, tuner_pool=off", f"{args.pgbouncer}{sep}tuner_pool=off", args.postgres))
    header = ("| storage | processes | trials/s | ask ms (median / p95) | report ms (median / p95) "
              "| tell ms (median / p95) | server connections (peak) |")
    lines = [header, "|" + "---|" * 7]
    for label, url, server in backends:
        for n in (int(x) for x in args.processes.split(",")):
            r = run(url, n, server)
            if "error" in r:
                lines.append(f"| {label} | {n} | {r['error']} | | | | {r['connections']} |")
                print(lines[-1], flush=True)
                continue
            lines.append(f"| {label} | {n} | {r['trials_per_s']:.1f} | {r['ask_ms_median']:.1f} / {r['ask_ms_p95']:.1f} "
                         f"| {r['report_ms_median']:.1f} / {r['report_ms_p95']:.1f} | {r['tell_ms_median']:.1f} / "
                         f"{r['tell_ms_p95']:.1f} | {r['connections']} |")
            print(lines[-1], flush=True)
    text = (f"# Storage scaling\n\nMachine: {os.cpu_count()} CPU cores; {TRIALS_PER_WORKER} trials per process, "
            f"{REPORTS} reports per trial, random sampler; measured {time.strftime('%Y-%m-%d')}.\n"
            "A report is `trial.report` + `trial.should_prune`; an ask includes tuner's study lock and trial count.\n\n"
            + "\n".join(lines) + "\n")
    Path(args.out).write_text(text)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
