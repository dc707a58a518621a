"""SGD with momentum, Adam and AdamW: torch.optim's single-tensor updates, step for step.

Why not torch.optim: building any of its optimizers imports torch._dynamo, about 1.6 s of CPU
that every worker process paid before its first batch. The updates are a few lines each; the
state_dict has torch.optim's form, so checkpoints written with either load into the other, and
``tests/learn/test_optim.py`` checks the trajectories against torch.optim's.

>>> w = torch.nn.Parameter(torch.ones(2))
>>> opt = Adam([w], lr=0.1)
>>> (w ** 2).sum().backward(); opt.step()
>>> w.detach()
tensor([0.9000, 0.9000])
"""

import torch

SGD_GROUP = {"momentum": 0.9, "dampening": 0, "weight_decay": 0.0, "nesterov": False, "maximize": False,
             "foreach": None, "differentiable": False, "fused": None}
ADAM_GROUP = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False, "maximize": False, "foreach": None,
              "capturable": False, "differentiable": False, "fused": None, "decoupled_weight_decay": False}


class Optimizer:
    """One parameter group; ``state[i]`` holds parameter i's tensors, as in torch.optim."""

    defaults: dict = {}

    def __init__(self, params, lr: float, **settings):
        self.params = list(params)
        self.group = {**self.defaults, "lr": lr, **settings}
        self.state: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def param_groups(self) -> list[dict]:
        return [{**self.group, "params": self.params}]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self) -> dict:
        return {"state": {i: dict(s) for i, s in self.state.items()},
                "param_groups": [{**self.group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, state_dict: dict) -> None:
        (group,) = state_dict["param_groups"]
        if len(group["params"]) != len(self.params):
            raise ValueError(f"the state is of {len(group['params'])} parameters, this optimizer has {len(self.params)}")
        self.state = {}
        for i, s in state_dict["state"].items():
            p = self.params[int(i)]
            # as torch.optim: moments take the parameter's dtype and device; Adam's step stays as it is
            self.state[int(i)] = {k: v if k == "step" else v.to(device=p.device, dtype=p.dtype) for k, v in s.items()}


class SGD(Optimizer):
    defaults = SGD_GROUP

    @torch.no_grad()
    def step(self) -> None:
        g = self.group
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            d = p.grad if g["weight_decay"] == 0 else p.grad.add(p, alpha=g["weight_decay"])
            if g["momentum"]:
                buf = self.state.get(i, {}).get("momentum_buffer")
                if buf is None:
                    buf = self.state.setdefault(i, {})["momentum_buffer"] = d.clone().detach()
                else:
                    buf.mul_(g["momentum"]).add_(d, alpha=1 - g["dampening"])
                d = buf
            p.add_(d, alpha=-g["lr"])


class Adam(Optimizer):
    """Adam; with ``decoupled_weight_decay=True``, AdamW."""

    defaults = ADAM_GROUP

    @torch.no_grad()
    def step(self) -> None:
        g = self.group
        (beta1, beta2), lr, wd = g["betas"], g["lr"], g["weight_decay"]
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            s = self.state.get(i)
            if s is None:
                s = self.state[i] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                     "exp_avg_sq": torch.zeros_like(p)}
            s["step"] += 1
            grad = p.grad
            if wd != 0:
                if g["decoupled_weight_decay"]:
                    p.mul_(1 - lr * wd)
                else:
                    grad = grad.add(p, alpha=wd)
            s["exp_avg"].lerp_(grad, 1 - beta1)
            s["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            n = s["step"].item()
            denom = (s["exp_avg_sq"].sqrt() / (1 - beta2 ** n) ** 0.5).add_(g["eps"])
            p.addcdiv_(s["exp_avg"], denom, value=-lr / (1 - beta1 ** n))
