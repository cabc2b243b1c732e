"""The one prepared script for a lent GPU: one call, sections in order of importance, each skipped
when the time budget left cannot hold it, so that one call always ends with a table.

    python -m dropbench.harness.gpu_check --out $OUT --budget 420        # on the GPU machine
    python -m dropbench.harness.gpu_check --device cpu --tiny --budget 120  # a rehearsal here

1. correctness: every variant's logits and gradients on the device (float32 with and without CUDA
   graphs, TF32, bf16 autocast) against a float64 CPU reference with the same weights and masks;
   1b. a population of every variant against each member's own float64 forward pass;
2. the masked LSTM layer (input projection and recurrence), forward + backward, with and without CUDA graphs;
3. `dropbench bench` at medium, with population throughput for S = 1, 2, 4, 8;
4. one epoch over the whole training set of every paper-ptb-medium trial (every row and grid
   cell, seed 1), each alone: the epoch time per variant beside the paper's words/s;
5. precision: the same weights evaluated in fp32, TF32 and bf16, and one epoch trained in each
   beside fp32's seed-to-seed spread (the 0.5% question);
6. `dropbench bench` at large;
7. the four moon-emb cells of the medium suite trained alone and as one population;
8. the cost of 1000 MC samples over the whole PTB test set, in deterministic passes.
Everything also lands in OUT/gpu_check.json. Record what it prints in docs/perf.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from dropbench.variants import load_registry

from .bench import run_bench
from .config import expand, load_suite
from .data import load_ptb, resolve_data_dir
from .evaluate import lm_target_logprobs
from .lstm_kernel import MaskedLSTM, masked_lstm
from .masks import ChunkMasks, LayerMasks
from .models import LanguageModel
from .population import Population, train_step
from .precision import autocast, matmul_precision
from .train import LanguageModelTrial, Progress, run_trial, train_language_models

PROBABILITIES = {"p_embedding": 0.3, "p_input": 0.5, "p_recurrent": 0.3, "p_cell": 0.25, "p_output": 0.5}
PTB_TRAIN_TOKENS = 929_589
PRECISION_MC_SAMPLES = 100


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """‖value − reference‖ / ‖reference‖, in float64 on the CPU; NaN anywhere gives inf."""
    value, reference = value.detach().double().cpu(), reference.detach().double().cpu()
    if not torch.isfinite(value).all():
        return float("inf")
    return float((value - reference).norm() / reference.norm())


def _cast(masks: ChunkMasks, dtype, device) -> ChunkMasks:
    def move(tensor):
        return None if tensor is None else tensor.to(device=device, dtype=dtype)
    return ChunkMasks([LayerMasks(move(m.input), move(m.recurrent), move(m.cell)) for m in masks.layers],
                      embedding=move(masks.embedding), output=move(masks.output))


def check_against_float64(device: torch.device, hidden: int) -> list[dict]:
    """Relative error of logits and of all gradients (concatenated) against CPU float64, per variant
    and numeric mode, on fresh random tokens, weights and masks for every variant."""
    rows = []
    modes = [("fp32", True), ("fp32-no-graphs", False)] + ([("tf32", True), ("bf16", True)] if device.type == "cuda" else [])
    for number, (name, variant) in enumerate(load_registry().items()):
        torch.manual_seed(100 + number)
        reference = LanguageModel(1000, "lstm", hidden, 2, variant).double()
        tokens = torch.randint(0, 1000, (35, 8))
        masks = reference.draw_masks(PROBABILITIES, tokens, "cpu")

        def run(model, masks):
            model.zero_grad()
            logits, _ = model(tokens.to(model.decoder.weight.device), model.initial_state(8), masks)
            logits.float().logsumexp(-1).sum().backward()
            return logits.detach(), torch.cat([p.grad.flatten().double().cpu() for p in model.parameters()])

        expected_logits, expected_grads = run(reference, _cast(masks, torch.float64, "cpu"))
        for mode, graphs in modes:
            MaskedLSTM.use_cuda_graphs = graphs
            model = LanguageModel(1000, "lstm", hidden, 2, variant).to(device)
            model.load_state_dict({k: v.float() for k, v in reference.state_dict().items()})
            precision = {"precision": mode.split("-")[0]}
            with matmul_precision(precision["precision"]), autocast(precision, device):
                logits, grads = run(model, _cast(masks, torch.float32, device))
            rows.append({"variant": name, "mode": mode, "logits_rel_error": relative_error(logits, expected_logits),
                         "grad_rel_error": relative_error(grads, expected_grads)})
    MaskedLSTM.use_cuda_graphs = True
    return rows


def time_recurrence(device: torch.device, sizes: list[int], batch: int = 20, steps: int = 35, repeats: int = 20) -> list[dict]:
    """Milliseconds per forward + backward of the masked LSTM layer (tied input, recurrent and cell
    masks), median over `repeats`, with and without CUDA graphs."""
    rows = []
    for hidden in sizes:
        torch.manual_seed(hidden)
        x = torch.randn(steps, batch, hidden, device=device, requires_grad=True)
        h0, c0 = torch.randn(2, batch, hidden, device=device).unbind(0)
        w_ih, w_hh = ((torch.randn(4 * hidden, hidden, device=device) / hidden**0.5).requires_grad_() for _ in range(2))
        b_ih, b_hh = (torch.zeros(4 * hidden, device=device, requires_grad=True) for _ in range(2))
        z_x, z_h = (torch.empty(1, 1, batch, hidden, device=device).bernoulli_(0.7) / 0.7 for _ in range(2))
        z_c = torch.empty(1, batch, hidden, device=device).bernoulli_(0.75) / 0.75

        def step():
            out, h, c = masked_lstm(x, z_x, h0, c0, w_ih, b_ih, w_hh, b_hh, z_h, z_c)
            (out.sum() + h.sum() + c.sum()).backward()

        for graphs in (False, True):
            MaskedLSTM.use_cuda_graphs = graphs
            step()
            times = []
            for _ in range(repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
            rows.append({"hidden": hidden, "cuda_graphs": graphs, "ms": 1000 * statistics.median(times)})
    MaskedLSTM.use_cuda_graphs = True
    return rows


def medium_epoch_per_trial(device: str, out: Path, seconds: float, tiny: bool) -> dict:
    """One epoch of every paper-ptb-medium trial (seed 1: every row and grid cell) over the whole
    training set, each trial alone (population 1), as `dropbench run` would train it: the epoch
    time per variant, beside the paper's words/s."""
    sets = {"epochs": 1, "mc_samples": 0, "test_tokens": 2000}
    if tiny:
        sets = {"epochs": 1, "mc_samples": 0, "hidden_size": 32, "train_tokens": 2000, "valid_tokens": 200, "test_tokens": 100,
                "test_batch_size": 20}
    folder = Path(tempfile.mkdtemp(prefix="medium-"))
    command = [sys.executable, "-m", "dropbench.harness.cli", "run", "paper-ptb-medium", "--seeds", "1", "--device", device,
               "--population", "1", "--out", str(folder), "--no-progress"] + [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]
    started = time.perf_counter()
    try:
        exit_code = subprocess.run(command, timeout=max(seconds, 30)).returncode
    except subprocess.TimeoutExpired:
        exit_code = "timed out; the table holds the trials that finished"
    elapsed = time.perf_counter() - started
    import pandas as pd

    results = pd.read_csv(folder / "results.csv")
    shutil.copy(folder / "results.csv", out / "medium-epoch-results.csv")
    results["epoch_s"] = sets.get("train_tokens", PTB_TRAIN_TOKENS) / results["train_wps"]
    columns = [c for c in ["variant", "grid_cell", "val_ppl", "train_wps", "paper_wps", "epoch_s"] if c in results.columns]
    return {"settings": sets, "exit_code": exit_code, "wall_s": elapsed,
            "table": results[columns].to_string(index=False, float_format=lambda v: f"{v:.1f}")}


def precision_check(device: str, tokens: int, tiny: bool) -> dict:
    """(a) One variational-tied medium model trained one epoch in fp32, then evaluated in fp32,
    TF32 and bf16: the same weights, so a change of perplexity is the arithmetic's alone.
    (b) The same training in TF32 and bf16, and in fp32 with seed 2: the seed-to-seed spread is
    what a precision's change in (b) has to be set against."""
    sets = {"epochs": 1, "train_tokens": tokens, "mc_samples": 0, "test_tokens": 2000, "device": device}
    if tiny:
        sets.update(hidden_size=32, valid_tokens=300, test_tokens=100)
    data_dir = resolve_data_dir(None)
    corpus = load_ptb(data_dir)
    registry = load_registry()
    variant = registry["variational-tied"]
    config = expand(load_suite("paper-ptb-medium"), registry, seeds=1, only=["variational-tied"], overrides=sets)[0].config
    torch_device = torch.device(device)
    with matmul_precision("fp32"):
        torch.manual_seed(config["seed"])
        trial = LanguageModelTrial(config, variant, corpus, torch_device, None, Progress())
        train_language_models([trial], corpus, Progress())
    valid, test = corpus.valid[: 300 if tiny else None], corpus.test[: 300 if tiny else 20_000]
    evaluated = []
    for mode in ("fp32", "tf32", "bf16"):
        mode_config = {**config, "precision": mode}
        with matmul_precision(mode), autocast(mode_config, torch_device):
            started = time.perf_counter()
            logprob, _ = lm_target_logprobs(trial.model, valid, 20, 35, torch_device)
            val_seconds = _synchronised(torch_device, started)
            started = time.perf_counter()
            generator = torch.Generator(torch_device).manual_seed(1)
            mc, _ = lm_target_logprobs(trial.model, test, 20, 35, torch_device, mode_config, PRECISION_MC_SAMPLES, generator=generator)
            mc_seconds = _synchronised(torch_device, started)
        evaluated.append({"precision": mode, "val_ppl": float(np.exp(-logprob.mean())), "val_s": val_seconds,
                          "test_ppl_mc": float(np.exp(-mc.mean())), "mc_s": mc_seconds})
    for row in evaluated:
        row["val_change_percent"] = 100 * (row["val_ppl"] / evaluated[0]["val_ppl"] - 1)
        row["mc_change_percent"] = 100 * (row["test_ppl_mc"] / evaluated[0]["test_ppl_mc"] - 1)
    trained = [{"precision": "fp32", "seed": 1, "val_ppl": trial.run["last_val"]}]
    for mode, seed in (("tf32", 1), ("bf16", 1), ("fp32", 2)):
        metrics = run_trial({**config, "precision": mode, "seed": seed}, variant, data_dir).metrics
        trained.append({"precision": mode, "seed": seed, "val_ppl": metrics["val_ppl"], "train_wps": metrics["train_wps"]})
    for row in trained:
        row["change_percent"] = 100 * (row["val_ppl"] / trained[0]["val_ppl"] - 1)
    return {"same_weights": evaluated, "trained": trained}


def _synchronised(device: torch.device, started: float) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def check_population(device: torch.device, hidden: int) -> list[dict]:
    """One population of every variant on the device against each member alone in float64 on
    the CPU, with the same weights and masks: the logits, and the gradients (one SGD step with
    lr 1 and no clipping moves each parameter by minus its gradient)."""
    registry = load_registry()
    torch.manual_seed(7)
    references = [LanguageModel(1000, "lstm", hidden, 2, variant).double() for variant in registry.values()]
    tokens = torch.randint(0, 1000, (36, 8))
    x, y = tokens[:-1], tokens[1:]
    masks = [model.draw_masks(PROBABILITIES, x, "cpu") for model in references]
    members = []
    for reference in references:
        member = LanguageModel(1000, "lstm", hidden, 2, reference.variant).to(device)
        member.load_state_dict({k: v.float() for k, v in reference.state_dict().items()})
        members.append(member)
    population = Population(members)
    before = {name: param.detach().clone() for name, param in population.params.items()}
    with torch.no_grad():
        logits, _ = population.forward(x.to(device), population.initial_state(8), [_cast(m, torch.float32, device) for m in masks])
    ones = torch.ones(len(members), device=device)
    train_step(population, x.to(device), y.to(device), [_cast(m, torch.float32, device) for m in masks], population.initial_state(8),
               ones, ones * float("inf"))
    rows = []
    for k, (name, reference) in enumerate(zip(registry, references)):
        expected, _ = reference(x, reference.initial_state(8), _cast(masks[k], torch.float64, "cpu"))
        loss = torch.nn.functional.cross_entropy(expected.flatten(0, 1), y.flatten()) * x.shape[0]
        reference.zero_grad()
        loss.backward()
        grads = torch.cat([(before[n][k] - population.params[n][k].detach()).flatten().double().cpu() for n in population.names])
        expected_grads = torch.cat([reference.get_parameter(n).grad.flatten() for n in population.names])
        rows.append({"variant": name, "logits_rel_error": relative_error(logits[k], expected.flatten(0, 1)),
                     "grad_rel_error": relative_error(grads, expected_grads)})
    return rows


def alone_and_together(device: str, tokens: int, tiny: bool) -> dict:
    """The four moon-emb cells of paper-ptb-medium, one epoch on a `tokens` prefix, trained alone
    and as one population through `dropbench run`: status and validation perplexity of each."""
    sets = {"epochs": 1, "train_tokens": tokens, "mc_samples": 0, "test_tokens": 2000}
    if tiny:
        sets.update(hidden_size=32, valid_tokens=300, test_tokens=100)
    import pandas as pd

    results = {}
    for population in (1, 4):
        folder = Path(tempfile.mkdtemp(prefix=f"population-{population}-"))
        command = [sys.executable, "-m", "dropbench.harness.cli", "run", "paper-ptb-medium", "--seeds", "1", "--only", "moon-emb",
                   "--device", device, "--out", str(folder), "--no-progress", "--population", str(population)]
        subprocess.run(command + [a for key, value in sets.items() for a in ("--set", f"{key}={value}")], check=True)
        results[population] = pd.read_csv(folder / "results.csv").set_index("grid_cell")
    table = pd.DataFrame({"alone": results[1]["status"], "alone_val_ppl": results[1]["val_ppl"],
                          "population": results[4]["status"], "population_val_ppl": results[4]["val_ppl"]})
    return {"settings": sets, "table": table.to_string(float_format=lambda v: f"{v:.2f}")}


def mc_cost_on_test_set(device: torch.device, samples: int, tiny: bool) -> dict:
    """Seconds of one deterministic pass and of MC with `samples` samples over the whole PTB test
    set read as one stream (the paper's protocol), for a variational-tied medium model."""
    corpus = load_ptb(resolve_data_dir(None))
    test = corpus.test[:300] if tiny else corpus.test
    variant = load_registry()["variational-tied"]
    torch.manual_seed(0)
    model = LanguageModel(len(corpus.vocab), "lstm", 32 if tiny else 650, 2, variant).to(device)
    config = {f"p_{slot}": p for slot, p in variant.p.items()}
    lm_target_logprobs(model, test[:2000], 1, 35, device, config, 4)  # warm-up: graph captures
    started = time.perf_counter()
    lm_target_logprobs(model, test, 1, 35, device)
    deterministic = _synchronised(device, started)
    started = time.perf_counter()
    lm_target_logprobs(model, test, 1, 35, device, config, samples, generator=torch.Generator(device).manual_seed(0))
    monte_carlo = _synchronised(device, started)
    return {"tokens": len(test), "samples": samples, "deterministic_s": deterministic, "mc_s": monte_carlo,
            "mc_cost_in_deterministic_passes": monte_carlo / deterministic}


def print_bench(result: dict, label: str):
    print(f"{label} ({result['hidden_size']}x{result['num_layers']}, batch {result['batch_size']}, BPTT {result['bptt']}); "
          f"matmul peak {result['matmul_peak_flops'] / 1e12:.2f} TFLOP/s")
    for row in result["rows"]:
        mc = f"  MC {row['mc_cost_in_deterministic_passes']:.1f} passes for {result['mc_samples']}" if "mc_cost_in_deterministic_passes" in row else ""
        print(f"  {row['variant']:<20} train {row['train_wps']:>9.0f} w/s ({row['train_ratio_to_baseline']:.2f}x)  "
              f"eval {row['eval_wps']:>9.0f} w/s ({row['eval_ratio_to_baseline']:.2f}x)  {100 * row['train_flops_fraction_of_peak']:.1f}% peak{mc}")
    for row in result.get("population", []):
        print(f"  population of {row['models']} {row['variant']}: train {row['train_wps']:>9.0f} w/s in all ({row['ratio_to_alone']:.2f}x one alone)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-check"))
    parser.add_argument("--budget", type=float, default=420, help="seconds this call may take in all")
    parser.add_argument("--tiny", action="store_true", help="small sizes, for a rehearsal on a CPU")
    parser.add_argument("--sections", help="comma-separated section numbers to run (e.g. 1b,7); default all")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    cudnn = torch.backends.cudnn.version() if device.type == "cuda" else None
    print(f"device: {name}, torch {torch.__version__}, cuDNN {cudnn}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    report = {"device": name, "torch": torch.__version__, "cudnn": cudnn, "date": time.strftime("%Y-%m-%d"), "budget_s": args.budget}
    hidden = {"medium": 32 if args.tiny else 650, "large": 48 if args.tiny else 1500}
    registry = load_registry()

    def section(title: str, needs: float, work):
        if not section_wanted(title):
            return None
        left = deadline - time.monotonic()
        if left < needs:
            print(f"\n{title}: skipped, {left:.0f} s left of the budget, needs about {needs:.0f}", flush=True)
            return None
        print(f"\n{title}", flush=True)
        started = time.monotonic()
        try:
            result = work(left)
        except Exception:
            traceback.print_exc()
            result = {"error": traceback.format_exc()}
        print(f"  ({time.monotonic() - started:.0f} s)", flush=True)
        report[title] = result
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        return result

    def correctness(left):
        rows = check_against_float64(device, 16 if args.tiny else 256)
        for row in rows:
            print(f"  {row['variant']:<20} {row['mode']:<15} logits {row['logits_rel_error']:.1e}  grads {row['grad_rel_error']:.1e}")
        return rows

    def recurrence(left):
        rows = time_recurrence(device, [hidden["medium"], hidden["large"]], repeats=3 if args.tiny else 20)
        for row in rows:
            print(f"  hidden {row['hidden']:>5}  CUDA graphs {'on ' if row['cuda_graphs'] else 'off'}  {row['ms']:.2f} ms per forward + backward")
        return rows

    def bench(size, rounds):
        def work(left):
            result = run_bench(registry, device, hidden[size], 2, rounds=rounds, mc_samples=4 if args.tiny else 100)
            print_bench(result, f"  bench {size}")
            return result
        return work

    def suite(left):
        result = medium_epoch_per_trial(args.device, out, left - (20 if args.tiny else 100), args.tiny)
        print(f"  settings {result['settings']}; exit {result['exit_code']}; {result['wall_s']:.0f} s wall")
        print(result["table"])
        return result

    def precision(left):
        result = precision_check(args.device, 1000 if args.tiny else 300_000, args.tiny)
        print("  the same fp32-trained weights evaluated in each precision (validation; MC: 100 samples, 20k test tokens):")
        for row in result["same_weights"]:
            print(f"  {row['precision']:<5} val ppl {row['val_ppl']:8.3f} ({row['val_change_percent']:+.3f}%) {row['val_s']:.2f} s   "
                  f"MC ppl {row['test_ppl_mc']:8.3f} ({row['mc_change_percent']:+.3f}%) {row['mc_s']:.2f} s")
        print("  trained one epoch in each precision (val ppl; fp32 seed 2 shows the seed-to-seed spread):")
        for row in result["trained"]:
            print(f"  {row['precision']:<5} seed {row['seed']}  val ppl {row['val_ppl']:8.2f} ({row['change_percent']:+.2f}%)")
        return result

    def population(left):
        rows = check_population(device, 16 if args.tiny else 256)
        for row in rows:
            print(f"  {row['variant']:<20} population logits {row['logits_rel_error']:.1e}  grads {row['grad_rel_error']:.1e}")
        return rows

    def alone_together(left):
        result = alone_and_together(args.device, 1000 if args.tiny else 135_000, args.tiny)
        print(f"  settings {result['settings']}")
        print(result["table"])
        return result

    def mc_cost(left):
        result = mc_cost_on_test_set(device, 8 if args.tiny else 1000, args.tiny)
        print(f"  {result['tokens']} test tokens, one stream: deterministic {result['deterministic_s']:.1f} s, "
              f"MC with {result['samples']} samples {result['mc_s']:.1f} s = {result['mc_cost_in_deterministic_passes']:.1f} deterministic passes")
        return result

    def section_wanted(title):
        return not args.sections or title.split(".")[0] in args.sections.split(",")

    section("1. against float64 on the CPU (relative error, ‖x − ref‖ / ‖ref‖)", 10, correctness)
    section("1b. a population of every variant against each member alone in float64", 10, population)
    section("2. masked LSTM layer, forward + backward, batch 20, 35 steps", 10, recurrence)
    section("3. bench medium", 30, bench("medium", 2 if args.tiny else 15))
    section("4. one epoch of every paper-ptb-medium trial, seed 1, each alone", 120, suite)
    section("5. precision: the same weights evaluated, and one epoch trained, in fp32, TF32 and bf16", 40, precision)
    section("6. bench large", 30, bench("large", 2 if args.tiny else 10))
    section("7. moon-emb cells alone and as one population (float32)", 60, alone_together)
    section("8. MC cost over the whole PTB test set, one stream, 1000 samples (medium, float32)", 60, mc_cost)


if __name__ == "__main__":
    main()
