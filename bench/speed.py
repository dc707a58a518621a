"""Speed of an 8-trial gamma/alpha search: the blog tutorial's plain Optuna loop against tuner.

    . .venv/bin/activate && python bench/speed.py [--repeats 2] [--device cpu|cuda] [--out FILE]

Same data (tuner's `digits`, seed-0 split), batch 16, two-conv CNN, 8 trials x 5 epochs: (a) the blog's
loop as its own script, bench/blog_loop.py (PNG ImageFolder + DataLoader, naive FocalLoss, objective test
accuracy); (b) `tuner start-study`, 1 worker; (c) as (b), fuse=8; (d) nproc workers, fuse 8 // nproc,
successive halving. Plus training-step GFLOP/s, and on cuda a fused-K scan (K = 1..128, bf16 off/on). Writes bench/results/speed-<device>.md (or --out)."""

import argparse, datetime, itertools, json, os, resource, statistics, subprocess, sys, tempfile, time  # noqa: E401
from pathlib import Path

import optuna
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from tuner.search.config import load_config
from tuner.learn.data import load_data
from tuner.search.config import DataConfig
from tuner.learn.fused import FusedCNN, member_losses, train_fused
from tuner.learn.losses import focal_loss
from tuner.learn.metrics import scores
from tuner.learn.models import SimpleCNN
from tuner.learn.train import prepare, train_trial

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blog_loop import BATCH, EPOCHS, TF, TRIALS, BlogCNN  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "digits-rare.toml"

MACS = 16 * 32 * 32 * 9 + 32 * 16 * 16 * 16 * 9 + 32 * 8 * 8  # forward, per 32x32 image: conv1 + conv2 + linear
FLOPS_PER_IMAGE = MACS * 2 * 3  # 2 FLOPs per MAC, x3 for forward + backward (the usual convention)


def clock(fn, device) -> float:
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def write_tree(data, root: Path) -> None:
    for split in ("train", "val", "test"):
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        for i in range(len(y)):
            folder = root / split / ("1_nine" if y[i] else "0_other")  # ImageFolder sorts: other=0, nine=1
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i, 0].numpy(), mode="L").save(folder / f"{i:05d}.png")


def blog_process(tree: Path, device: str) -> dict:
    """(a) as a user runs it, a script of its own (``bench/blog_loop.py``, the blog's imports only):
    wall from starting its interpreter (imports included, as for tuner's rows) to the end of its
    ``study.optimize``. Its best trial (by its objective, test accuracy) is scored here afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        p = subprocess.run([sys.executable, str(ROOT / "bench" / "blog_loop.py"), str(tree), device, f"{tmp}/best.pt"],
                           capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"the blog loop failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        r = json.loads(p.stdout.splitlines()[-1])
        model = BlogCNN().eval()
        model.load_state_dict(torch.load(f"{tmp}/best.pt", weights_only=True))
    got = {}
    for split in ("val", "test"):
        ds = ImageFolder(tree / split, TF)
        with torch.no_grad():
            logits = model(torch.stack([ds[i][0] for i in range(len(ds))])).squeeze(1)
        got[split] = scores(torch.sigmoid(logits), torch.tensor(ds.targets), threshold=0.5)  # the blog cuts at 0.5
    return {"wall": r["ended"] - t0, "epochs": TRIALS * EPOCHS, "val_ap": got["val"]["average_precision"],
            "test_bacc": got["test"]["balanced_accuracy"], "params": r["params"],
            "states": f"{TRIALS} complete; objective (test acc) {r['best_value']:.4f}"}


def tuner_cmd(workers: int, fuse: int, pruner: str, url: str, device: str) -> list[str]:
    return [sys.executable, "-m", "tuner", "start-study", str(STUDY), "--workers", str(workers), "--n-trials", str(TRIALS),
            "--set", f"train.epochs={EPOCHS}", "--set", f"pruner.kind={pruner}", "--set", f"train.fuse={fuse}",
            "--set", "study.reference_trials=false", "--set", "data.folds=1", "--set", "pruner.n_warmup_steps=1", "--set", "pruner.min_resource=1", "--storage", url, "--quiet", "--device", device] + (
            # rungs at epochs 2 and 4, half kept at each: all 8 trials start together (fused), so a pruner
            # that waits for finished trials (median) never fires; successive halving compares running ones
            ["--set", "pruner.min_resource=2", "--set", "pruner.reduction_factor=2"] if pruner == "successive_halving" else [])


def tuner_run(run_dir: Path, workers: int, fuse: int, pruner: str, device: str) -> dict:
    run_dir.mkdir(parents=True)  # own cwd: tuner-artifacts/ (checkpoints, worker logs) land here, not in the repo
    url = f"sqlite:///{run_dir / 'b.db'}"
    t0, start = time.perf_counter(), time.time()
    p = subprocess.run(tuner_cmd(workers, fuse, pruner, url, device), cwd=run_dir, capture_output=True, text=True)
    wall, end = time.perf_counter() - t0, time.time()
    if p.returncode:
        sys.exit(f"tuner failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    best = json.loads(subprocess.run([sys.executable, "-m", "tuner", "best", "--json", "--storage", url], cwd=run_dir,
                                     capture_output=True, text=True, check=True).stdout)
    trials, c = optuna.load_study(study_name=best["study"], storage=url).get_trials(deepcopy=False), best["counts"]
    return {"wall": wall, "epochs": sum(t.user_attrs.get("epochs", 0) for t in trials), "val_ap": best["value"],
            "test_bacc": best["test"]["balanced_accuracy"], "params": best["params"],
            "states": f"{c['COMPLETE']} complete, {c['PRUNED']} pruned", "split": log_split(run_dir, start, end, fuse > 1)}


def log_split(run_dir: Path, start: float, end: float, fused: bool) -> dict:
    """Worker 0's log (1 s stamps; trial times to 0.1 s) -> start-up, trials (claim to tell), gaps, tail."""
    lines = next(run_dir.glob("tuner-artifacts/*/logs/worker-0.log")).read_text().splitlines()
    day = time.strftime("%Y-%m-%d ", time.localtime(start))
    at = lambda word: next(time.mktime(time.strptime(day + ln[:8], "%Y-%m-%d %H:%M:%S")) for ln in lines if word in ln)  # noqa: E731
    took = [float(ln.rsplit("(", 1)[1].split()[0]) for ln in lines if " epochs (" in ln]
    trials = (max(took) if fused else sum(took)) if took else 0.0  # fused: one block, the members overlap
    joined, done = at("joined study"), at("] done after")
    return {"startup": joined - start, "trials": trials, "gaps": done - joined - trials, "tail": end - done}


def cpu_s() -> tuple[float, float]:
    """CPU seconds used so far on the whole machine (/proc/stat: user, nice, system, irq, softirq) and by this
    process and its reaped children (tuner's driver reaps its workers, so a finished run counts in full)."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    own = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK"), sum(r.ru_utime + r.ru_stime for r in own)


def others(fn):
    """fn()'s result and the cores that other processes (other sessions' jobs) kept busy meanwhile."""
    (m0, o0), t0 = cpu_s(), time.perf_counter()
    result = fn()
    (m1, o1), t1 = cpu_s(), time.perf_counter()
    return result, max(0.0, (m1 - m0) - (o1 - o0)) / (t1 - t0)


def passes(args, data, device):
    w = max(1, min(len(os.sched_getaffinity(0)), TRIALS))
    configs = {"a": ("(a) blog loop: a script, ImageFolder + DataLoader", None), "b": ("(b) tuner, 1 worker, no fusion", (1, 1, "none")),
               "c": (f"(c) tuner, 1 worker, fused K={TRIALS}", (1, TRIALS, "none")),
               "d": (f"(d) tuner, {w} workers, fused K={max(1, TRIALS // w)}, successive halving", (w, max(1, TRIALS // w), "successive_halving"))}
    runs = {key: [] for key in configs}
    with tempfile.TemporaryDirectory(prefix="tuner-speed-") as tmp:
        write_tree(data, tree := Path(tmp) / "imagefolder")  # once, before any timing
        for rep in range(args.repeats):
            for key in "abcd" if rep % 2 == 0 else "dcba":
                r, busy = others(lambda: blog_process(tree, args.device) if key == "a" else
                                 tuner_run(Path(tmp) / f"{key}{rep}", *configs[key][1], args.device))
                runs[key].append(r | {"rate": r["epochs"] * len(data.train_y) / r["wall"], "busy": busy})
                print(f"pass {rep + 1} {key}: {r['wall']:.1f} s, {r['epochs']} trial-epochs, {r['states']}, other processes "
                      f"kept {busy:.2f} cores busy meanwhile", flush=True)
    med = {k: {f: statistics.median(r[f] for r in rs) for f in ("wall", "epochs", "rate", "val_ap", "test_bacc")} | {"last": rs[-1]}
           for k, rs in runs.items()}
    return {k: c[0] for k, c in configs.items()}, med, "; ".join(
        f"({k}) " + ", ".join(f"{r['wall']:.1f} s [{r['busy']:.2f}]" for r in rs) for k, rs in runs.items())


def mm_gflops(device, n=1024, reps=20) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    clock(lambda: [a @ b for _ in range(3)], device)
    return 2 * n**3 * reps / clock(lambda: [torch.mm(a, b) for _ in range(reps)], device) / 1e9


def step_rate(data, k: int, device, steps=300, blog=False) -> tuple[float, float]:
    """(GFLOP/s, trial-images/s) of Adam steps on batches of 16: SimpleCNN (or the blog's CNN) for k=1,
    FusedCNN above."""
    torch.manual_seed(0)
    model = (BlogCNN() if blog else SimpleCNN(1, 32, 1) if k == 1 else
             FusedCNN.from_models([SimpleCNN(1, 32, 1) for _ in range(k)])).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = [(2.0, 0.25)] * k
    x, y, n = prepare(data.train_x.to(device)), data.train_y.to(device), len(data.train_y) // BATCH
    def run(count):
        for i in range(count):
            xb, yb = x[i % n * BATCH:(i % n + 1) * BATCH], y[i % n * BATCH:(i % n + 1) * BATCH]
            loss = (focal_loss(model(xb).squeeze(1), yb.float(), 2.0, 0.25) if k == 1
                    else member_losses(model(xb), yb, losses).sum())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    clock(lambda: run(20), device)  # warm-up
    rate = k * BATCH * steps / clock(lambda: run(steps), device)
    return rate * FLOPS_PER_IMAGE / 1e9, rate


def cfg_for(device, amp=False):
    return load_config(STUDY, [f"train.epochs={EPOCHS}", "pruner.kind=none", f"train.device={device.type}",
                               f"train.amp={str(amp).lower()}"])


def profile(data, device, med) -> list[str]:
    """Where (b)'s and (c)'s wall time goes: their worker logs, and the same pieces measured alone."""
    imp = min(clock(lambda: subprocess.run([sys.executable, "-c", "import tuner.search.workers"], check=True), device) for _ in range(2))
    one = clock(lambda: train_trial(cfg_for(device), data, 2.0, 0.25, 1, device=device), device)
    fused = clock(lambda: train_fused(cfg_for(device), data, [(0.5 * i, 0.05 + 0.1 * i, i) for i in range(TRIALS)], device=device), device)
    n, a_rate = len(data.train_y) * TRIALS * EPOCHS, med["a"]["rate"]
    out = [f"Alone: fresh `python -c 'import tuner.search.workers'` {imp:.2f} s (one process start-up); one trial "
           f"in-process (`train_trial`, no storage) {one:.2f} s, x{TRIALS} = {TRIALS * one:.1f} s; `train_fused` K={TRIALS} {fused:.2f} s.",
           "", "Last (b), (c) runs, from worker 0's log (1 s stamps). start-up: driver, data, study, worker spawn, imports, data, to 'joined'; "
           "trials: claim to tell (training, per-epoch storage writes, checkpoints); gaps: claims, TPE; tail: driver's 1 s poll, test check.", "",
           "| run | wall (s) | start-up | trials | pure training, in-process | gaps | tail |", "|---|---:|---:|---:|---:|---:|---:|"]
    for key, train in (("b", TRIALS * one), ("c", fused)):
        r, s = med[key]["last"], med[key]["last"]["split"]
        out.append(f"| ({key}) | {r['wall']:.1f} | {s['startup']:.1f} | {s['trials']:.1f} | {train:.1f} | {s['gaps']:.1f} | {s['tail']:.1f} |")
    over = med["c"]["last"]["split"]["startup"] + med["c"]["last"]["split"]["tail"]
    return out + ["", f"Ceilings against (a)'s {a_rate:.0f} trial-images/s: pure unfused training {n / (TRIALS * one) / a_rate:.1f}x; "
                  f"pure fused K={TRIALS} training {n / fused / a_rate:.1f}x; fused training plus (c)'s measured start-up and "
                  f"tail ({over:.1f} s) {n / (fused + over) / a_rate:.1f}x."]


def k_scan(data, device, ks=(1, 8, 32, 64, 128)) -> list[str]:
    """Trials per hour of train_fused with K members for the full epochs, bf16 AMP off and on."""
    train_fused(cfg_for(device), data, [(2.0, 0.25, 0)], device=device)  # warm-up: CUDA context, cuDNN autotuning
    rows = ["| K | AMP bf16 | wall (s) | trials/hour |", "|---:|:---:|---:|---:|"]
    for amp, k in itertools.product((False, True), ks):
        t = clock(lambda: train_fused(cfg_for(device, amp), data, [(5 * i / k, 0.05 + 0.9 * i / k, i) for i in range(k)], device=device), device)
        rows.append(f"| {k} | {'on' if amp else 'off'} | {t:.2f} | {k * 3600 / t:,.0f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=1, help="2: a second pass in the order d, c, b, a; medians reported")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--out", type=Path, help="results file [default: bench/results/speed-<device>.md]")
    args = ap.parse_args()
    device, report = torch.device(args.device), []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    load_before, started = os.getloadavg(), datetime.datetime.now()
    data = load_data(DataConfig(kind="digits"), seed=0)
    names, med, walls = passes(args, data, device)
    a = med["a"]

    def say(*block):
        report.extend(["", *block])
        print("\n".join(["", *block]), flush=True)
    table = ["| config | wall (s) | trial-epochs | trial-images/s | x (a) images/s | (a) wall / wall | best val AP | "
             "best test bal. acc | trials (last pass) | best gamma, alpha (last pass) |", "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for k, m in med.items():
        table.append(f"| {names[k]} | {m['wall']:.1f} | {m['epochs']:.0f} | {m['rate']:.0f} | {m['rate'] / a['rate']:.2f} | "
                     f"{a['wall'] / m['wall']:.2f} | {m['val_ap']:.4f} | {m['test_bacc']:.4f} | {m['last']['states']} | "
                     f"{m['last']['params']['gamma']:.2f}, {m['last']['params']['alpha']:.2f} |")
    say(*table, "", f"Wall time per pass, in pass order [cores other processes kept busy meanwhile, of {os.cpu_count()}]: {walls}")
    mm = mm_gflops(device)
    flops = [f"FLOPs per image, forward + backward: {FLOPS_PER_IMAGE / 1e6:.2f} MFLOP, analytic (conv and linear MACs {MACS:,} x 2 "
             f"FLOPs/MAC x 3 for fwd + bwd; ReLU, pooling, loss, optimizer not counted). torch.mm 1024x1024 fp32: {mm:.1f} GFLOP/s.", "",
             "| training step (batch 16, Adam, focal loss, 300 steps) | trial-images/s | GFLOP/s | % of torch.mm |", "|---|---:|---:|---:|"]
    for name, k, blog_cnn in (("the blog's CNN (conv-relu-pool, NCHW), K=1", 1, True), ("SimpleCNN (pool-relu, NHWC), K=1", 1, False),
                              (f"FusedCNN, K={TRIALS}", TRIALS, False)):
        g, rate = step_rate(data, k, device, blog=blog_cnn)
        flops.append(f"| {name} | {rate:,.0f} | {g:.2f} | {100 * g / mm:.1f}% |")
    say("## Training-step FLOP rate", "", *flops)
    c_x, d_x = med["c"]["rate"] / a["rate"], a["wall"] / med["d"]["wall"]
    t1, t2 = c_x >= 5, d_x >= 10 and med["d"]["test_bacc"] >= a["test_bacc"]
    say("## Targets", "", f"- (c) >= 5x the trial-images/s of (a): {c_x:.2f}x, **{'reached' if t1 else 'not reached'}**",
        f"- (d) >= 10x less wall time than (a), with test balanced accuracy no worse: {d_x:.2f}x less wall time, "
        f"test bal. acc {med['d']['test_bacc']:.4f} vs (a) {a['test_bacc']:.4f}, **{'reached' if t2 else 'not reached'}**")
    if not (t1 and t2):
        say("## Profile (why a target is missed)", "", *profile(data, device, med))
    if device.type == "cuda":
        say(f"## Fused-K scan (K trials x {EPOCHS} epochs as one fused model, in-process, no pruning)", "",
            f"One trial at a time in one worker process, (b): {TRIALS * 3600 / med['b']['wall']:,.0f} trials/hour "
            f"(start-up included); (a): {TRIALS * 3600 / a['wall']:,.0f} trials/hour.", "", *k_scan(data, device))

    cmd = " ".join(tuner_cmd(1, 1, "none", "sqlite:///<tmp>/b.db", args.device)[3:]).replace(str(ROOT) + "/", "")
    head = [f"# Speed: the blog tutorial's Optuna loop vs tuner ({device.type})", "", f"- date: {started:%Y-%m-%d %H:%M}; machine: "
            f"nproc {len(os.sched_getaffinity(0))}{', ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), optuna {optuna.__version__}",
            "- load average (1, 5, 15 min) before: %.2f, %.2f, %.2f; after: %.2f, %.2f, %.2f (shared machine)" % (*load_before, *os.getloadavg()),
            f"- command: `python bench/speed.py --device {args.device} --repeats {args.repeats}`; medians of "
            f"{args.repeats} pass(es), orders " + "; ".join("d, c, b, a" if i % 2 else "a, b, c, d" for i in range(args.repeats)),
            f"- tuner rows: `tuner {cmd}`, workers / fuse / pruner per row, each run in its own temp folder",
            f"- data: digits 'is it a 9', {len(data.train_y)} train / {len(data.val_y)} val / {len(data.test_y)} test "
            f"images, batch {BATCH}, {TRIALS} trials x {EPOCHS} epochs", "",
            "Wall time of (b)-(d) is around the whole `tuner start-study` subprocess; (a)'s is from starting its script to the end "
            "of its `study.optimize` (start-up and imports included in both). trial-images/s = sum of epochs run x train images / wall. (a)'s best trial is its best by test "
            "accuracy (the blog's objective), scored afterwards outside the timing."]
    out = args.out or ROOT / "bench" / "results" / f"speed-{device.type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(head + report) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
