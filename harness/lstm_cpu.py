"""The CPU build of the masked recurrence's two time loops and, on AVX-512 machines, of whole small
layers (`lstm_cpu.cpp`), compiled on first use with the machine's C++ compiler and cached by
PyTorch (`torch.utils.cpp_extension`, ~30 s once).

`forward_steps` / `backward_steps` take and return what those of `lstm_kernel.py` do, with or
without the population dimension. `available()` is False where no compiler is found; the
recurrence then runs the Python loop, with a one-line warning.

The forward's recurrent product runs either as one (B, H) x (H, 4H) product per step or as four
per-gate (B, H) x (H, H) products (always so for untied masks, where each gate has its own masked
input). Per gate is faster once W_hh fills half of a core's L2 cache. Measured on a 2-core Xeon
with 2 MiB of L2 per core, forward time loop at batch 20, per gate against one product: hidden 200
(W_hh 0.6 MiB) 1.16x, 256 (1.0 MiB) 0.86x, 400 0.79x, 650 0.92x, 1000 0.71x, 1500 0.67x. The
backward runs per gate at every size: 0.86x the time of one product at hidden 200, 0.94x at 650.

Where W_hh fits in half of L2, the time loops instead split their batch rows over the threads,
each thread running every step of its own rows with one-thread products (`split_rows`); a bigger
W_hh is better read once per step by MKL's threads together. Those one-thread products run in the
extension's own AVX-512 kernel where the machine has AVX-512 and the model is float32, and so does
the rest of such a layer (`runs_layer`); elsewhere they run in MKL.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import platform
import re
import sys
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("lstm_cpu.cpp")
# -ffast-math lets the compiler call the vectorised exp/tanh of the C library (libmvec). -fopenmp:
# at::parallel_for is an OpenMP pragma in ATen's headers, which without it runs on one thread; the
# libgomp it links is the one torch has already loaded.
CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-mprefer-vector-width=512"]


def _build_key() -> str:
    """The machine, the flags and the source: the build is tuned to the CPU (-march=native), so a home
    directory shared by different machines must not share one build, and two checkouts of
    different versions each keep their own instead of rebuilding over each other."""
    flags = ""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return hashlib.sha1(f"{platform.machine()} {flags} {CFLAGS}".encode() + SOURCE.read_bytes()).hexdigest()[:10]


@functools.cache
def _extension():
    from torch.utils import cpp_extension

    name = f"dropbench_lstm_cpu_{_build_key()}"
    try:
        build = Path(cpp_extension._get_build_directory(name, verbose=False))  # where load() builds; created here
        if not any(build.glob("*.so")):
            print("dropbench: compiling the CPU recurrence (harness/lstm_cpu.cpp), once for this machine and version: about 30 s", file=sys.stderr, flush=True)
        with open(build.parent / f"{name}.flock", "w") as guard:
            # Every load() takes PyTorch's lock file in the build folder, even with nothing to build;
            # a process killed while holding it leaves it behind, and every later load waits on it
            # forever. An flock ends with its process: while this one holds it no other dropbench
            # process is loading, so a lock file found now is stale.
            fcntl.flock(guard, fcntl.LOCK_EX)
            (build / "lock").unlink(missing_ok=True)
            return cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as error:  # no compiler, no headers: the Python loop computes the same
        warnings.warn(f"dropbench: the compiled CPU recurrence is unavailable ({str(error).splitlines()[0][:160]}); "
                      "masked layers run a Python loop, which is slower. Install a C++ compiler and ninja (apt install g++ ninja-build) to get it.", stacklevel=3)
        return None


def available() -> bool:
    return _extension() is not None


@functools.cache  # asked at every forward call
def _l2_cache_bytes(cache_dir: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """One core's L2 cache as Linux reports it (sysfs: level 2, size "2048K"); 1 MiB where it
    does not say. Python's os.sysconf has no name for it."""
    for index in sorted(cache_dir.glob("index*")):
        try:
            level, size = (index / "level").read_text().strip(), (index / "size").read_text().strip()
        except OSError:
            continue
        if level == "2" and (match := re.fullmatch(r"(\d+)([KMG]?)", size)):
            return int(match[1]) * 1024 ** " KMG".index(match[2] or " ")
    return 2**20


def per_gate_products(weight: torch.Tensor) -> bool:
    """Whether the recurrent product of weight ([S,] 4H, H) runs per gate, not split over rows
    (see the module docstring): whether one model's weight fills half of a core's L2 cache (asked
    of W_ih too, whose panels the kernel keeps in L2 the same way)."""
    return weight.shape[-2] * weight.shape[-1] * weight.element_size() >= _l2_cache_bytes() // 2


def forward_steps(x_proj, h0, c0, weight, bias, z_h, z_c, per_gate=None, split_rows=None, states=None):
    """per_gate, split_rows: None lets `per_gate_products` choose (tests set them). x_proj is
    consumed where it is already contiguous and in its own dtype: the returned acts are written
    over it. states: None, or ([S,] G, T, B, H) (G: the recurrent masks' gates, or 4; rows may be
    strided), which the loop fills with h_{t-1} * z_h[t] as it goes, for the backward.
    Masks in another dtype than x_proj's are taken in x_proj's."""
    per_gate_weight = per_gate_products(weight)
    return _extension().forward(x_proj, h0, c0, weight, bias, z_h, z_c, per_gate_weight if per_gate is None else per_gate,
                                not per_gate_weight if split_rows is None else split_rows, states)


def backward_steps(d_out, dh, dc, weight, acts, cells, tanh_c, z_h, z_c, split_rows=None):
    return _extension().backward(d_out, dh, dc, weight, acts, cells, tanh_c, z_h, z_c,
                                 not per_gate_products(weight) if split_rows is None else split_rows)


def runs_layer(x, w_ih, w_hh) -> bool:
    """Whether the whole layer runs in the extension's AVX-512 kernel, its masks applied inside the
    products (`masked_projection`, `masked_input_gradient`, `masked_weight_gradient`): float32, a
    build with the kernel, and W_ih and W_hh small enough for split rows (`per_gate_products`)."""
    return (x.dtype == torch.float32 and _extension().kernel_runs()
            and not per_gate_products(w_ih) and not per_gate_products(w_hh))


def masked_projection(x, z_x, w_ih):
    """x (T, [S,] B, I), z_x None or (T|1, [S,] G|1, B, I), w_ih ([S,] 4H, I). Returns
    (T, [S,] B, 4H) = mask(x) W_ih^T, gate k's columns from x * z_x^k."""
    return _extension().masked_projection(x, z_x, w_ih)


def masked_input_gradient(d_pre, w_ih, z_x):
    """d_pre (T, [S,] B, 4H). Returns the input's gradient sum_k z_x^k * d_pre_k W_ih_k, (T, [S,] B, I)."""
    return _extension().masked_input_gradient(d_pre, w_ih, z_x)


def masked_weight_gradient(d_pre, x, z_x, h0, out, z_h):
    """d_pre (T, [S,] B, 4H), x (T, [S,] B, I), h0 ([S,] B, H), out (T, [S,] B, H). Returns the
    gradients of W_ih and W_hh: gate k's rows sum d_pre_k^T (x * z_x^k) and d_pre_k^T (h_{t-1} * z_h^k)
    over steps and rows, h_{-1} = h0."""
    d_weight = _extension().masked_weight_gradient(d_pre, x, z_x, h0, out, z_h)
    return d_weight[..., : x.shape[-1]], d_weight[..., x.shape[-1] :]


def masked_gate_sum(parts, mask):
    """parts ([S,] G, T, B, I), mask (T|1, [S,] G|1, B, I): sum_k parts_k * mask_k, (T, [S,] B, I)."""
    return _extension().masked_gate_sum(parts, mask)
