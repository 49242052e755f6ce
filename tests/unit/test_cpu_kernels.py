"""CPU kernel choice (`--cpu_conv`, `--cpu_matmul`): the switches, the census of a step's calls, the timing, the
per-shape convolution plan, and the trainer using, storing and resuming the choice."""

from __future__ import annotations

import functools
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from textinv import cpu_kernels
from textinv.cpu_kernels import (
    ConvPlan,
    KernelCall,
    cpu_conv_kernels,
    cpu_matmul_kernels,
    pick_cpu_conv,
    pick_cpu_matmul,
    record_kernel_calls,
)


class _RecordsKernels(torch.autograd.Function):
    """Identity whose forward and backward note whether oneDNN convolutions were enabled when they ran."""

    seen: list[tuple[str, bool]] = []

    @staticmethod
    def forward(ctx, x):
        _RecordsKernels.seen.append(("forward", torch._C._get_mkldnn_enabled()))
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        _RecordsKernels.seen.append(("backward", torch._C._get_mkldnn_enabled()))
        return grad


def test_cpu_conv_kernels_switch_covers_the_backward_and_is_restored():
    before = torch._C._get_mkldnn_enabled()
    _RecordsKernels.seen.clear()
    x = torch.ones(3, requires_grad=True)
    with cpu_conv_kernels("native"):
        _RecordsKernels.apply(x).sum().backward()
    assert _RecordsKernels.seen == [("forward", False), ("backward", False)]
    assert torch._C._get_mkldnn_enabled() == before
    with pytest.raises(RuntimeError), cpu_conv_kernels("native"):
        raise RuntimeError("boom")
    assert torch._C._get_mkldnn_enabled() == before
    with cpu_conv_kernels("onednn"):
        assert torch._C._get_mkldnn_enabled() == before
    with cpu_conv_kernels(""):  # nothing chosen (off the CPU): PyTorch's default stays
        assert torch._C._get_mkldnn_enabled() == before


def test_native_and_onednn_convolutions_agree():
    """The two kernel sets compute the same forward and input gradient (only the summation order differs)."""
    torch.manual_seed(0)
    weight = torch.randn(64, 32, 3, 3) * 0.05
    x0 = torch.randn(2, 32, 16, 16)
    results = {}
    for kernels in ("onednn", "native"):
        x = x0.clone().requires_grad_(True)
        with cpu_conv_kernels(kernels):
            y = F.conv2d(x, weight, padding=1)
            (y * y).sum().backward()
        results[kernels] = (y.detach(), x.grad)
    torch.testing.assert_close(results["onednn"][0], results["native"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results["onednn"][1], results["native"][1], rtol=1e-5, atol=1e-5)


class _Net(torch.nn.Module):
    """conv_in (input needs no gradient) -> + trainable offset -> the same 3x3 conv shape twice -> frozen linear
    -> trainable linear: the shapes of a UNet step in miniature."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.convs = torch.nn.ModuleList([torch.nn.Conv2d(8, 8, 3, padding=1) for _ in range(2)])
        self.proj = torch.nn.Linear(8, 16)
        self.requires_grad_(False)
        self.offset = torch.nn.Parameter(torch.zeros(8, 1, 1))  # what "trains"
        self.head = torch.nn.Linear(16, 4)  # trainable weight: never ours to route

    def forward(self, x):
        h = self.conv_in(x) + self.offset
        for conv in self.convs:
            h = conv(h)
        return self.head(self.proj(h.flatten(2).transpose(1, 2)))


def test_record_kernel_calls_counts_a_steps_frozen_calls_by_shape():
    net = _Net()
    calls = record_kernel_calls(lambda: net(torch.randn(1, 3, 6, 6)))
    params = ((1, 1), (1, 1), (1, 1), 1)
    assert calls == Counter(
        {
            KernelCall("conv2d", (1, 3, 6, 6), (8, 3, 3, 3), (1, 8, 6, 6), True, params, input_grad=False): 1,
            KernelCall("conv2d", (1, 8, 6, 6), (8, 8, 3, 3), (1, 8, 6, 6), True, params, input_grad=True): 2,
            KernelCall("linear", (1, 36, 8), (16, 8), (1, 36, 16), True, (), input_grad=True): 1,
        }
    )  # the trainable head is not counted: its weight gradient needs PyTorch's own path


def test_record_kernel_calls_counts_bf16_convolutions_but_not_bf16_linear_layers():
    """Under `--mixed_precision bf16` the frozen convolutions are counted with their dtype (their plan keys say
    it, fp32 keys stay as before); bf16 linear layers are not (oneDNN runs them either way), nor fp16 calls."""
    net = _Net().to(torch.bfloat16)
    calls = record_kernel_calls(lambda: net(torch.randn(1, 3, 6, 6, dtype=torch.bfloat16)))
    assert {c.op for c in calls} == {"conv2d"} and sum(calls.values()) == 3
    assert {c.dtype for c in calls} == {"bfloat16"}
    assert all(c.key.endswith("] bfloat16") for c in calls)
    fp32 = KernelCall("conv2d", (1, 8, 6, 6), (8, 8, 3, 3), (1, 8, 6, 6), True, (1, 1, 1, 1))
    assert fp32.key == "[1, 8, 6, 6] [8, 8, 3, 3] [1, 1, 1, 1]"
    half = _Net().to(torch.float16)
    assert not record_kernel_calls(lambda: half(torch.randn(1, 3, 6, 6, dtype=torch.float16)))


def test_bf16_convolutions_are_planned_between_onednn_and_the_gemm_never_native(monkeypatch):
    """PyTorch's native kernels run bf16 convolutions hundreds of times slower: they are not timed for them and
    the run's main set stays oneDNN; a bf16 shape the plan lists runs on its kernels (found by its bf16 key)."""
    ran = []
    clock = [0.0]

    def fake(direction):
        def run(kernels, *args):
            ran.append(kernels)
            clock[0] += {"onednn": 0.03, "gemm": 0.01, "native": 5.0}[kernels]

        return run

    monkeypatch.setattr(cpu_kernels, "_conv_forward", fake("forward"))
    monkeypatch.setattr(cpu_kernels, "_conv_input_grad", fake("backward"))
    monkeypatch.setattr(cpu_kernels.time, "perf_counter", lambda: clock[0])
    call = KernelCall("conv2d", (1, 8, 6, 6), (8, 8, 3, 3), (1, 8, 6, 6), True, (1, 1, 1, 1), True, "bfloat16")
    plan, seconds = pick_cpu_conv(Counter({call: 2}), repeats=1)
    assert "native" not in ran and set(ran) == {"onednn", "gemm"}
    assert plan == ConvPlan("onednn", {call.key: "gemm"})
    assert seconds == pytest.approx({"onednn": 0.12, "per shape": 0.04})

    monkeypatch.undo()
    conv = torch.nn.Conv2d(8, 8, 3, padding=1).requires_grad_(False).to(torch.bfloat16)
    x = torch.randn(1, 8, 6, 6, dtype=torch.bfloat16, requires_grad=True)
    (listed,) = record_kernel_calls(lambda: conv(x))
    routed = []
    apply = cpu_kernels._ConvOn.apply
    monkeypatch.setattr(cpu_kernels._ConvOn, "apply", lambda *a: routed.append(a[4:]) or apply(*a))
    with cpu_conv_kernels(ConvPlan("onednn", {listed.key: "gemm"}), keep_inputs=False):
        conv(x).float().square().sum().backward()
    assert routed == [("gemm", "gemm")]
    assert x.grad is not None and x.grad.dtype == torch.bfloat16


def test_gemm_convolution_in_bf16_gives_pytorchs_output_and_input_gradient():
    """The GEMM set on bf16 tensors (oneDNN's bf16 GEMM, fp32 accumulation) agrees with a float64 convolution
    to bf16 rounding, in PyTorch's NCHW layout and dtype."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 64, 8, 8, generator=gen), torch.randn(32, 64, 3, 3, generator=gen) * 0.05
    b, params = torch.randn(32, generator=gen), (1, 1, 1, 1)
    want = F.conv2d(x.double(), w.double(), b.double(), *params)
    grad = torch.randn(want.shape, generator=gen)
    want_grad = torch.nn.grad.conv2d_input(x.shape, w.double(), grad.double(), padding=1)
    bf = torch.bfloat16
    got = cpu_kernels._conv_forward("gemm", x.to(bf), w.to(bf), b.to(bf), params)
    got_grad = cpu_kernels._conv_input_grad("gemm", grad.to(bf), x.shape, w.to(bf), params)
    assert got.dtype == got_grad.dtype == bf and got.is_contiguous() and got_grad.shape == x.shape
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=2e-2, atol=2e-2 * want_grad.abs().max().item())


def test_record_kernel_calls_keeps_no_activations_for_a_backward():
    """The census forward is never run backward: it keeps nothing, so planning adds no step's activations."""
    net = _Net()
    kept = []

    def forward():
        out = net(torch.randn(1, 3, 6, 6))
        kept.append(out)
        return out

    record_kernel_calls(forward)
    (out,) = kept
    assert out.requires_grad  # gradients were on, so `input_grad` is read as training would see it
    with pytest.raises(RuntimeError, match="keeps no tensors"):
        out.sum().backward()
    # Outside the census the same forward keeps its tensors and runs backward.
    net(torch.randn(1, 3, 6, 6)).sum().backward()
    assert net.head.weight.grad is not None


def test_time_kernel_calls_interleaves_the_kernels_and_keeps_each_shapes_best(monkeypatch):
    """Every shape runs `repeats` times per kernel set, the sets alternating; the best reading counts."""
    readings = iter([0.5, 0.04, 0.03, 0.05, 0.03, 0.06])  # onednn, native, onednn, native, ...: one slow first call
    ran = []

    def fake_run(call, x, weight, bias, grad):
        ran.append(("native" if not torch._C._get_mkldnn_enabled() else "onednn", x.shape, x.requires_grad))
        clock[0] += next(readings)

    clock = [0.0]
    monkeypatch.setattr(cpu_kernels, "_run_call", fake_run)
    monkeypatch.setattr(cpu_kernels.time, "perf_counter", lambda: clock[0])
    call = KernelCall("conv2d", (1, 8, 6, 6), (8, 8, 3, 3), (1, 8, 6, 6), True, (1, 1, 1, 1), input_grad=True)
    seconds = cpu_kernels.time_kernel_calls([call], cpu_conv_kernels, ("onednn", "native"), repeats=3)
    assert [k for k, _, _ in ran] == ["onednn", "native"] * 3
    assert all(shape == (1, 8, 6, 6) and grad for _, shape, grad in ran)
    assert seconds == {call: {"onednn": pytest.approx(0.03), "native": pytest.approx(0.04)}}


def test_time_conv_calls_times_each_direction_apart_on_every_set_that_can_run_it(monkeypatch):
    """Forward and input gradient are timed apart, the sets interleaved, best reading kept; the GEMM set skips a
    grouped convolution, and a convolution without an input gradient times its forward only."""
    ran = []
    clock = [0.0]
    readings = iter([0.5, 0.2, 0.04, 0.02, 0.03, 0.01] + [0.03, 0.05, 0.03, 0.01, 0.02, 0.02] + [0.9] * 8)

    def fake(direction):
        def run(kernels, *args):
            ran.append((direction, kernels))
            clock[0] += next(readings)

        return run

    monkeypatch.setattr(cpu_kernels, "_conv_forward", fake("forward"))
    monkeypatch.setattr(cpu_kernels, "_conv_input_grad", fake("backward"))
    monkeypatch.setattr(cpu_kernels.time, "perf_counter", lambda: clock[0])
    plain = KernelCall("conv2d", (1, 8, 6, 6), (8, 8, 3, 3), (1, 8, 6, 6), True, (1, 1, 1, 1), input_grad=True)
    grouped = KernelCall("conv2d", (1, 8, 6, 6), (8, 4, 3, 3), (1, 8, 6, 6), True, (1, 1, 1, 2), input_grad=False)
    seconds = cpu_kernels.time_conv_calls([plain, grouped], ("onednn", "native", "gemm"), repeats=2)
    assert ran[:12] == [(d, k) for k in ("onednn", "native", "gemm") for d in ("forward", "backward")] * 2
    assert ran[12:] == [("forward", "onednn"), ("forward", "native")] * 2
    assert seconds[plain] == {
        "onednn": (pytest.approx(0.03), pytest.approx(0.05)),
        "native": (pytest.approx(0.03), pytest.approx(0.01)),
        "gemm": (pytest.approx(0.02), pytest.approx(0.01)),
    }
    assert seconds[grouped] == {"onednn": (pytest.approx(0.9), 0.0), "native": (pytest.approx(0.9), 0.0)}


@pytest.mark.parametrize(
    ("shape", "weight", "params", "bias"),
    [
        ((1, 8, 9, 7), (16, 8, 3, 3), (1, 1, 1, 1), True),  # 3x3, not square
        ((2, 8, 10, 10), (16, 8, 3, 3), ((2, 2), (1, 1), (1, 1), 1), False),  # strided, a batch of two
        ((2, 8, 6, 6), (4, 8, 1, 1), (1, 0, 1, 1), True),  # 1x1: the input is the patches
        ((1, 8, 7, 7), (4, 8, 1, 1), (2, 0, 1, 1), True),  # strided 1x1
        ((1, 6, 11, 9), (6, 6, 3, 3), (1, 2, 2, 1), True),  # dilated
        ((1, 4, 7, 7), (5, 4, 3, 3), (2, 0, 1, 1), False),  # strided past the edge: the last row gets no gradient
    ],
)
def test_gemm_convolution_gives_pytorchs_output_and_input_gradient(shape, weight, params, bias):
    """The GEMM set's forward and input gradient are PyTorch's convolution's (to fp32 rounding: checked against
    float64), in PyTorch's NCHW layout."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(shape, generator=gen), torch.randn(weight, generator=gen)
    b = torch.randn(weight[0], generator=gen) if bias else None
    x64 = x.double().requires_grad_(True)
    want = F.conv2d(x64, w.double(), None if b is None else b.double(), *params)
    grad = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    (want_grad,) = torch.autograd.grad(want, x64, grad)
    got = cpu_kernels._conv_forward("gemm", x, w, b, params)
    got_grad = cpu_kernels._conv_input_grad("gemm", grad.float(), x.shape, w, params)
    assert got.is_contiguous() and got_grad.shape == x.shape
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, want_grad.float(), rtol=1e-5, atol=1e-5)


def test_a_plan_that_lists_a_grouped_convolution_on_the_gemm_runs_it_on_the_main_set(monkeypatch):
    """A stored plan is only a timing's advice: the GEMM set cannot run a grouped convolution, so it runs on the
    plan's main kernels (as it would on a PyTorch without oneDNN)."""
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2).requires_grad_(False)
    x0 = torch.randn(1, 8, 6, 6)
    key = record_kernel_calls(lambda: conv(x0)).most_common(1)[0][0].key
    routed = []
    apply = cpu_kernels._ConvOn.apply
    monkeypatch.setattr(cpu_kernels._ConvOn, "apply", lambda *a: routed.append(a[4:]) or apply(*a))
    x = x0.clone().requires_grad_(True)
    with cpu_conv_kernels(ConvPlan("native", {key: "gemm"})):
        conv(x).square().sum().backward()
    assert routed == [("native", "native")]
    x_ref = x0.clone().requires_grad_(True)
    conv(x_ref).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)


def _conv(n_in: int, size: int, padding=(1, 1)) -> KernelCall:
    return KernelCall("conv2d", (1, n_in, size, size), (n_in, n_in, 3, 3), (1, n_in, size, size), True,
                      ((1, 1), padding, (1, 1), 1))  # fmt: skip


def _fake_timings(monkeypatch, table: dict[KernelCall, dict[str, float]]) -> None:
    monkeypatch.setattr(cpu_kernels, "time_kernel_calls", lambda calls, switch, choices, repeats: table)


def _fake_conv_timings(monkeypatch, table: dict[KernelCall, dict]) -> None:
    """Convolution timings: a (forward, input gradient) pair per set, or one number split evenly between them."""
    pairs = {c: {k: v if isinstance(v, tuple) else (v / 2, v / 2) for k, v in t.items()} for c, t in table.items()}
    monkeypatch.setattr(cpu_kernels, "time_conv_calls", lambda calls, choices, repeats: pairs)


def test_pick_cpu_conv_plans_each_shape_on_its_faster_kernels(monkeypatch):
    """Native wins the step, so it is the run's set; a shape that runs clearly faster on oneDNN moves there; a
    near tie stays; a shape the plan cannot route (padding="same") stays whatever its timing."""
    big, small, tie, same = _conv(8, 32), _conv(64, 4), _conv(16, 16), _conv(4, 32, padding="same")
    table = {
        big: {"onednn": 0.8, "native": 1.0},
        small: {"onednn": 3.0, "native": 1.0},
        tie: {"onednn": 0.98, "native": 1.0},
        same: {"onednn": 0.5, "native": 1.0},
    }
    _fake_conv_timings(monkeypatch, table)
    calls = Counter({big: 2, small: 3, tie: 1, same: 1})
    calls[KernelCall("linear", (1, 4), (4, 4), (1, 4), False)] = 5  # not a convolution: not timed here
    plan, seconds = pick_cpu_conv(calls)
    assert plan == ConvPlan("native", {big.key: "onednn"})
    assert str(plan) == "native; oneDNN for 1 shape(s)"
    assert seconds == pytest.approx({"onednn": 12.08, "native": 7.0, "per shape": 6.6})


@pytest.mark.parametrize(
    ("onednn_s", "native_s", "expected"), [(1.0, 0.5, "native"), (1.0, 0.97, "onednn"), (0.5, 1.0, "onednn")]
)
def test_pick_cpu_conv_keeps_onednn_unless_native_wins_clearly(monkeypatch, onednn_s, native_s, expected):
    call = _conv(8, 8)
    _fake_conv_timings(monkeypatch, {call: {"onednn": onednn_s, "native": native_s}})
    assert pick_cpu_conv(Counter({call: 1}))[0] == ConvPlan(expected)


def test_a_near_tie_keeps_onednn_as_main_set_and_moves_only_clear_native_wins(monkeypatch):
    """Native is 3% faster over the step (under MIN_GAIN), so oneDNN stays the run's set and only the shape that
    native runs clearly faster moves: the plan costs less than all-oneDNN, here more than all-native (CI saw it)."""
    a, b, c = _conv(8, 32), _conv(16, 16), _conv(32, 8)
    table = {a: {"onednn": 1.0, "native": 0.94}, b: {"onednn": 1.0, "native": 0.98}, c: {"onednn": 1.0, "native": 0.98}}
    _fake_conv_timings(monkeypatch, table)
    plan, seconds = pick_cpu_conv(Counter({a: 1, b: 1, c: 1}))
    assert plan == ConvPlan("onednn", {a.key: "native"})
    assert seconds == pytest.approx({"onednn": 3.0, "native": 2.9, "per shape": 2.94})


def test_pick_cpu_conv_plans_a_shapes_forward_and_input_gradient_apart(monkeypatch):
    """Each direction moves on its own to the set that runs it clearly faster, oneDNN's GEMM included; a set's
    missing timing (the GEMM cannot run a grouped convolution) leaves it out for that shape."""
    a, b, c, grouped = _conv(8, 8), _conv(16, 4), _conv(32, 4), _conv(4, 32)
    table = {
        a: {"onednn": (3.0, 3.0), "native": (1.0, 1.0), "gemm": (0.97, 0.5)},  # backward only: 3% is no win
        b: {"onednn": (0.5, 1.0), "native": (1.0, 1.0), "gemm": (2.0, 0.5)},  # forward oneDNN, backward GEMM
        c: {"onednn": (0.5, 0.5), "native": (1.0, 1.0), "gemm": (0.6, 0.6)},  # both oneDNN
        grouped: {"onednn": (2.0, 2.0), "native": (1.0, 1.0)},
    }
    _fake_conv_timings(monkeypatch, table)
    plan, seconds = pick_cpu_conv(Counter({a: 2, b: 1, c: 1, grouped: 1}))
    assert plan == ConvPlan("native", {a.key: "native/gemm", b.key: "onednn/gemm", c.key: "onednn"})
    assert plan.kernels_of(a.key) == ("native", "gemm") and plan.kernels_of(c.key) == ("onednn", "onednn")
    assert plan.kernels_of(grouped.key) == ("native", "native")
    moved = "native/oneDNN GEMM for 1 shape(s); oneDNN for 1 shape(s); oneDNN/oneDNN GEMM for 1 shape(s)"
    assert str(plan) == "native; " + moved
    assert seconds == pytest.approx({"onednn": 18.5, "native": 10.0, "per shape": 2 * 1.5 + 1.0 + 1.0 + 2.0})


def test_pick_cpu_conv_times_real_kernels():
    """No fakes: the census of a small net, timed on both kernel sets, gives a plan over its own shapes."""
    net = _Net()
    calls = record_kernel_calls(lambda: net(torch.randn(1, 3, 6, 6)))
    plan, seconds = pick_cpu_conv(calls, repeats=2)
    assert plan.kernels in ("onednn", "native")
    assert all(set(plan.kernels_of(key)) <= set(cpu_kernels.CONV_KERNELS) for key in plan.shapes)
    assert all(plan.kernels_of(key) != (plan.kernels, plan.kernels) for key in plan.shapes)
    assert set(plan.shapes) <= {c.key for c in calls if c.op == "conv2d"}
    assert set(seconds) == {"onednn", "native", "per shape"} and all(s > 0 for s in seconds.values())
    # Each moved shape is faster on its set, so the plan never costs more than its main set alone (it can cost
    # more than the other set: a main set kept within MIN_GAIN of it keeps its slower shapes).
    assert seconds["per shape"] <= seconds[plan.kernels] * 1.0001
    assert seconds["per shape"] < seconds[plan.kernels] or not plan.shapes


def test_a_plan_runs_its_listed_shapes_on_the_other_kernels_forward_and_backward(monkeypatch):
    """Under ConvPlan("native", {A: "onednn"}) shape A's forward and input gradient run on oneDNN, shape B's on
    native; the numbers are those of all-native (summation order aside), and the switch is restored."""
    torch.manual_seed(0)
    conv_a, conv_b = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 1)
    for conv in (conv_a, conv_b):
        conv.requires_grad_(False)
    x0 = torch.randn(1, 8, 10, 10)
    key_a = record_kernel_calls(lambda: conv_a(x0)).most_common(1)[0][0].key
    seen = []

    class _Watch(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.conv2d:
                seen.append(("forward", tuple(args[1].shape), torch._C._get_mkldnn_enabled()))
            return func(*args, **(kwargs or {}))

    backward = cpu_kernels._convolution_backward

    def watched_backward(*args):
        seen.append(("backward", tuple(args[2].shape), torch._C._get_mkldnn_enabled()))
        return backward(*args)

    monkeypatch.setattr(cpu_kernels, "_convolution_backward", watched_backward)
    results = {}
    for name, plan in (("native", ConvPlan("native")), ("planned", ConvPlan("native", {key_a: "onednn"}))):
        seen.clear()
        x = x0.clone().requires_grad_(True)
        with _Watch(), cpu_conv_kernels(plan):
            y = conv_b(conv_a(x))
            (y * y).sum().backward()
        results[name] = (y.detach(), x.grad)
        assert torch._C._get_mkldnn_enabled()
    # (the watch sits under the plan, so it sees each call as the plan makes it; B's backward is PyTorch's own)
    assert seen == [("forward", (8, 8, 3, 3), True), ("forward", (4, 8, 1, 1), False), ("backward", (8, 8, 3, 3), True)]
    for planned, native in zip(results["planned"], results["native"], strict=True):
        torch.testing.assert_close(planned, native, rtol=1e-5, atol=1e-5)


def _note(seen: list, tensor: torch.Tensor) -> torch.Tensor:
    seen.append(tensor)
    return tensor


def _note_input(seen: list, module: torch.nn.Module, args: tuple) -> None:
    seen.append(args[0])


@pytest.mark.parametrize("kernels", ["native", "onednn", ""])
def test_training_convolutions_keep_no_inputs_and_give_pytorchs_gradients(kernels):
    """With `keep_inputs=False` (training) the backward keeps the frozen convolutions' weights but none of their
    inputs, and the input gradient is PyTorch's own to the bit, for strided, 1x1, grouped and biasless ones
    ("" is a plan made off the CPU: PyTorch's kernels); a convolution whose weight trains is left alone."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
        torch.nn.Conv2d(8, 6, 1, bias=False), torch.nn.Conv2d(6, 6, 3, padding=1, groups=2),
    ).requires_grad_(False)  # fmt: skip
    trainable = torch.nn.Conv2d(6, 2, 1)
    x0 = torch.randn(2, 4, 12, 12)
    grads, kept = {}, {}
    for name, keep_inputs in (("pytorch", True), ("lean", False)):
        x = x0.clone().requires_grad_(True)
        saved: list[torch.Tensor] = []
        inputs: list[torch.Tensor] = []
        hooks = [m.register_forward_pre_hook(functools.partial(_note_input, inputs)) for m in net]
        with torch.autograd.graph.saved_tensors_hooks(functools.partial(_note, saved), lambda t: t):
            with cpu_conv_kernels(ConvPlan(kernels), keep_inputs=keep_inputs):
                loss = trainable(net(x)).square().sum()
        for hook in hooks:
            hook.remove()
        with cpu_conv_kernels(ConvPlan(kernels), keep_inputs=keep_inputs):
            loss.backward()
        grads[name] = (x.grad, trainable.weight.grad.clone())
        trainable.zero_grad()
        conv_inputs = {t.data_ptr() for m, t in zip(net, inputs, strict=True) if isinstance(m, torch.nn.Conv2d)}
        kept[name] = conv_inputs & {t.data_ptr() for t in saved}
        assert len(conv_inputs) == 4
    assert len(kept["pytorch"]) == 4 and not kept["lean"]
    assert all(torch.equal(a, b) for a, b in zip(grads["lean"], grads["pytorch"], strict=True))


def test_onednn_linear_gives_the_blas_results_and_leaves_trainable_layers_alone(monkeypatch):
    """`cpu_matmul_kernels("onednn")` computes frozen linear layers' outputs and input gradients as BLAS does
    (summation order aside); a layer whose weight trains keeps PyTorch's own path and gets its gradient."""
    torch.manual_seed(0)
    frozen = torch.nn.Linear(48, 40).requires_grad_(False)
    trainable = torch.nn.Linear(40, 8)
    x0 = torch.randn(2, 7, 48)
    results, used = {}, []
    gemm = cpu_kernels._onednn_gemm

    def noting_gemm(x, weight, bias):
        used.append(tuple(weight.shape))
        return gemm(x, weight, bias)

    monkeypatch.setattr(cpu_kernels, "_onednn_gemm", noting_gemm)
    for kernels in ("blas", "onednn"):
        trainable.zero_grad()
        x = x0.clone().requires_grad_(True)
        with cpu_matmul_kernels(kernels):
            y = trainable(frozen(x))
            (y * y).sum().backward()
        results[kernels] = (y.detach(), x.grad, trainable.weight.grad.clone())
    assert used == [(40, 48), (48, 40)]  # the frozen layer's forward and its input gradient, nothing else
    with cpu_matmul_kernels("onednn"):  # called with keywords, as some libraries do
        by_keyword = F.linear(input=x0, weight=frozen.weight, bias=frozen.bias)
    assert used[2:] == [(40, 48)]
    torch.testing.assert_close(by_keyword, frozen(x0), rtol=1e-5, atol=1e-5)
    for ours, blas in zip(results["onednn"], results["blas"], strict=True):
        torch.testing.assert_close(ours, blas, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("onednn_s", "expected"), [(0.02, "onednn"), (0.0284, "onednn"), (0.05, "blas"), (0.0295, "blas")]
)
def test_pick_cpu_matmul_keeps_onednn_only_when_clearly_faster(onednn_s, expected, monkeypatch):
    call = KernelCall("linear", (1, 4), (4, 4), (1, 4), True)
    _fake_timings(monkeypatch, {call: {"blas": 0.030, "onednn": onednn_s}})
    choice, seconds = pick_cpu_matmul(Counter({call: 2}))
    assert choice == expected and seconds == pytest.approx({"blas": 0.06, "onednn": 2 * onednn_s})


def test_pick_cpu_matmul_falls_back_to_blas_when_onednn_cannot_run(monkeypatch, caplog):
    def broken(*_args):
        raise RuntimeError("could not create a primitive\nmore detail")

    layer = torch.nn.Linear(4, 4).requires_grad_(False)
    calls = record_kernel_calls(lambda: layer(torch.ones(1, 4)))
    monkeypatch.setattr(cpu_kernels, "_onednn_gemm", broken)
    assert pick_cpu_matmul(calls) == ("blas", {})
    assert "could not create a primitive); using BLAS" in caplog.text


def test_cpu_conv_is_left_unchosen_off_cpu_so_a_cpu_resume_times_it(monkeypatch):
    """A GPU run records no kernel choice; resuming its checkpoint on a CPU with `auto` then times both sets."""
    from types import SimpleNamespace

    from textinv.checkpoint import TrainingState
    from textinv.config import TrainConfig

    timed = []

    def pick(calls):
        timed.append(calls)
        return ConvPlan("native"), {"onednn": 2.0, "native": 1.0, "per shape": 1.0}

    monkeypatch.setattr(cpu_kernels, "pick_cpu_conv", pick)
    cfg = TrainConfig(cpu_conv="auto")
    gpu = SimpleNamespace(device=torch.device("cuda"))
    plan = cpu_kernels._choose_cpu_conv(cfg, gpu, None, 100, calls=None)
    assert plan == ConvPlan("")
    with cpu_conv_kernels(plan):  # a no-op: oneDNN stays on
        assert torch._C._get_mkldnn_enabled()
    gpu_state = TrainingState(0, 0, "<t>", 1, [8], 0, "m", kernel_plan=cpu_kernels.KernelPlan(plan).to_state())
    prior = cpu_kernels.KernelPlan.from_state(gpu_state.kernel_plan)
    cpu = SimpleNamespace(device=torch.device("cpu"), num_processes=1, is_main_process=True)
    assert cpu_kernels._choose_cpu_conv(cfg, cpu, prior, 100, calls=lambda: "calls") == ConvPlan("native")
    assert timed == ["calls"]


def test_bf16_never_runs_its_convolutions_on_native_kernels(monkeypatch):
    """Native CPU kernels run bf16 convolutions 100-300x slower: asked for, one line; from fp32's plan, oneDNN."""
    from types import SimpleNamespace

    from textinv.config import TrainConfig
    from textinv.errors import TextinvError

    cpu = SimpleNamespace(device=torch.device("cpu"), num_processes=1, is_main_process=True)
    with pytest.raises(TextinvError, match="--cpu_conv native with --mixed_precision bf16.*use --cpu_conv auto"):
        cpu_kernels._choose_cpu_conv(TrainConfig(cpu_conv="native", mixed_precision="bf16"), cpu, None, 100, None)
    assert cpu_kernels._choose_cpu_conv(TrainConfig(cpu_conv="native"), cpu, None, 100, None) == ConvPlan("native")
    shapes = {"[1, 8, 4, 4] [8, 8, 3, 3] [1, 1, 1, 1]": "gemm"}
    fp32_plan = cpu_kernels.KernelPlan(ConvPlan("native", shapes), "blas")
    resumed = cpu_kernels._choose_cpu_conv(TrainConfig(mixed_precision="bf16"), cpu, fp32_plan, 100, None)
    assert resumed == ConvPlan("onednn", shapes)


def test_a_compiled_or_checkpointed_run_keeps_the_main_convolution_kernels_only(monkeypatch):
    from types import SimpleNamespace

    from textinv.config import TrainConfig

    plan = ConvPlan("native", {"[1, 8, 4, 4] [8, 8, 3, 3] [1, 1, 1, 1]": "onednn"})
    seconds = {"onednn": 2.0, "native": 1.0, "per shape": 0.9}
    monkeypatch.setattr(cpu_kernels, "pick_cpu_conv", lambda calls: (plan, seconds))
    cpu = SimpleNamespace(device=torch.device("cpu"), num_processes=1, is_main_process=True)
    assert cpu_kernels._choose_cpu_conv(TrainConfig(), cpu, None, 100, lambda: None) == plan
    compiled = TrainConfig(torch_compile="default")
    assert cpu_kernels._choose_cpu_conv(compiled, cpu, None, 100, lambda: None) == ConvPlan("native")
    checkpointed = TrainConfig(gradient_checkpointing=True)
    assert cpu_kernels._choose_cpu_conv(checkpointed, cpu, None, 100, lambda: None) == ConvPlan("native")


def test_only_sd_sized_cpu_training_without_compile_or_checkpointing_drops_the_convolution_inputs():
    from types import SimpleNamespace

    from textinv.config import TrainConfig

    def keeps(cfg, device, sd_sized):
        accelerator = SimpleNamespace(device=torch.device(device), num_processes=1, is_main_process=True)
        cfg.cpu_conv, cfg.cpu_matmul = "onednn", "blas"  # explicit: nothing is timed
        return cpu_kernels.plan_cpu_kernels(cfg, accelerator, None, 100, None, sd_sized=sd_sized).keep_conv_inputs

    assert not keeps(TrainConfig(), "cpu", sd_sized=True)
    assert keeps(TrainConfig(), "cpu", sd_sized=False)  # the toy model: the route costs more
    assert keeps(TrainConfig(), "cuda", sd_sized=True)
    assert keeps(TrainConfig(torch_compile="default"), "cpu", sd_sized=True)
    assert keeps(TrainConfig(gradient_checkpointing=True), "cpu", sd_sized=True)
