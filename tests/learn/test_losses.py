import doctest
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

import tuner.learn.losses
import tuner.learn.weights
from tuner.learn.losses import focal_loss

GAMMAS = [0.0, 0.5, 2.0, 5.0]
REDUCTIONS = ["none", "mean", "sum"]
EXTREME = [1e4, -1e4, 100.0, -100.0, 20.0, -20.0, 0.0]


def binary_data(n=64, scale=3.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=dtype) * scale, torch.randint(0, 2, (n,), generator=g).to(dtype)


def softmax_data(n=64, c=4, scale=3.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=dtype) * scale, torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha", [None, 0.25, 0.75])
@pytest.mark.parametrize("gamma", GAMMAS)
def test_binary_matches_torchvision_sigmoid_focal_loss(gamma, alpha, reduction):
    x, y = binary_data()
    ref = sigmoid_focal_loss(x, y, alpha=-1 if alpha is None else alpha, gamma=gamma, reduction=reduction)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(focal_loss(x, y, gamma, alpha, reduction), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gamma_zero_without_alpha_is_cross_entropy(reduction):
    x, y = softmax_data()
    expected = F.cross_entropy(x, y, reduction=reduction)
    torch.testing.assert_close(focal_loss(x, y, 0.0, None, reduction), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gamma_zero_without_alpha_is_binary_cross_entropy(reduction):
    x, y = binary_data()
    expected = F.binary_cross_entropy_with_logits(x, y, reduction=reduction)
    torch.testing.assert_close(focal_loss(x, y, 0.0, None, reduction), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("gamma", GAMMAS)
def test_softmax_form_matches_by_hand_formula_with_per_class_alpha(gamma, as_tensor):
    x, y = softmax_data(c=4)
    alpha = [0.1, 0.4, 0.7, 1.0]
    p = torch.exp(x) / torch.exp(x).sum(1, keepdim=True)
    p_t = p[torch.arange(len(y)), y]
    expected = -torch.tensor(alpha, dtype=torch.float64)[y] * (1 - p_t) ** gamma * torch.log(p_t)
    got = focal_loss(x, y, gamma, torch.tensor(alpha) if as_tensor else alpha, reduction="none")
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_float_alpha_weights_positives_by_alpha_and_negatives_by_one_minus_alpha():
    x, y = binary_data()
    ratio = focal_loss(x, y, 2.0, 0.25, "none") / focal_loss(x, y, 2.0, None, "none")
    torch.testing.assert_close(ratio[y == 1], torch.full_like(ratio[y == 1], 0.25))
    torch.testing.assert_close(ratio[y == 0], torch.full_like(ratio[y == 0], 0.75))


@pytest.mark.parametrize("alpha", [None, 0.25, 0.75])
@pytest.mark.parametrize("gamma", GAMMAS)
def test_float_alpha_in_two_class_softmax_equals_binary_sigmoid_form(gamma, alpha):
    # softmax([0, z]) gives class 1 the probability sigmoid(z)
    z, y = binary_data()
    two_class = torch.stack([torch.zeros_like(z), z], dim=1)
    torch.testing.assert_close(
        focal_loss(two_class, y.long(), gamma, alpha, "none"), focal_loss(z, y, gamma, alpha, "none")
    )


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_float_alpha_in_two_class_softmax_changes_relative_class_weight(gamma):
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # same p_t, one sample per class
    y = torch.tensor([1, 0])

    def class1_over_class0(alpha):
        loss = focal_loss(x, y, gamma, alpha, "none")
        return (loss[0] / loss[1]).item()

    assert class1_over_class0(0.25) == pytest.approx(0.25 / 0.75)
    assert class1_over_class0(0.75) == pytest.approx(0.75 / 0.25)


@pytest.mark.parametrize(("c", "alpha"), [(2, 0.2), (2, [0.9, 0.1]), (4, [0.1, 0.4, 0.7, 1.0])])
def test_alpha_changes_gradient_direction_not_only_its_norm(c, alpha):
    x, y = softmax_data(c=c)
    grads = []
    for a in (None, alpha):
        logits = x.clone().requires_grad_()
        focal_loss(logits, y, 2.0, a).backward()
        grads.append(logits.grad.flatten())
    assert F.cosine_similarity(grads[0], grads[1], dim=0) < 0.99


def test_gradient_matches_finite_differences():
    x, y = softmax_data(n=6, c=3, scale=2.0)
    alpha = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    for gamma in [0.0, 0.5, 2.0]:
        assert torch.autograd.gradcheck(lambda t: focal_loss(t, y, gamma, alpha), x.clone().requires_grad_())
    z, t = binary_data(n=6, scale=2.0)
    assert torch.autograd.gradcheck(lambda s: focal_loss(s, t, 0.5, 0.25), z.clone().requires_grad_())


def naive_focal(x, y, gamma):
    p_t = torch.sigmoid(x) * y + (1 - torch.sigmoid(x)) * (1 - y)
    return -((1 - p_t) ** gamma) * torch.log(p_t)


def extreme_binary(dtype):
    pairs = list(itertools.product(EXTREME, [0.0, 1.0]))
    x = torch.tensor([v for v, _ in pairs], dtype=dtype)
    y = torch.tensor([t for _, t in pairs], dtype=dtype)
    big = torch.randn(32, generator=torch.Generator().manual_seed(1), dtype=dtype) * 1e3
    return torch.cat([x, big]), torch.cat([y, (big > 0).to(dtype)])


def extreme_softmax(dtype):
    rows = list(itertools.product(EXTREME, repeat=2))
    x = torch.tensor([[a, b, 0.0] for a, b in rows], dtype=dtype)
    big = torch.randn(32, 3, generator=torch.Generator().manual_seed(1), dtype=dtype) * 1e3
    x = torch.cat([x, big])
    return x, torch.arange(len(x)) % 3


def test_extreme_inputs_break_the_naive_formula():
    # the finiteness test below is only meaningful if its inputs are hard for (1 - p_t)**gamma
    x, y = extreme_binary(torch.float32)
    x.requires_grad_()
    naive_focal(x, y, 0.5).sum().backward()
    assert not torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0])
@pytest.mark.parametrize("make", [extreme_binary, extreme_softmax])
def test_loss_and_gradient_are_finite_for_extreme_logits(make, gamma, dtype):
    x, y = make(dtype)
    alpha = 0.25 if x.dim() == 1 else [0.2, 0.3, 0.5]
    for a in (None, alpha):
        logits = x.clone().requires_grad_()
        loss = focal_loss(logits, y, gamma, a, "none")
        loss.sum().backward()
        assert torch.isfinite(loss).all() and (loss >= 0).all()
        assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_float32_well_classified_samples_keep_an_accurate_positive_loss(gamma):
    margins = [20.0, 22.5, 25.0, 27.5, 30.0]
    # binary: -log p_t = log1p(e^-m), log(1 - p_t) = -m - log1p(e^-m)
    ce = [math.log1p(math.exp(-m)) for m in margins]
    expected = torch.tensor([math.exp(gamma * (-m - c)) * c for m, c in zip(margins, ce)])
    got = focal_loss(torch.tensor(margins), torch.ones(len(margins)), gamma, reduction="none")
    assert (got > 0).all()
    torch.testing.assert_close(got, expected.float(), rtol=1e-3, atol=0)
    # softmax row [m, 0, 0]: -log p_t = log1p(2e^-m), log(1 - p_t) = log 2 - m - log1p(2e^-m)
    ce = [math.log1p(2 * math.exp(-m)) for m in margins]
    expected = torch.tensor([math.exp(gamma * (math.log(2) - m - c)) * c for m, c in zip(margins, ce)])
    x = torch.tensor([[m, 0.0, 0.0] for m in margins])
    got = focal_loss(x, torch.zeros(len(margins), dtype=torch.long), gamma, reduction="none")
    assert (got > 0).all()
    torch.testing.assert_close(got, expected.float(), rtol=1e-3, atol=0)


@pytest.mark.parametrize(
    ("data", "alpha"), [(binary_data, 0.25), (softmax_data, [0.1, 0.4, 0.7, 1.0])], ids=["binary", "softmax"]
)
def test_bfloat16_is_close_to_float32(data, alpha):
    x, y = data(dtype=torch.float32)
    logits = x.bfloat16().requires_grad_()
    loss = focal_loss(logits, y.bfloat16() if y.is_floating_point() else y, 2.0, alpha)
    loss.backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad).all()
    torch.testing.assert_close(loss.float(), focal_loss(x, y, 2.0, alpha), rtol=3e-2, atol=1e-3)


def test_alpha_vector_follows_logits_dtype():
    x, y = softmax_data(dtype=torch.float32)
    loss = focal_loss(x, y, 2.0, torch.tensor([0.1, 0.4, 0.7, 1.0], dtype=torch.float64))
    assert loss.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    for data, alpha in [(binary_data, 0.25), (softmax_data, torch.tensor([0.1, 0.4, 0.7, 1.0]))]:
        x, y = data(dtype=torch.float32)
        cuda = focal_loss(x.cuda(), y.cuda(), 2.0, alpha, "none")
        assert cuda.device.type == "cuda"
        torch.testing.assert_close(cuda.cpu(), focal_loss(x, y, 2.0, alpha, "none"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gamma": -1.0}, r"gamma.*got -1\.0"),
        ({"gamma": float("nan")}, r"gamma.*got nan"),
        ({"gamma": "2"}, r"gamma.*got '2'"),
        ({"alpha": 1.5}, r"alpha.*got 1\.5"),
        ({"alpha": -0.1}, r"alpha.*got -0\.1"),
        ({"reduction": "avg"}, r"reduction.*got 'avg'"),
    ],
)
@pytest.mark.parametrize("data", [binary_data, softmax_data], ids=["binary", "softmax"])
def test_invalid_scalar_arguments_raise_value_error_naming_the_value(data, kwargs, match):
    x, y = data(c=2) if data is softmax_data else data()
    args = {"gamma": 2.0, "alpha": 0.25, "reduction": "mean"} | kwargs
    with pytest.raises(ValueError, match=match):
        focal_loss(x, y, **args)


@pytest.mark.parametrize(
    ("alpha", "match"),
    [
        ([0.2, 0.8], r"one weight per class \(3\).*\[0\.2, 0\.8\]"),
        ([0.2, 1.2, 0.3], r"\[0, 1\].*1\.2"),
        (torch.tensor([0.2, -0.5, 0.3]), r"\[0, 1\].*-0\.5"),
        (0.25, r"0\.25.*length-3 sequence"),
        ("abc", r"alpha.*'abc'"),
    ],
)
def test_invalid_alpha_for_three_classes_raises_value_error_naming_the_value(alpha, match):
    x, y = softmax_data(c=3)
    with pytest.raises(ValueError, match=match):
        focal_loss(x, y, 2.0, alpha)


@pytest.mark.parametrize(
    ("logits", "targets", "match"),
    [
        (torch.zeros(4), torch.zeros(3), r"\(3,\).*\(4,\)"),
        (torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.long), r"\(4, 3\)"),
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), r"\(5,\)"),
        (torch.zeros(4, 3), torch.zeros(4), r"torch\.float32"),
        (torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), r"at least 2 classes.*\(4, 1\)"),
        (torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long), r"\(2, 3, 4\)"),
    ],
)
def test_mismatched_shapes_raise_value_error_naming_the_shapes(logits, targets, match):
    with pytest.raises(ValueError, match=match):
        focal_loss(logits, targets, 2.0)


@pytest.mark.parametrize("module", [tuner.learn.losses, tuner.learn.weights], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999])
def test_class_balanced_weights_follow_the_effective_number_formula(beta):
    counts = [124, 60, 31, 17, 6]
    got = tuner.learn.weights.class_balanced_weights(counts, beta)
    raw = [(1 - beta) / (1 - beta**n) for n in counts]  # Cui et al. 2019, eq. 5 up to scale
    want = [w / max(raw) for w in raw]
    assert got == pytest.approx(want, rel=1e-9)
    assert max(got) == pytest.approx(1.0) and got == sorted(got)  # rarer classes weigh more


def test_class_balanced_weights_span_uniform_to_inverse_frequency():
    counts = [100, 10]
    assert tuner.learn.weights.class_balanced_weights(counts, 0.0) == [1.0, 1.0]
    near_one = tuner.learn.weights.class_balanced_weights(counts, 1 - 1e-9)
    assert near_one == pytest.approx([0.1, 1.0], rel=1e-6)  # beta -> 1: 1 / n_c


@pytest.mark.parametrize("beta", [1.0, -0.1, float("nan"), True, "0.9"])
def test_class_balanced_weights_reject_bad_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        tuner.learn.weights.class_balanced_weights([10, 5], beta)


def test_scalar_alpha_with_many_classes_weights_the_class_to_detect_else_the_rarest():
    counts = [30, 5, 8]
    assert tuner.learn.weights.class_weights(0.8, counts) == [pytest.approx(0.2), 0.8, pytest.approx(0.2)]
    assert tuner.learn.weights.class_weights(0.8, counts, focus=2) == [pytest.approx(0.2), pytest.approx(0.2), 0.8]
    assert tuner.learn.weights.loss_alpha({"alpha": 0.8}, counts, focus=0) == [0.8, pytest.approx(0.2), pytest.approx(0.2)]
    assert tuner.learn.weights.class_weights(0.8, [30, 5], focus=0) == 0.8  # two classes: alpha is the positive's


@pytest.mark.parametrize("data", [binary_data, softmax_data], ids=["binary", "softmax"])
def test_zero_dim_tensor_alpha_is_the_same_as_a_float(data):
    x, y = data(c=2) if data is softmax_data else data()
    expected = focal_loss(x, y, 2.0, 0.25, "none")
    assert torch.allclose(focal_loss(x, y, 2.0, torch.tensor(0.25), "none"), expected)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1\.5"):
        focal_loss(x, y, 2.0, torch.tensor(1.5))


def test_one_logit_per_sample_in_two_dims_names_the_binary_form():
    with pytest.raises(ValueError, match=r"squeeze\(1\) of shape \(N,\)"):
        focal_loss(torch.zeros(4, 1), torch.zeros(4, 1), 2.0, 0.25)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sixteen_bit_logits_give_a_float32_loss_near_the_float64_one(dtype):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4096, generator=g) * 4, (torch.rand(4096, generator=g) < 0.1).float()
    low = x.to(dtype).requires_grad_()
    loss = focal_loss(low, y, 2.0, 0.25, "sum")
    exact = focal_loss(low.detach().double(), y.double(), 2.0, 0.25, "sum")
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(exact.item(), rel=1e-5)
    loss.backward()
    assert low.grad.dtype == dtype and torch.isfinite(low.grad).all()
