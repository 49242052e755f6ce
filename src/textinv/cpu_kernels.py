"""Which CPU kernels run the frozen convolutions and linear layers (`--cpu_conv`, `--cpu_matmul`): the run's plan.

PyTorch's x86 wheels carry more than one implementation of each: oneDNN's and PyTorch's native convolutions (and
here a third, "gemm": the input unfolded and multiplied on oneDNN's GEMM), MKL's and oneDNN's matrix products. They
compute the same maths in another summation order, and which is fastest depends on the CPU and on each call's
shape (bench/RESULTS.md). `auto` decides before training from the step's own calls: one forward is recorded
(`record_kernel_calls`), every distinct shape's forward and input gradient is timed a few times on each set,
interleaved, best reading counted; each shape then runs on its fastest set (`pick_cpu_conv`, `pick_cpu_matmul`).
`plan_cpu_kernels` makes a run's `KernelPlan`, which the training step enters and checkpoints store.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

# `auto` leaves PyTorch's default kernels (and, per shape, the run's main set) only for a clear win: both sets
# do the same maths, and a coin-flip between near-equal timings would make two runs of one command differ in
# rounding for nothing.
MIN_GAIN = 0.05
# Recording and timing cost a few seconds (≈ 10 s at SD-1.5 size, 256 px, on 2 cores); a run shorter than this
# cannot win them back, so `auto` keeps the defaults.
AUTO_MIN_STEPS = 20
REPEATS = 3

_ARGS = {
    "conv2d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "linear": ("input", "weight", "bias"),
}
_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
_OPS = {"conv2d": F.conv2d, "linear": F.linear}
_NAMES = {"onednn": "oneDNN", "blas": "BLAS", "gemm": "oneDNN GEMM"}
# The convolution kernel sets: the first two can run every frozen convolution and be a run's main set; "gemm"
# (`_gemm_conv`) runs ungrouped ones and is planned per shape only.
CONV_KERNELS = ("onednn", "native", "gemm")


def kernel_name(kernels: str) -> str:
    """How logs and plans write a kernel set ("onednn" -> "oneDNN", "native/gemm" -> "native/oneDNN GEMM")."""
    return "/".join(_NAMES.get(k, k) for k in kernels.split("/"))


@dataclass(frozen=True)
class KernelCall:
    """The shape of one frozen CPU convolution (fp32 or bf16) or fp32 linear call: what a kernel choice changes.

    Calls of one shape cost the same, so a step's calls are counted by shape and each shape is timed once.
    """

    op: str  # "conv2d" or "linear"
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    has_bias: bool
    params: tuple = ()  # conv2d's stride, padding, dilation, groups, as the call gave them
    input_grad: bool = True  # the backward computes this call's input gradient
    dtype: str = "float32"  # "bfloat16" for a convolution of bf16 weights (`--mixed_precision bf16`)

    @property
    def key(self) -> str:
        """A stable text name of the shape, stored in checkpoints (`ConvPlan.shapes`)."""
        return _shape_key(self.input_shape, self.weight_shape, self.params, self.dtype)


def _shape_key(input_shape, weight_shape, params: tuple, dtype: str = "float32") -> str:
    # fp32 keys stay as checkpoints of earlier versions wrote them.
    suffix = "" if dtype == "float32" else f" {dtype}"
    return f"{list(input_shape)} {list(weight_shape)} {list(params)}{suffix}"


def _bind(func, args: tuple, kwargs: dict) -> tuple[str, dict[str, Any]] | None:
    """`F.conv2d` / `F.linear` arguments by name, defaults filled in; None for any other function."""
    op = "conv2d" if func is F.conv2d else "linear" if func is F.linear else None
    if op is None:
        return None
    return op, {**_DEFAULTS, **dict(zip(_ARGS[op], args, strict=False)), **kwargs}


def _frozen(x: Any, weight: Any, bias: Any) -> bool:
    """A call that wants no gradient for its weight or bias (at most the input's)."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return all(isinstance(t, torch.Tensor) for t in tensors) and not any(t.requires_grad for t in tensors[1:])


def _cpu_in(dtype: torch.dtype, *tensors: torch.Tensor | None) -> bool:
    return all(t is None or (t.device.type == "cpu" and t.dtype == dtype) for t in tensors)


def _fp32_cpu(*tensors: torch.Tensor | None) -> bool:
    return _cpu_in(torch.float32, *tensors)


def _frozen_fp32_cpu(x: Any, weight: Any, bias: Any) -> bool:
    """A call whose kernels we may choose: frozen (`_frozen`), fp32, on the CPU."""
    return _frozen(x, weight, bias) and _fp32_cpu(x, weight, bias)


def _plannable_dtype(x: Any, weight: Any, bias: Any) -> bool:
    """On the CPU, fp32 or bf16 throughout: a convolution the plan covers.

    bf16 convolutions (`--mixed_precision bf16`) are planned between oneDNN and "gemm" only: PyTorch's native
    kernels run bf16 convolutions hundreds of times slower (SD-1.5's 2560 -> 1280 channels at 8x8: 7.5 s
    against oneDNN's 39 ms), so they are never timed for them (`_conv_set_runs`).
    """
    return any(_cpu_in(dtype, x, weight, bias) for dtype in (torch.float32, torch.bfloat16))


def _plannable_conv(x: Any, weight: Any, bias: Any) -> bool:
    """A convolution whose kernels we may choose: frozen (`_frozen`) and of a planned dtype (`_plannable_dtype`)."""
    return _frozen(x, weight, bias) and _plannable_dtype(x, weight, bias)


def _params(op: str, given: dict[str, Any]) -> tuple:
    """A call's arguments after input, weight and bias (conv2d's stride, padding, ...), lists made tuples."""
    return tuple(tuple(v) if isinstance(v, list) else v for v in (given[k] for k in _ARGS[op][3:]))


def _call_of(op: str, given: dict[str, Any], out: torch.Tensor) -> KernelCall:
    x, weight = given["input"], given["weight"]
    return KernelCall(
        op, tuple(x.shape), tuple(weight.shape), tuple(out.shape), given["bias"] is not None, _params(op, given),
        x.requires_grad, _dtype_name(weight.dtype),
    )  # fmt: skip


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class _KernelCensus(TorchFunctionMode):
    """Counts, by shape, the frozen CPU `F.conv2d` (fp32 or bf16) and fp32 `F.linear` calls made inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[KernelCall] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        bound = _bind(func, args, kwargs)
        if bound is not None and isinstance(out, torch.Tensor):
            op, given = bound
            plannable = _plannable_conv if op == "conv2d" else _frozen_fp32_cpu
            if plannable(given["input"], given["weight"], given["bias"]):
                self.calls[_call_of(op, given, out)] += 1
        return out


def _dropped(tensor: torch.Tensor) -> None:
    return None


def _no_backward(packed: None) -> torch.Tensor:
    raise RuntimeError("the kernel census forward keeps no tensors: its graph cannot run a backward")


def record_kernel_calls(run_forward) -> Counter[KernelCall]:
    """The frozen convolution and linear calls, by shape, that `run_forward` (one training forward) makes.

    The forward runs with gradients on (a call's `input_grad` is read from it), but keeps none of the tensors a
    backward would need: it is never run backward, and keeping them would put a whole step's activations on top
    of the timings that follow (at SDXL size, 0.2 GB above the training step's own peak).
    """
    with _KernelCensus() as census, torch.autograd.graph.saved_tensors_hooks(_dropped, _no_backward):
        run_forward()
    return census.calls


def _run_call(call: KernelCall, x: torch.Tensor, weight: torch.Tensor, bias, grad: torch.Tensor) -> None:
    """One call's forward and, where training computes it, its input gradient (never a weight gradient)."""
    y = _OPS[call.op](x, weight, bias, *call.params)
    if call.input_grad:
        torch.autograd.grad(y, x, grad)


def _random_tensors(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Input, weight, bias and output gradient of a call's shapes and dtype, to time kernels on (the speed of
    these kernels does not depend on the values)."""
    gen = torch.Generator().manual_seed(0)
    dtype = getattr(torch, call.dtype)
    x = torch.randn(call.input_shape, generator=gen).to(dtype)
    weight = (torch.randn(call.weight_shape, generator=gen) * 0.02).to(dtype)
    bias = torch.zeros(call.weight_shape[0], dtype=dtype) if call.has_bias else None
    return x, weight, bias, torch.randn(call.output_shape, generator=gen).to(dtype)


def time_kernel_calls(
    calls, switch, choices: tuple[str, ...], repeats: int = REPEATS
) -> dict[KernelCall, dict[str, float]]:
    """Best seconds of one call of each shape in `calls` under each of `switch`'s `choices`.

    Each shape runs `repeats` times per choice, choices interleaved, on random data of its shape (the speed
    of fp32 kernels does not depend on the values). The best reading counts, so a busy moment on a shared
    machine or a one-time cost (kernel generation, the allocator growing) spoils one reading, not the choice.
    """
    seconds = {}
    for call in calls:
        x, weight, bias, grad = _random_tensors(call)
        x.requires_grad_(call.input_grad)
        best = dict.fromkeys(choices, float("inf"))
        for _ in range(repeats):
            for kernels in choices:
                with switch(kernels):
                    start = time.perf_counter()
                    _run_call(call, x, weight, bias, grad)
                    best[kernels] = min(best[kernels], time.perf_counter() - start)
        seconds[call] = best
    return seconds


def _step_seconds(calls: Counter[KernelCall], each: dict[KernelCall, dict[str, float]]) -> dict[str, float]:
    """Seconds a step spends in `calls` on each kernel set, from the per-call timings `each`."""
    choices = next(iter(each.values()))
    return {k: sum(n * each[c][k] for c, n in calls.items()) for k in choices}


# --- convolutions --------------------------------------------------------------------------------------------


@dataclass
class ConvPlan:
    """The kernels a run's CPU convolutions use: one set for all, except the listed shapes.

    `kernels` is "onednn" (PyTorch's default), "native", or "" (nothing chosen: as off the CPU). `shapes`
    maps a `KernelCall.key` to the kernels of the shapes that run faster elsewhere: one set for both
    directions ("onednn"), or the forward's and the input gradient's ("native/gemm").
    """

    kernels: str = ""
    shapes: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.shapes:
            return self.kernels
        others = Counter(self.shapes.values())
        return self.kernels + "".join(f"; {kernel_name(k)} for {n} shape(s)" for k, n in sorted(others.items()))

    def kernels_of(self, key: str) -> tuple[str, str]:
        """The forward's and the input gradient's kernels for the shape `key`."""
        forward, _, backward = self.shapes.get(key, self.kernels).partition("/")
        return forward, backward or forward


@contextlib.contextmanager
def _mkldnn_enabled(enabled: bool) -> Iterator[None]:
    before = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(enabled)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(before)


def _pair(value: Any) -> list[int]:
    return [value, value] if isinstance(value, int) else list(value)


def _kernels(kernels: str | None) -> contextlib.AbstractContextManager:
    """PyTorch's convolution switch set for "onednn" or "native"; None leaves it (PyTorch picks)."""
    return contextlib.nullcontext() if kernels is None else _mkldnn_enabled(kernels == "onednn")


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _pointwise(weight: torch.Tensor, params: tuple) -> bool:
    """A 1x1 convolution that reads every pixel once: its patches are the input itself."""
    stride, padding, dilation, _ = params
    return weight.shape[2:] == (1, 1) and _pair(stride) == [1, 1] and _pair(padding) == [0, 0]


def _gemm_conv(x: torch.Tensor, weight: torch.Tensor, bias, params: tuple) -> torch.Tensor:
    """An ungrouped convolution as one product on oneDNN's GEMM: weight @ patches (the "gemm" set).

    The weight is the product's left operand, which oneDNN reads as it lies; the right one it first copies
    into its blocked layout, and on the small deep maps that is the patches matrix, not the far larger weight
    (4x4 map, 1280 -> 1280 channels: 2.8 ms vs 5.0 ms the other way round). The result is NCHW as it comes.
    """
    stride, padding, dilation = (_pair(p) for p in params[:3])
    n, c_out = x.shape[0], weight.shape[0]
    out_hw = [_out_size(x.shape[2 + i], weight.shape[2 + i], stride[i], padding[i], dilation[i]) for i in (0, 1)]
    if _pointwise(weight, params):
        patches = x.flatten(2)
    else:
        patches = F.unfold(x, weight.shape[2:], dilation, padding, stride)  # (n, patch, pixels)
    columns = patches.transpose(0, 1).reshape(patches.shape[1], -1)  # (patch, n * pixels): a view for n == 1
    y = _onednn_gemm(weight.reshape(c_out, -1), columns.t(), None)  # (c_out, n * pixels)
    if bias is not None:
        y += bias[:, None]
    return y.view(c_out, n, *out_hw).transpose(0, 1).contiguous()


def _gemm_conv_input_grad(grad: torch.Tensor, input_shape, weight: torch.Tensor, params: tuple) -> torch.Tensor:
    """The input gradient of `_gemm_conv`: grad @ weight on oneDNN's GEMM, the patches folded back."""
    stride, padding, dilation, _ = params
    n, c_out = grad.shape[:2]
    patches = _onednn_gemm(grad.flatten(2).transpose(1, 2), weight.reshape(c_out, -1).t(), None)
    if _pointwise(weight, params):
        return patches.transpose(1, 2).reshape(input_shape)
    return F.fold(patches.transpose(1, 2), input_shape[2:], weight.shape[2:], dilation, padding, stride)


def _conv_forward(kernels: str | None, x, weight, bias, params: tuple) -> torch.Tensor:
    """`F.conv2d` on the given kernel set (None: as PyTorch picks)."""
    if kernels == "gemm":
        return _gemm_conv(x, weight, bias, params)
    with _kernels(kernels):
        return F.conv2d(x, weight, bias, *params)


def _conv_input_grad(kernels: str | None, grad: torch.Tensor, input_shape, weight, params: tuple) -> torch.Tensor:
    """The input gradient of `F.conv2d` (never the weight's) on the given kernel set (None: as PyTorch picks)."""
    if kernels == "gemm":
        return _gemm_conv_input_grad(grad, input_shape, weight, params)
    stride, padding, dilation, groups = params
    shape_only = grad.new_empty(1).expand(input_shape)  # as torch.nn.grad.conv2d_input passes it
    with _kernels(kernels):
        return _convolution_backward(
            grad, shape_only, weight, None, _pair(stride), _pair(padding), _pair(dilation), False, [0, 0], groups,
            [True, False, False],
        )[0]  # fmt: skip


class _ConvOn(torch.autograd.Function):
    """`F.conv2d` of a frozen weight, the forward and the input gradient each on the given kernels (None: as
    PyTorch picks).

    It keeps the weight for the backward, not the input: an input gradient needs only the input's shape.
    PyTorch's own convolution keeps the input for a weight gradient that a frozen weight never has (≈ 60 MB
    of a SD-1.5 step at 256 px, 4x that at 512 px).
    """

    @staticmethod
    def forward(ctx: Any, x, weight, bias, params: tuple, forward_kernels, backward_kernels) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.params, ctx.kernels, ctx.input_shape = params, backward_kernels, x.shape
        return _conv_forward(forward_kernels, x, weight, bias, params)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        grad_input = _conv_input_grad(ctx.kernels, grad, ctx.input_shape, weight, ctx.params)
        return grad_input, None, None, None, None, None


def _convolution_backward(*args):
    """aten's convolution backward; a name of its own, so tests can see which kernels it ran on."""
    return torch.ops.aten.convolution_backward(*args)


def _routable(params: tuple) -> bool:
    """Whether `_ConvOn` can take a call: integer stride, padding and dilation (not padding="same")."""
    stride, padding, dilation, groups = params
    return all(isinstance(v, int) or all(isinstance(i, int) for i in v) for v in (stride, padding, dilation))


def _gemm_runs(params: tuple) -> bool:
    """Whether the "gemm" set can run a routable call: an ungrouped one, on a PyTorch with oneDNN."""
    return params[3] == 1 and onednn_linear_available()


def _conv_set_runs(kernels: str, call: KernelCall) -> bool:
    """Whether a convolution kernel set is timed for a call: "gemm" where it runs, "native" for fp32 only."""
    if kernels == "gemm":
        return _gemm_runs(call.params)
    return kernels != "native" or call.dtype == "float32"


class _ConvPlanMode(TorchFunctionMode):
    """Sends frozen convolutions to `_ConvOn`: the shapes the plan lists with their kernels, and with `every`
    all others too, on the plan's main kernels (fp32 or bf16 on the CPU) or PyTorch's (elsewhere)."""

    def __init__(self, plan: ConvPlan, every: bool) -> None:
        super().__init__()
        self.plan, self.every = plan, every

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            _, given = _bind(func, args, kwargs)
            x, weight, bias = given["input"], given["weight"], given["bias"]
            params = _params("conv2d", given)
            if _frozen(x, weight, bias) and _routable(params):
                planned = bool(self.plan.kernels) and _plannable_dtype(x, weight, bias)
                key = _shape_key(x.shape, weight.shape, params, _dtype_name(weight.dtype))
                if planned and (key in self.plan.shapes or self.every):
                    forward, backward = self.plan.kernels_of(key)
                    if "gemm" in (forward, backward) and not _gemm_runs(params):  # a plan from elsewhere
                        forward, backward = self.plan.kernels, self.plan.kernels
                    return _ConvOn.apply(x, weight, bias, params, forward, backward)
                if self.every:
                    return _ConvOn.apply(x, weight, bias, params, None, None)
        return func(*args, **kwargs)


@contextlib.contextmanager
def cpu_conv_kernels(plan: ConvPlan | str, *, keep_inputs: bool = True) -> Iterator[None]:
    """Run the convolutions inside (forward and backward) on the plan's CPU kernels.

    PyTorch picks the convolution backend per call, in the backward too, from one global switch, so the
    context must cover the `backward()` call as well as the forward. "onednn" and "" leave the switch as
    it is (PyTorch's default); the plan's listed shapes run on their own kernels either way. With
    `keep_inputs=False` (training) every frozen convolution runs through `_ConvOn`, on any device, so the
    backward keeps no convolution inputs.
    """
    plan = ConvPlan(plan) if isinstance(plan, str) else plan
    with contextlib.ExitStack() as stack:
        if plan.kernels == "native":
            stack.enter_context(_mkldnn_enabled(False))
        if plan.shapes or not keep_inputs:
            stack.enter_context(_ConvPlanMode(plan, every=not keep_inputs))
        yield


def time_conv_calls(
    calls, choices: tuple[str, ...], repeats: int = REPEATS
) -> dict[KernelCall, dict[str, tuple[float, float]]]:
    """Best seconds of each convolution shape's forward and of its input gradient (0 where training computes
    none) on each kernel set in `choices`, timed as `time_kernel_calls` times (interleaved, best reading).

    A set that cannot run a shape ("gemm" on a grouped convolution) or should not ("native" for bf16,
    `_plannable_dtype`) is left out of that shape's timings.
    """
    seconds = {}
    for call in calls:
        x, weight, bias, grad = _random_tensors(call)
        runs = [k for k in choices if _conv_set_runs(k, call)]
        best = {k: [float("inf"), float("inf") if call.input_grad else 0.0] for k in runs}
        for _ in range(repeats):
            for kernels in runs:
                start = time.perf_counter()
                _conv_forward(kernels, x, weight, bias, call.params)
                middle = time.perf_counter()
                best[kernels][0] = min(best[kernels][0], middle - start)
                if call.input_grad:
                    _conv_input_grad(kernels, grad, x.shape, weight, call.params)
                    best[kernels][1] = min(best[kernels][1], time.perf_counter() - middle)
        seconds[call] = {k: (f, b) for k, (f, b) in best.items()}
    return seconds


def _faster(times: dict[str, tuple[float, float]], main: str, direction: int) -> str:
    """The kernel set that runs one direction (0 forward, 1 input gradient) clearly faster than `main`, or `main`."""
    best = min(times, key=lambda k: times[k][direction])
    return best if times[best][direction] < (1 - MIN_GAIN) * times[main][direction] else main


def pick_cpu_conv(calls: Counter[KernelCall], repeats: int = REPEATS) -> tuple[ConvPlan, dict[str, float]]:
    """Time a step's convolutions (forward and input gradient apart) on each kernel set and plan the faster.

    The run's main set is the one faster over the whole step, of oneDNN and native (oneDNN unless native wins
    by `MIN_GAIN`); a shape's forward or input gradient moves to another set where that is faster for it by
    `MIN_GAIN`. Returns the plan and the step's convolution seconds all on oneDNN, all native, and as planned.
    """
    convs = Counter({c: n for c, n in calls.items() if c.op == "conv2d"})
    if not convs:
        return ConvPlan("onednn"), {}
    each = time_conv_calls(convs, CONV_KERNELS, repeats)
    # Main-set candidates: those timed for every call (bf16 calls have no "native" timing).
    seconds = {
        k: sum(n * sum(each[c][k]) for c, n in convs.items())
        for k in CONV_KERNELS[:2]
        if all(k in each[c] for c in convs)
    }
    native_wins = "native" in seconds and seconds["native"] < (1 - MIN_GAIN) * seconds["onednn"]
    main = "native" if native_wins else "onednn"
    shapes, planned = {}, 0.0
    for call, n in convs.items():
        forward = backward = main
        if _routable(call.params):
            forward = _faster(each[call], main, 0)
            backward = _faster(each[call], main, 1) if call.input_grad else forward
        planned += n * (each[call][forward][0] + each[call][backward][1])
        if (forward, backward) != (main, main):
            shapes[call.key] = forward if forward == backward else f"{forward}/{backward}"
    seconds["per shape"] = planned
    return ConvPlan(main, dict(sorted(shapes.items()))), seconds


# --- linear layers -------------------------------------------------------------------------------------------


def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T (+ bias) on oneDNN, for x of any leading shape."""
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, "none", [], "")
    return out.view(*x.shape[:-1], weight.shape[0])


class _FrozenLinear(torch.autograd.Function):
    """`F.linear` through oneDNN for a frozen weight: the backward gives the input's gradient only."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return _onednn_gemm(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        return _onednn_gemm(grad, weight.t(), None), None, None


def _takes_onednn_path(x: Any, weight: Any, bias: Any) -> bool:
    return (
        _frozen_fp32_cpu(x, weight, bias)
        and weight.dim() == 2
        and x.dim() >= 1
        and x.shape[-1] == weight.shape[1]
        and x.numel() > 0
    )


class _OneDNNLinearMode(TorchFunctionMode):
    """Sends every eligible `F.linear` call made inside it to `_FrozenLinear`; all else passes through."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            _, given = _bind(func, args, kwargs)
            if _takes_onednn_path(given["input"], given["weight"], given["bias"]):
                return _FrozenLinear.apply(given["input"], given["weight"], given["bias"])
        return func(*args, **kwargs)


@contextlib.contextmanager
def cpu_matmul_kernels(kernels: str) -> Iterator[None]:
    """Run the frozen fp32 linear layers called inside on oneDNN's GEMM ("onednn"); a no-op for "blas" and "".

    The backward of a product made inside runs on oneDNN too, wherever `backward()` is called.
    """
    if kernels != "onednn":
        yield
        return
    with _OneDNNLinearMode():
        yield


def pick_cpu_matmul(calls: Counter[KernelCall], repeats: int = REPEATS) -> tuple[str, dict[str, float]]:
    """As `pick_cpu_conv`, for the linear layers' products, one set for all: PyTorch's BLAS or oneDNN's GEMM."""
    linears = Counter({c: n for c, n in calls.items() if c.op == "linear"})
    if not onednn_linear_available() or not linears:
        return "blas", {}
    try:
        each = time_kernel_calls(linears, cpu_matmul_kernels, ("blas", "onednn"), repeats)
    except (RuntimeError, NotImplementedError) as exc:  # a oneDNN build that cannot run these products
        log.warning("oneDNN matrix products failed on this CPU (%s); using BLAS", str(exc).splitlines()[0])
        return "blas", {}
    seconds = _step_seconds(linears, each)
    return ("onednn" if seconds["onednn"] < (1 - MIN_GAIN) * seconds["blas"] else "blas"), seconds


# --- the run's plan ------------------------------------------------------------------------------------------


@dataclass
class KernelPlan:
    """The CPU kernels a training run uses, chosen once (`plan_cpu_kernels`) and entered around each step.

    `to_state()` is what a checkpoint stores (opaque to it), so a resumed run keeps the same kernels and
    therefore the same rounding; `keep_conv_inputs` is derived from the run's settings and not stored.
    """

    conv: ConvPlan = field(default_factory=ConvPlan)
    matmul: str = ""
    keep_conv_inputs: bool = True

    def to_state(self) -> dict[str, Any]:
        return {"cpu_conv": self.conv.kernels, "cpu_conv_shapes": dict(self.conv.shapes), "cpu_matmul": self.matmul}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> KernelPlan:
        state = state or {}
        return cls(
            ConvPlan(state.get("cpu_conv", ""), dict(state.get("cpu_conv_shapes", {}))), state.get("cpu_matmul", "")
        )

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Forward and backward of a step run inside this (PyTorch picks kernels in the backward too)."""
        with cpu_conv_kernels(self.conv, keep_inputs=self.keep_conv_inputs), cpu_matmul_kernels(self.matmul):
            yield


def plan_cpu_kernels(
    cfg, accelerator, resumed: dict[str, Any] | None, steps_left: int, record_forward, *, sd_sized: bool
) -> KernelPlan:
    """The run's CPU kernels: the user's flags, the resumed run's plan, or timed on one recorded forward.

    `record_forward` runs one training forward; it is called at most once, and only when something is timed.
    """
    calls = functools.cache(lambda: record_kernel_calls(record_forward))  # recorded at most once, on first use
    prior = KernelPlan.from_state(resumed) if resumed is not None else None
    on_cpu = accelerator.device.type == "cpu"
    timed_by_seed = (
        cfg.seed is not None
        and on_cpu
        and prior is None
        and steps_left >= AUTO_MIN_STEPS
        and "auto" in (cfg.cpu_conv, cfg.cpu_matmul)
    )
    with _machine_plan(cfg, accelerator, calls) if timed_by_seed else contextlib.nullcontext() as stored:
        if stored is not None and stored.state is not None:
            prior = KernelPlan.from_state(stored.state)
            log.info("CPU kernels: this machine's stored plan for seeded runs (%s)", stored.path)
        plan = KernelPlan(
            conv=_choose_cpu_conv(cfg, accelerator, prior, steps_left, calls),
            matmul=_choose_cpu_matmul(cfg, accelerator, prior.matmul if prior else "", steps_left, calls),
            # On the CPU every frozen convolution of an SD-sized UNet goes through `_ConvOn`, which keeps no input
            # for the backward (70 MB off the SD-1.5 peak at 256 px, same speed). Not on GPUs, where a Python route
            # per call costs launch time and saved nothing measurable (bench/RESULTS.md).
            keep_conv_inputs=not routes_calls(cfg) or not on_cpu or not sd_sized,
        )
        if stored is not None and accelerator.is_main_process:
            stored.save(plan.to_state())
    log.debug(
        "CPU kernel plan of process %d: %s", getattr(accelerator, "process_index", 0), json.dumps(plan.to_state())
    )
    return plan


@contextlib.contextmanager
def _machine_plan(cfg, accelerator, calls):
    """A seeded `auto` run's stored plan (`kernel_plan_store`): the main process holds the lock while it reads,
    times and stores; the others get what it read, so every process plans from the same state."""
    from textinv.kernel_plan_store import locked_plan, plan_key

    if not accelerator.is_main_process:
        yield _shared_plan(accelerator, None)
        return
    with locked_plan(plan_key(cfg, calls(), torch.get_num_threads(), torch.__version__)) as stored:
        _shared_plan(accelerator, stored)
        yield stored


def _shared_plan(accelerator, stored):
    """The main process's stored plan, as every process sees it (a broadcast with several)."""
    if getattr(accelerator, "num_processes", 1) == 1:
        return stored
    from accelerate.utils import broadcast_object_list

    from textinv.kernel_plan_store import StoredPlan

    state = broadcast_object_list([None if stored is None else (str(stored.path), stored.state)])[0]
    return stored if stored is not None else StoredPlan(Path(state[0]), state[1])


def routes_calls(cfg) -> bool:
    """Whether the training step may route frozen calls through Python modes: convolutions to `_ConvOn`
    (per-shape kernels, no inputs kept), linear layers to oneDNN's GEMM.

    The routes are a Python mode around each call: a compiled graph does not see it, and gradient
    checkpointing's recomputation in the backward runs outside it, so its saved tensors would not match.
    """
    return cfg.torch_compile == "no" and not cfg.gradient_checkpointing


def _choose_cpu_conv(cfg, accelerator, prior: KernelPlan | None, steps_left: int, calls) -> ConvPlan:
    """The CPU convolution kernels for the run: the user's, the resumed run's, or timed (`pick_cpu_conv`)."""
    resumed = prior.conv if prior is not None and prior.conv.kernels else None  # "" when the run chose nothing
    plan = _choose_cpu_kernels(
        accelerator, cfg.cpu_conv, resumed, steps_left, calls,
        pick_cpu_conv, default=ConvPlan("onednn"), flag="--cpu_conv", what="convolutions",
    )  # fmt: skip
    plan = ConvPlan(plan) if isinstance(plan, str) else plan
    if plan.kernels == "native" and cfg.mixed_precision == "bf16":
        # PyTorch's native CPU kernels run bf16 convolutions 100-300x slower than oneDNN (7.5 s a call on SD-1.5).
        from textinv.errors import TextinvError

        if cfg.cpu_conv == "native":
            raise TextinvError(
                "--cpu_conv native with --mixed_precision bf16: PyTorch's native CPU convolutions run bf16 "
                "100-300x slower than oneDNN's; use --cpu_conv auto or onednn"
            )
        log.info("CPU convolutions: the resumed plan's main set (native) is fp32's; bf16 runs them on oneDNN")
        plan = ConvPlan("onednn", plan.shapes)
    if not routes_calls(cfg) and plan.shapes:
        flag = "--torch_compile" if cfg.torch_compile != "no" else "--gradient_checkpointing"
        log.info("CPU convolutions: %s runs all of them on %s", flag, plan.kernels)
        plan = ConvPlan(plan.kernels)
    return plan


def _choose_cpu_matmul(cfg, accelerator, resumed: str, steps_left: int, calls) -> str:
    """The linear layers' CPU kernels, chosen as the convolutions' are (`pick_cpu_matmul`)."""
    from textinv.errors import TextinvError

    on_cpu = accelerator.device.type == "cpu"
    if on_cpu and cfg.cpu_matmul == "onednn" and not onednn_linear_available():
        raise TextinvError("--cpu_matmul onednn: this PyTorch build has no oneDNN; use --cpu_matmul blas or auto")
    if on_cpu and cfg.cpu_matmul == "onednn" and cfg.gradient_checkpointing:
        raise TextinvError(
            "--cpu_matmul onednn does not combine with --gradient_checkpointing (its recomputed forward runs on "
            "PyTorch's own kernels); use --cpu_matmul blas or auto"
        )
    # Half or fp8 weights, or a compiled graph, make no fp32 F.linear calls to send to oneDNN; under gradient
    # checkpointing the oneDNN route (a Python mode, as the convolutions') would not match the recomputation.
    worth_timing = cfg.mixed_precision == "no" and not cfg.fp8_base and routes_calls(cfg)
    choice = _choose_cpu_kernels(
        accelerator, cfg.cpu_matmul, resumed or None, steps_left, calls, pick_cpu_matmul,
        default="blas", flag="--cpu_matmul", what="matrix products", worth_timing=worth_timing,
    )  # fmt: skip
    if choice == "onednn" and cfg.gradient_checkpointing:  # resumed from a run without it
        log.info("CPU matrix products: --gradient_checkpointing runs them on BLAS")
        choice = "blas"
    return choice


def _choose_cpu_kernels(
    accelerator, given: str, resumed, steps_left: int, calls, pick, *,
    default, flag: str, what: str, worth_timing: bool = True,
):  # fmt: skip
    """One CPU kernel switch's setting: the user's, the resumed run's (None if none), or `pick(calls())`.

    Only the main process times; every process uses its choice, so they all run the same kernels.
    """
    if accelerator.device.type != "cpu":
        # The switch only concerns CPU kernels. Nothing is chosen, so a checkpoint records no choice and a
        # run that resumes it on a CPU with `auto` times the kernels there.
        return ""
    if given != "auto":
        return given
    if resumed is not None:
        return resumed
    if steps_left < AUTO_MIN_STEPS or not worth_timing:
        return default  # too short to win the timing back, or nothing the switch would change
    choice = [default]
    if accelerator.is_main_process:
        recorded = calls()  # the first call records a forward (and, on a cold start, reads the weights)
        start = time.perf_counter()
        choice[0], seconds = pick(recorded)
        if seconds:
            timings = ", ".join(f"{kernel_name(name)} {s:.2f} s" for name, s in seconds.items())
            log.info(
                "CPU %s, one step's calls: %s; using %s (%s sets it; timed in %.0f s)",
                what, timings, choice[0], flag, time.perf_counter() - start,
            )  # fmt: skip
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(choice)
    return choice[0]
