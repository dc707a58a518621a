"""tuner's optimizers against torch.optim's: the same trajectory, and state_dicts that load either way."""

import doctest

import pytest
import torch

import tuner.learn.optim
from tuner.learn import optim

CASES = [
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3), lambda p: optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3)),
    ("adam", lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-3), lambda p: optim.Adam(p, lr=0.01, weight_decay=1e-3)),
    ("adamw", lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=1e-2),
     lambda p: optim.Adam(p, lr=0.01, weight_decay=1e-2, decoupled_weight_decay=True)),
]


def net(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))


def run(model, opt, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("name, theirs, ours", CASES, ids=[c[0] for c in CASES])
def test_the_trajectory_is_torch_optims(name, theirs, ours):
    a, b = net(0), net(0)
    opt_a, opt_b = theirs(a.parameters()), ours(b.parameters())
    run(a, opt_a, 30)
    run(b, opt_b, 30)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        assert sa["state"][i].keys() == sb["state"][i].keys()
        for k in sa["state"][i]:
            torch.testing.assert_close(sa["state"][i][k], sb["state"][i][k], rtol=1e-6, atol=1e-7)
    assert {k: v for k, v in sa["param_groups"][0].items()} == sb["param_groups"][0]


@pytest.mark.parametrize("name, theirs, ours", CASES, ids=[c[0] for c in CASES])
def test_a_state_saved_by_either_resumes_in_the_other(name, theirs, ours):
    """A checkpoint written before tuner had its own optimizers resumes as if never stopped, and back."""
    ref = net(0)
    run(ref, theirs(ref.parameters()), 20)
    for first, second in ((theirs, ours), (ours, theirs)):
        model = net(0)
        opt = first(model.parameters())
        run(model, opt, 10)
        saved = opt.state_dict()
        resumed = second(model.parameters())
        resumed.load_state_dict(saved)
        run(model, resumed, 10, seed=2)
        again = net(0)
        opt_again = theirs(again.parameters())
        run(again, opt_again, 10)
        run(again, opt_again, 10, seed=2)
        for p, q in zip(model.parameters(), again.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_a_state_of_other_parameters_is_refused():
    opt = optim.Adam(net(0).parameters(), lr=0.01)
    with pytest.raises(ValueError, match="parameters"):
        opt.load_state_dict({"state": {}, "param_groups": [{"params": [0, 1]}]})


def test_doctest():
    assert doctest.testmod(tuner.learn.optim).failed == 0
