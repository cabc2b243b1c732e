"""The compiled CPU recurrence (`harness/lstm_cpu.cpp`) against the Python loop of
`lstm_kernel.py` it replaces: every mask pattern, alone and in a population, forward and backward."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

from dropbench.harness import lstm_cpu, lstm_kernel
from dropbench.harness.projections import gate_major_masked, project_gate_major

# Skipped only where the toolchain is missing: where it is present, a build that fails is a failure.
TOOLCHAIN = shutil.which(os.environ.get("CXX", "c++")) is not None and cpp_extension.is_ninja_available()
pytestmark = pytest.mark.skipif(not TOOLCHAIN, reason="no C++ compiler or ninja: the Python loop runs instead")

STEPS = 5
# (batch, hidden): tiny; and big enough that the element-wise passes split their rows over threads
# (lstm_cpu.cpp's row_grain: 512 / 128 = 4 rows per thread at least; 3 rows of hidden 7 stay on one).
SIZES = {"tiny": (3, 7), "rows-over-threads": (40, 128)}


def _case(pattern: str, models, dtype, generator, size="tiny"):
    batch, hidden = SIZES[size]
    lead = () if models is None else (models,)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=generator, dtype=dtype) * scale

    def mask(*shape):
        return torch.rand(*shape, generator=generator, dtype=dtype).ge(0.3).to(dtype) / 0.7

    z_h = {"tied": mask(1, *lead, 1, batch, hidden), "untied": mask(1, *lead, 4, batch, hidden),
           "per-step": mask(STEPS, *lead, 1, batch, hidden)}.get(pattern)
    z_c = mask(STEPS, *lead, batch, hidden) if pattern == "cell" else mask(1, *lead, batch, hidden) if pattern == "cell-sequence" else None
    return (randn(STEPS, *lead, batch, 4 * hidden), randn(*lead, batch, hidden), randn(*lead, batch, hidden),
            randn(*lead, 4 * hidden, hidden, scale=0.4), randn(*lead, 4 * hidden), z_h, z_c)


CASES = [pytest.param(pattern, models, dtype, tolerance, id=f"{pattern}-{'alone' if models is None else 'population'}-{dtype}")
         for pattern in ["none", "tied", "untied", "per-step", "cell", "cell-sequence"] for models in [None, 3]
         for dtype, tolerance in [(torch.float64, 1e-12), (torch.float32, 2e-5)]]
SIZE = pytest.mark.parametrize("size", list(SIZES))
# The time loops run each step over all rows, or split the rows over threads for all steps at once.
SPLIT = pytest.mark.parametrize("split_rows", [False, True], ids=["steps-over-threads", "rows-over-threads"])


@pytest.fixture(params=["kernel", "blas", "aten"], ids=["own-kernel", "blas-direct", "blas-through-aten"])
def blas(request):
    """Products in the extension's own kernel (split-row loops, float32, AVX-512 builds), through
    MKL called straight, and through ATen (where torch's BLAS is not MKL)."""
    before = lstm_cpu._extension().products(request.param)
    yield
    lstm_cpu._extension().products(before)


def _masked_previous_states(h0, out, z_h):
    """([S,] G, T, B, H): h_{t-1} * z_h[t] for every step, h_{-1} = h0, computed with broadcasting."""
    previous = torch.cat([h0.unsqueeze(0), out[:-1]]).unsqueeze(-3)  # (T, [S,] 1, B, H)
    return (previous if z_h is None else previous * z_h).movedim(0, -3)


@SIZE
@SPLIT
@pytest.mark.parametrize("per_gate", [False, True], ids=["one-product", "per-gate-products"])
@pytest.mark.parametrize("into_buffer", [False, True], ids=["states-in-scratch", "states-into-layer-buffer"])
@pytest.mark.parametrize("pattern, models, dtype, tolerance", CASES)
def test_compiled_forward_computes_what_the_python_loop_computes(pattern, models, dtype, tolerance, into_buffer, per_gate, split_rows,
                                                                 size, blas):
    """Outputs as the Python loop's; where the layer hands over its buffer, the masked previous
    states written into its strided rows, and nothing else of them touched."""
    generator = torch.Generator().manual_seed(7)
    x_proj, h0, c0, weight, bias, z_h, z_c = _case(pattern, models, dtype, generator, size)
    expected = lstm_kernel.forward_steps(x_proj, h0, c0, weight, bias, z_h, z_c)
    inputs = 3  # as in the layer: each row is [masked input | masked state]
    expected_states = _masked_previous_states(h0, expected[0], z_h)
    buffer = torch.full((*expected_states.shape[:-1], inputs + expected_states.shape[-1]), float("nan"), dtype=dtype)
    consumed = x_proj.clone()
    got = lstm_cpu.forward_steps(consumed, h0, c0, weight, bias, z_h, z_c, per_gate, split_rows,
                                 states=buffer[..., inputs:] if into_buffer else None)
    assert got[1].data_ptr() == consumed.data_ptr()  # acts written over the projection: no new buffer
    for name, e, g in zip(["out", "acts", "cells", "tanh_c"], expected, got, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype, name
        torch.testing.assert_close(g, e, rtol=tolerance, atol=tolerance, msg=name)
    if into_buffer:
        torch.testing.assert_close(buffer[..., inputs:], expected_states, rtol=tolerance, atol=tolerance)
    assert buffer[..., :inputs].isnan().all()


@SIZE
@SPLIT
@pytest.mark.parametrize("pattern, models, dtype, tolerance", CASES)
def test_compiled_backward_computes_what_the_python_loop_computes(pattern, models, dtype, tolerance, split_rows, size, blas):
    generator = torch.Generator().manual_seed(7)
    x_proj, h0, c0, weight, bias, z_h, z_c = _case(pattern, models, dtype, generator, size)
    out, acts, cells, tanh_c = lstm_kernel.forward_steps(x_proj, h0, c0, weight, bias, z_h, z_c)
    d_out, dh, dc = torch.randn_like(out), torch.randn_like(h0), torch.randn_like(c0)
    expected = lstm_kernel.backward_steps(d_out, dh, dc, weight, acts, cells, tanh_c, z_h, z_c)
    got = lstm_cpu.backward_steps(d_out, dh, dc, weight, acts, cells, tanh_c, z_h, z_c, split_rows)
    for name, e, g in zip(["d_pre", "dh", "dc", "d_bias"], expected, got, strict=True):
        assert g.shape == e.shape, name
        torch.testing.assert_close(g, e, rtol=tolerance, atol=tolerance, msg=name)


def test_the_extension_builds_where_a_compiler_and_ninja_are_found():
    assert lstm_cpu.available()


@pytest.mark.parametrize("models", [None, 3], ids=["alone", "population"])
@pytest.mark.parametrize("mask_steps", [1, STEPS], ids=["per-sequence", "per-step"])
def test_the_untied_input_gradient_sums_each_gates_masked_part(models, mask_steps):
    generator = torch.Generator().manual_seed(13)
    lead = () if models is None else (models,)
    batch, inputs = 40, 96
    parts = torch.randn(*lead, 4, STEPS, batch, inputs, generator=generator, dtype=torch.float64)
    mask = torch.rand(mask_steps, *lead, 4, batch, inputs, generator=generator, dtype=torch.float64).ge(0.4).double() / 0.6
    expected = sum(parts.select(-4, k).movedim(-3, 0) * mask.select(-3, k) for k in range(4))  # (T, [S,] B, I)
    torch.testing.assert_close(lstm_cpu.masked_gate_sum(parts, mask), expected, rtol=1e-12, atol=1e-12)


KERNEL = pytest.mark.skipif(not TOOLCHAIN or not lstm_cpu.available() or not lstm_cpu._extension().kernel_runs(),
                            reason="built without AVX-512: the products run in MKL")


def _masked_layer_case(pattern, batch, models, size, generator):
    """float32 inputs of one layer of `size` (inputs, hidden), with input and recurrent masks of the
    pattern: x, z_x, h0, out, w_ih, d_pre, z_h."""
    lead = () if models is None else (models,)
    inputs, hidden = size
    shape = {"tied": (1, 1), "untied": (1, 4), "per-step": (STEPS, 1)}.get(pattern)

    def mask(size):
        return None if shape is None else torch.rand(shape[0], *lead, shape[1], batch, size, generator=generator).ge(0.3).float() / 0.7
    return (torch.randn(STEPS, *lead, batch, inputs, generator=generator), mask(inputs), torch.randn(*lead, batch, hidden, generator=generator),
            torch.randn(STEPS, *lead, batch, hidden, generator=generator), torch.randn(*lead, 4 * hidden, inputs, generator=generator),
            torch.randn(STEPS, *lead, batch, 4 * hidden, generator=generator), mask(hidden))


def _per_gate(values, mask):
    """([S,] G, T, B, C): gate k's masked copy of values (T, [S,] B, C), float64; G = 1 without a mask."""
    values = values.double()
    return values.movedim(0, -3).unsqueeze(-4) if mask is None else gate_major_masked(values, mask.double())


def kernel_cases(test):
    """Where the kernel is built: every mask pattern, alone and in a population, one row block and
    three; 19 inputs and hidden 7 (one 16-column vector, partly filled), and 40 inputs and hidden 45
    (several 32-column panels, a last one of 16 columns, several row blocks of dW)."""
    for mark in [pytest.mark.parametrize("pattern", ["none", "tied", "untied", "per-step"]),
                 pytest.mark.parametrize("size", [(19, 7), (40, 45)], ids=["19-to-7", "40-to-45"]),
                 pytest.mark.parametrize("batch", [3, 29], ids=["one-row-block", "three-row-blocks"]),
                 pytest.mark.parametrize("models", [None, 3], ids=["alone", "population"]), KERNEL]:
        test = mark(test)
    return test


@kernel_cases
def test_the_kernels_input_projection_masks_each_gates_input(pattern, batch, models, size):
    x, z_x, _, _, w_ih, _, _ = _masked_layer_case(pattern, batch, models, size, torch.Generator().manual_seed(11))
    expected = project_gate_major(_per_gate(x, z_x), w_ih.double(), None)
    got = lstm_cpu.masked_projection(x, z_x, w_ih)
    assert got.shape == expected.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@kernel_cases
def test_the_kernels_input_gradient_sums_each_gates_masked_part(pattern, batch, models, size):
    _, z_x, _, _, w_ih, d_pre, _ = _masked_layer_case(pattern, batch, models, size, torch.Generator().manual_seed(12))
    per_gate = w_ih.double().unflatten(-2, (4, -1))  # ([S,] 4, H, I)
    parts = torch.stack([d_pre.double().unflatten(-1, (4, -1)).select(-2, k) @ per_gate.select(-3, k)
                         for k in range(4)], -3)  # (T, [S,] 4, B, I) = d_pre_k W_k
    if z_x is not None:
        parts = parts * z_x.double()
    got = lstm_cpu.masked_input_gradient(d_pre, w_ih, z_x)
    torch.testing.assert_close(got.double(), parts.sum(-3), rtol=1e-5, atol=1e-5)


@kernel_cases
def test_the_kernels_weight_gradient_reads_each_gates_masked_inputs(pattern, batch, models, size):
    """Against products over the masked copies the MKL path saves, in float64."""
    x, z_x, h0, out, w_ih, d_pre, z_h = _masked_layer_case(pattern, batch, models, size, torch.Generator().manual_seed(13))
    previous = torch.cat([h0.unsqueeze(0), out[:-1]])  # h_{t-1}
    d_gates = d_pre.double().unflatten(-1, (4, -1))  # (T, [S,] B, 4, H) -> ([S,] 4, T, B, H)
    d_gates = d_gates.permute(2, 0, 1, 3) if models is None else d_gates.permute(1, 3, 0, 2, 4)
    expected = []
    for values, mask in [(x, z_x), (previous, z_h)]:
        copies = _per_gate(values, mask).expand(*d_gates.shape[:-1], values.shape[-1])  # ([S,] 4, T, B, C)
        expected.append((d_gates.flatten(-3, -2).transpose(-1, -2) @ copies.flatten(-3, -2)).flatten(-3, -2))  # ([S,] 4H, C)
    got = lstm_cpu.masked_weight_gradient(d_pre, x, z_x, h0, out, z_h)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        torch.testing.assert_close(g.double(), e, rtol=1e-5, atol=1e-4)


def test_the_product_runs_per_gate_once_the_recurrent_weight_fills_half_the_l2_cache(monkeypatch):
    monkeypatch.setattr(lstm_cpu, "_l2_cache_bytes", lambda: 2 * 2**20)
    assert not lstm_cpu.per_gate_products(torch.empty(4 * 200, 200))  # 0.61 MiB in float32
    assert lstm_cpu.per_gate_products(torch.empty(4 * 256, 256))  # 1 MiB
    assert lstm_cpu.per_gate_products(torch.empty(4 * 200, 200, dtype=torch.float64))
    assert not lstm_cpu.per_gate_products(torch.empty(8, 4 * 200, 200))  # a population: per model


def test_the_l2_size_is_read_from_sysfs_and_defaults_to_1_mib(tmp_path):
    for index, (level, kind, size) in enumerate([("1", "Data", "48K"), ("1", "Instruction", "64K"), ("2", "Unified", "2048K"), ("3", "Unified", "480M")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, text in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(text + "\n")
    assert lstm_cpu._l2_cache_bytes(tmp_path) == 2048 * 1024
    assert lstm_cpu._l2_cache_bytes(tmp_path / "absent") == 2**20


def test_the_l2_size_agrees_with_getconf():
    getconf = shutil.which("getconf")
    if getconf is None:
        pytest.skip("no getconf on this machine")
    reported = subprocess.run([getconf, "LEVEL2_CACHE_SIZE"], capture_output=True, text=True).stdout.strip()
    if not reported.isdigit() or int(reported) == 0:
        pytest.skip("getconf does not report the L2 size here")
    assert lstm_cpu._l2_cache_bytes() == int(reported)


def test_masks_in_another_dtype_than_the_model_are_taken_as_the_models():
    generator = torch.Generator().manual_seed(3)
    x_proj, h0, c0, weight, bias, z_h, z_c = _case("tied", None, torch.float64, generator)
    z_h = z_h.float()
    expected = lstm_kernel.forward_steps(x_proj, h0, c0, weight, bias, z_h, None)  # float64 by promotion
    got = lstm_cpu.forward_steps(x_proj, h0, c0, weight, bias, z_h, None)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)


def test_without_a_compiler_the_python_loop_runs_and_says_so(monkeypatch):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    lstm_cpu._extension.cache_clear()
    try:
        with pytest.warns(UserWarning, match="compiled CPU recurrence is unavailable.*Ninja is required.*g\\+\\+"):
            assert not lstm_cpu.available()
        generator = torch.Generator().manual_seed(5)
        _, h0, c0, weight, bias, z_h, z_c = _case("tied", None, torch.float64, generator)
        batch, hidden = SIZES["tiny"]
        x, w_ih = torch.randn(STEPS, batch, 5, dtype=torch.float64), torch.randn(4 * hidden, 5, dtype=torch.float64)
        out, h, c = lstm_kernel.masked_lstm(x, None, h0, c0, w_ih, torch.zeros(4 * hidden, dtype=torch.float64), weight, bias, z_h, z_c)
        torch.testing.assert_close(out, lstm_kernel.forward_steps(x @ w_ih.t(), h0, c0, weight, bias, z_h, z_c)[0], rtol=1e-12, atol=1e-12)
    finally:
        lstm_cpu._extension.cache_clear()


def test_only_a_build_from_scratch_announces_its_wait(monkeypatch, tmp_path, capsys):
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", lambda name, **kwargs: name)
    lstm_cpu._extension.cache_clear()
    try:
        name = lstm_cpu._extension()
        assert "compiling the CPU recurrence" in capsys.readouterr().err
        (tmp_path / name / f"{name}.so").touch()
        lstm_cpu._extension.cache_clear()
        assert lstm_cpu._extension() == name
        assert capsys.readouterr().err == ""
    finally:
        lstm_cpu._extension.cache_clear()


def test_a_lock_left_by_a_killed_load_does_not_hang_the_next_one(tmp_path):
    """A process killed while PyTorch held its build lock (it holds it for every load, even with
    nothing to build) used to leave the lock file behind, and every later load waited on it."""
    from torch.utils import cpp_extension

    built = Path(cpp_extension._get_build_directory(f"dropbench_lstm_cpu_{lstm_cpu._build_key()}", verbose=False))
    shutil.copytree(built, tmp_path / built.name)  # this build, up to date: no compiling in the child
    (tmp_path / built.name / "lock").touch()  # what a SIGKILL during load() leaves
    load = [sys.executable, "-c", "from dropbench.harness import lstm_cpu; print(lstm_cpu.available())"]
    loaded = subprocess.run(load, env={**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}, capture_output=True, text=True, timeout=60)
    assert loaded.stdout.strip() == "True", loaded.stderr
