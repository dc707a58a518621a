"""Fused trials (HFTA, Wang et al., MLSys 2021): K trials of one study trained as one model.

gamma and alpha enter only the loss, so the K trials of a study share the network shape, the data
and the optimizer settings. Stacking their K networks into one (grouped convolutions, a batched
matmul for the heads) turns K small kernels into one big one, which keeps a GPU busy. The training
loss is the sum of the member losses, sum_k FL(x_k; gamma_k, alpha_k): member k's parameters appear
only in term k, so its gradient, and with an elementwise optimizer (Adam, SGD) its whole trajectory,
is that of a separate run with the same seed and batch order.

>>> cfg = from_dict({"data": {"kind": "synthetic"}, "train": {"epochs": 2}}); data = load_data(cfg.data)
>>> [r.state for r in train_fused(cfg, data, [(0.0, None, 1), (2.0, 0.25, 2)], order_seed=0)]
['complete', 'complete']
"""

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tuner import keys
from tuner.learn.data import Splits
from tuner.learn.losses import focal_loss
from tuner.learn.models import SimpleCNN, build_model
from tuner.learn.train import TrialResult, eval_chunk, logit_metrics, make_optimizer, pick_device, prepare
from tuner.learn.weights import class_weights, focus_class

FusedReporter = Callable[[int, int, dict[str, float]], bool]  # (member index, epoch, metrics) -> prune?
FusedSaver = Callable[[int, dict], None]  # (member index, train_trial's checkpoint state)

# FusedCNN parameter -> the SimpleCNN parameter it stacks (dim 0 is the member).
SIMPLE_NAMES = {"conv1_weight": "features.0.weight", "conv1_bias": "features.0.bias",
                "conv2_weight": "features.3.weight", "conv2_bias": "features.3.bias",
                "head_weight": "head.weight", "head_bias": "head.bias"}


class FusedCNN(nn.Module):
    """K SimpleCNNs as one module; each parameter is the members' parameters stacked on dim 0.

    The first conv sees the same image in every member, so it is one plain conv with K * width
    output channels (what repeating the input K times with groups=K computes, without the copy);
    the second is a grouped conv (groups=K), the heads a batched matmul. ``__init__`` gives zero
    weights; use ``from_models``. Weights keep the default layout (5-D tensors have no
    channels_last); activations are NHWC from the first conv on.

    >>> models = [SimpleCNN(1, 16, 1) for _ in range(3)]
    >>> FusedCNN.from_models(models)(torch.zeros(5, 1, 16, 16)).shape  # (N, K, outputs)
    torch.Size([5, 3, 1])
    """

    def __init__(self, k: int, channels: int, image_size: int, outputs: int, width: int = 16):
        super().__init__()
        self.k, self.channels, self.image_size, self.outputs, self.width = k, channels, image_size, outputs, width
        self.conv1_weight = nn.Parameter(torch.zeros(k, width, channels, 3, 3))
        self.conv1_bias = nn.Parameter(torch.zeros(k, width))
        self.conv2_weight = nn.Parameter(torch.zeros(k, 2 * width, width, 3, 3))
        self.conv2_bias = nn.Parameter(torch.zeros(k, 2 * width))
        self.head_weight = nn.Parameter(torch.zeros(k, outputs, 2 * width * (image_size // 4) ** 2))
        self.head_bias = nn.Parameter(torch.zeros(k, outputs))

    @classmethod
    def from_models(cls, models: list[nn.Module]) -> "FusedCNN":
        if not models or not all(isinstance(m, SimpleCNN) for m in models):
            raise ValueError("only SimpleCNN models (model.kind = 'simple_cnn') can be fused; train others one by one")
        conv1, head = models[0].features[0], models[0].head
        image_size = 4 * math.isqrt(head.in_features // (2 * conv1.out_channels))
        fused = cls(len(models), conv1.in_channels, image_size, head.out_features, conv1.out_channels)
        states = [m.state_dict() for m in models]
        with torch.no_grad():
            for name, p in fused.named_parameters():
                p.copy_(torch.stack([s[SIMPLE_NAMES[name]] for s in states]))
        return fused.to(conv1.weight.device)

    def member(self, i: int) -> SimpleCNN:
        """Member i as an ordinary SimpleCNN with identical weights, on this model's device."""
        model = SimpleCNN(self.channels, self.image_size, self.outputs, self.width)
        model.load_state_dict({SIMPLE_NAMES[name]: p[i] for name, p in self.named_parameters()})
        return model.to(self.head_weight.device)

    def keep(self, indices: list[int]) -> "FusedCNN":
        """A new fused model of copies of only these members, so dropped members cost nothing."""
        fused = FusedCNN(len(indices), self.channels, self.image_size, self.outputs, self.width)
        idx = torch.tensor(indices, device=self.head_weight.device)
        for name, p in self.named_parameters():
            setattr(fused, name, nn.Parameter(p.detach()[idx]))
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k = x.shape[0], self.k
        # Pooling before ReLU gives the same values as the members' ReLU-then-pool (max commutes with
        # a monotone function) and the same gradients but for exact ties, with ReLU on a quarter of
        # the elements; NHWC makes CPU pooling and the grouped conv ~1.4x faster (a no-op on CUDA).
        h = F.conv2d(x, self.conv1_weight.flatten(0, 1), self.conv1_bias.flatten(), padding=1)
        h = F.relu(F.max_pool2d(h.contiguous(memory_format=torch.channels_last), 2))
        h = F.conv2d(h, self.conv2_weight.flatten(0, 1), self.conv2_bias.flatten(), padding=1, groups=k)
        h = F.relu(F.max_pool2d(h, 2)).reshape(n, k, -1)  # member k's features, ordered as nn.Flatten
        out = torch.baddbmm(self.head_bias.unsqueeze(1), h.transpose(0, 1), self.head_weight.transpose(1, 2))
        return out.transpose(0, 1)


def member_losses(logits: torch.Tensor, y: torch.Tensor, losses: list[tuple[float, object]],
                  keep: torch.Tensor | None = None) -> torch.Tensor:
    """Mean focal loss of each member, (K,): ``focal_loss`` on member k's logits with its own
    (gamma, alpha) = losses[k]. logits (N, K, 1) take the binary form (y in {0, 1}), (N, K, C) the
    softmax form. One small call per member: the same function as a lone trial, so fused and
    separate runs cannot drift apart. ``keep`` (N, K) masks each member's images (k-fold members
    skip their own fold); a member left with none has loss 0."""
    binary = logits.shape[2] == 1
    target = y.to(logits.dtype) if binary else y
    out = []
    for k, (g, a) in enumerate(losses):
        z, t = (logits[:, k, 0] if binary else logits[:, k]), target
        if keep is not None:
            z, t = z[keep[:, k]], t[keep[:, k]]
        out.append(focal_loss(z, t, g, a) if len(t) else z.sum() * 0)
    return torch.stack(out)


def _sum_finite(losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training objective, the sum of the finite member losses, and the mask of those. A diverged
    member's NaN never reaches the sum; it can only reach that member's own parameters."""
    finite = torch.isfinite(losses)
    return torch.where(finite, losses, torch.zeros_like(losses)).sum(), finite


def step(model, opt, x, y, losses: list, amp: bool, keep: torch.Tensor | None = None) -> torch.Tensor:
    """One optimizer step on one batch; returns the member losses (K,), unmasked."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(x)
    losses = member_losses(logits.float(), y, losses, keep)
    opt.zero_grad(set_to_none=True)
    _sum_finite(losses)[0].backward()
    opt.step()
    return losses.detach()


def train_epoch(model, opt, x, y, order, t, losses: list, stop=None, fmt=torch.contiguous_format, keep=None):
    """One epoch of fused steps over ``x`` in the next permutation of ``order``: the member losses (K,)
    summed over batches, or None when ``stop()`` turned true before a batch. ``keep(idx)`` gives each
    member's images of a batch (k-fold members skip their own fold); ``t`` is the train settings."""
    total = torch.zeros(len(losses), device=x.device)
    for idx in torch.randperm(len(x), generator=order).split(t.batch_size):
        if stop is not None and stop():
            return None
        idx = idx.to(x.device)
        total += step(model, opt, prepare(x[idx]).contiguous(memory_format=fmt), y[idx], losses, t.amp,
                      None if keep is None else keep(idx))
    return total


@torch.no_grad()
def score(model: FusedCNN, x: torch.Tensor, fmt=torch.contiguous_format) -> torch.Tensor:
    """Every member's float logits on uint8 images x, (N, members, outputs), in chunks that keep
    the activations of all members about as large as those of one model's ``eval_chunk``."""
    chunk = max(1, eval_chunk(x) // model.k)
    return torch.cat([model(prepare(x[i:i + chunk]).contiguous(memory_format=fmt)) for i in range(0, len(x), chunk)]).float()


def take_optimizer_state(model: FusedCNN, opt, index) -> dict:
    """The optimizer's state_dict for the members ``index`` (a list keeps the member dim, an int
    drops it: then it is the state_dict of that member's own SimpleCNN optimizer). Per-parameter
    tensors (moments, momentum) are sliced; shared ones (Adam's step count) are copied."""
    state_dict, shapes = opt.state_dict(), [p.shape for p in model.parameters()]
    if isinstance(index, list):
        index = torch.tensor(index, device=model.head_weight.device)
    take = lambda v, shape: v[index].clone() if v.shape == shape else v.clone()  # noqa: E731
    return {"state": {i: {name: take(v, shapes[i]) if torch.is_tensor(v) else v for name, v in s.items()}
                      for i, s in state_dict["state"].items()},
            "param_groups": state_dict["param_groups"]}


def stack_optimizer_states(states: list[dict]) -> dict:
    """The fused optimizer's state_dict from its members' own (``take_optimizer_state`` with an int, inverted)."""
    first = states[0]
    stack = lambda i, name, v: torch.stack([s["state"][i][name] for s in states]) if v.dim() else v  # noqa: E731
    return {"state": {i: {name: stack(i, name, v) if torch.is_tensor(v) else v for name, v in s.items()}
                      for i, s in first["state"].items()},
            "param_groups": first["param_groups"]}


def keep_members(cfg, model: FusedCNN, opt, positions: list[int]):
    """Drop members; the optimizer state (moments, momentum, step) of the kept ones carries over."""
    new = model.keep(positions)
    new_opt = make_optimizer(cfg, new.parameters())
    new_opt.load_state_dict(take_optimizer_state(model, opt, positions))
    return new, new_opt


def train_fused(cfg, data: Splits, members: list[tuple[float, float | None, int]],
                report: FusedReporter | None = None, device: torch.device | None = None,
                order_seed: int | None = None, resume: list[dict] | None = None,
                save: FusedSaver | None = None, stop=None) -> list[TrialResult]:
    """Train members (gamma, alpha, seed) as one FusedCNN on one batch order (``order_seed``, default
    the first member's seed). Member i starts from the weights ``train_trial`` builds for its seed;
    ``report(i, epoch, metrics)`` returning True prunes it. One TrialResult per member, in order,
    exactly as ``train_trial`` would give; a non-finite loss makes a member "diverged" alone.

    ``save(i, state)`` gets member i's state after each epoch in ``train_trial``'s checkpoint form,
    so a retried member can resume alone (``train_trial(resume=state)``) or fused again:
    ``resume`` takes one such state per member, all saved after the same epoch of one fused run.
    ``stop()`` turning true makes every member still training "interrupted", as in ``train_trial``."""
    if cfg.model.kind != "simple_cnn":
        raise ValueError(f"model.kind {cfg.model.kind!r} cannot be fused (only 'simple_cnn'); train it trial by trial")
    if not members:
        return []
    if resume and len({(s["epoch"], bytes(s["order"].numpy())) for s in resume}) != 1:
        raise ValueError("fused members resume together only from the same epoch of one batch order")
    models, counts = [], data.class_counts()
    for (_, _, seed), state in zip(members, resume or [None] * len(members)):
        torch.manual_seed(seed)
        models.append(build_model("simple_cnn", data.channels, cfg.data.image_size, counts, cfg.model.width))
        if state is not None:
            models[-1].load_state_dict(state["model"])
    device = device or pick_device(cfg.train.device)
    order_seed = members[0][2] if order_seed is None else order_seed
    return _train_loop(cfg, data, FusedCNN.from_models(models), [m[:2] for m in members], report, device,
                       order_seed, resume, save, stop)


def _train_loop(cfg, data, model: FusedCNN, losses: list[tuple[float, float | None]], report, device, order_seed,
                resume=None, save=None, stop=None):
    """The epochs of ``train_fused`` for a built model; losses[i] = (gamma, alpha) of member i."""
    t, counts, cuda = cfg.train, data.class_counts(), device.type == "cuda"
    losses = [(gamma, class_weights(alpha, counts, focus_class(cfg, data.classes))) for gamma, alpha in losses]
    torch.backends.cudnn.benchmark |= cuda
    fmt = torch.channels_last if cuda else torch.contiguous_format
    x, y, val_x, val_y = (v.to(device) for v in (data.train_x, data.train_y, data.val_x, data.val_y))
    model = model.to(device)
    opt = make_optimizer(cfg, model.parameters())
    order = torch.Generator().manual_seed(order_seed)
    results = [TrialResult("complete", None, None) for _ in losses]
    live = list(range(len(losses)))  # live[j] = original index of fused member j
    first = 1
    if resume:
        opt.load_state_dict(stack_optimizer_states([s["optimizer"] for s in resume]))
        order.set_state(resume[0]["order"])
        for r, s in zip(results, resume):
            r.history = list(s["history"])
            r.value = r.history[-1][cfg.study.metric] if r.history else None
        first = resume[0]["epoch"] + 1

    for epoch in range(first, t.epochs + 1):
        total = train_epoch(model, opt, x, y, order, t, [losses[i] for i in live], stop, fmt)
        if total is None:
            for i in live:
                results[i].state = "interrupted"
            return results
        val = score(model, val_x, fmt)
        train_loss = (total * t.batch_size / len(x)).tolist()
        stay = []
        for j, i in enumerate(live):
            r, logits = results[i], val[:, j]
            metrics = logit_metrics(logits.squeeze(1) if logits.shape[1] == 1 else logits, val_y, *losses[i],
                                    cfg.study.operating_point, focus_class(cfg, data.classes))
            metrics[keys.TRAIN_LOSS] = train_loss[j]
            if not math.isfinite(metrics[keys.TRAIN_LOSS]) or not math.isfinite(metrics[keys.LOSS]):
                r.state = "diverged"
            else:
                r.history.append(metrics)
                r.value = metrics[cfg.study.metric]
                if save is not None:
                    save(i, {"epoch": epoch, "model": model.member(j).state_dict(), "optimizer": take_optimizer_state(model, opt, j),
                             "order": order.get_state(), "history": r.history})
                if report is not None and report(i, epoch, metrics) and epoch < t.epochs:
                    r.state = "pruned"
            if r.state == "complete":
                stay.append(j)
            else:
                r.model = model.member(j)
        if len(stay) < len(live):
            live = [live[j] for j in stay]
            if not live:
                break
            model, opt = keep_members(cfg, model, opt, stay)
    for j, i in enumerate(live):
        results[i].model = model.member(j)
    return results


def choose_k(cfg, data: Splits, device: torch.device, max_k: int = 64, budget_s: float = 3.0) -> int:
    """How many trials to fuse (``fuse = "auto"``): the K in 1, 2, 4, ... <= max_k after which
    trial-images per second (K * batch images / step time) grow by less than 10%. Stops early when
    the next K would run past ``budget_s``, out of memory or (CUDA) past ~80% of free memory.
    Models that cannot be fused get 1."""
    if cfg.model.kind != "simple_cnn":
        return 1
    torch.backends.cudnn.benchmark |= device.type == "cuda"
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x = prepare(data.train_x[: cfg.train.batch_size].to(device)).contiguous(memory_format=fmt)
    y = data.train_y[: cfg.train.batch_size].to(device)
    start, best_k, best_rate, k = time.perf_counter(), 1, 0.0, 1
    while k <= max_k:
        try:
            rate, room = _throughput(cfg, data, k, x, y, budget_s / 30)
        except torch.cuda.OutOfMemoryError:
            break
        if rate < 1.1 * best_rate:
            break
        best_k, best_rate, k = k, rate, 2 * k
        if not room or 2 * (time.perf_counter() - start) > budget_s:  # the next K costs about all before it
            break
    return best_k


def _throughput(cfg, data: Splits, k: int, x: torch.Tensor, y: torch.Tensor, seconds: float):
    """Trial-images per second of K members training on batch (x, y), from the fastest step (other
    processes can only slow a step down), and whether 2K members would fit in 80% of free memory."""
    counts, cuda, device = data.class_counts(), x.is_cuda, x.device
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    outputs = 1 if len(counts) == 2 else len(counts)
    model = FusedCNN.from_models([SimpleCNN(data.channels, cfg.data.image_size, outputs, cfg.model.width)
                                  for _ in range(k)]).to(device)
    opt = make_optimizer(cfg, model.parameters())
    times = []
    while len(times) < 4 or sum(times[1:]) < seconds:  # times[0] is the warm-up (allocation, autotuning)
        t0 = time.perf_counter()
        step(model, opt, x, y, [(2.0, None)] * k, cfg.train.amp)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    room = True
    if cuda:
        allocated = torch.cuda.memory_allocated(device)
        free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - allocated
        room = 2 * (torch.cuda.max_memory_allocated(device) - base) < 0.8 * (free + allocated - base)  # K's is freed
    return k * len(x) / min(times[1:]), room
