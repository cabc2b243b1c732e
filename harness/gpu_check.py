"""The one prepared script for a lent GPU (one call, under 8 minutes):

    python -m dropbench.harness.gpu_check --out $OUT          # on the GPU machine
    python -m dropbench.harness.gpu_check --device cpu --tiny  # a seconds-long rehearsal here

1. correctness: every variant's forward and backward on the device in float32 (and with TF32 and
   bf16 autocast) against a float64 CPU reference with the same weights and masks;
2. `dropbench bench` at medium and large, written as JSON;
3. a shortened paper-ptb-medium suite (every row, 1 seed, 1 epoch on a training prefix, 100 MC
   samples), timed, printed beside the paper's numbers.
Record what it prints in docs/perf.md with the card and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from dropbench.variants import load_registry

from .bench import run_bench
from .models import LanguageModel

PROBABILITIES = {"p_embedding": 0.3, "p_input": 0.5, "p_recurrent": 0.3, "p_cell": 0.25, "p_output": 0.5}


def check_against_float64(device: torch.device, hidden: int = 64) -> list[dict]:
    """Max relative error of logits and gradients on `device` against CPU float64, per variant and precision."""
    rows = []
    defaults = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    for name, variant in load_registry().items():
        torch.manual_seed(0)
        reference = LanguageModel(1000, "lstm", hidden, 2, variant).double()
        tokens = torch.randint(0, 1000, (35, 8))
        masks = reference.draw_masks(PROBABILITIES, 35, 8, "cpu")

        def run(model, masks, autocast=None):
            model.zero_grad()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast == "bf16"):
                logits, _ = model(tokens.to(model.decoder.weight.device), model.initial_state(8), masks)
            logits.double().logsumexp(-1).sum().backward()
            return logits.detach().double().cpu(), [p.grad.detach().double().cpu() for p in model.parameters()]

        expected_logits, expected_grads = run(reference, _cast(masks, torch.float64, "cpu"))
        for precision in ("fp32", "tf32", "bf16"):
            if precision != "fp32" and device.type != "cuda":
                continue
            torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
            torch.backends.cudnn.allow_tf32 = precision == "tf32"
            model = LanguageModel(1000, "lstm", hidden, 2, variant).to(device)
            model.load_state_dict({k: v.float() for k, v in reference.state_dict().items()})
            logits, grads = run(model, _cast(masks, torch.float32, device), autocast=precision)
            grad_error = max(float((g - e).abs().max() / (e.abs().max() + 1e-12)) for g, e in zip(grads, expected_grads))
            logit_error = float((logits - expected_logits).abs().max() / expected_logits.abs().max())
            rows.append({"variant": name, "precision": precision, "logits_rel_error": logit_error, "grad_rel_error": grad_error})
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = defaults
    return rows


def _cast(masks, dtype, device):
    from .masks import ChunkMasks, LayerMasks

    def move(tensor):
        return None if tensor is None else tensor.to(device=device, dtype=dtype)
    return ChunkMasks([LayerMasks(move(l.input), move(l.recurrent), move(l.cell)) for l in masks.layers],
                      embedding=move(masks.embedding), output=move(masks.output))


def shortened_medium_suite(device: str, out: Path, tiny: bool) -> str:
    sets = ["epochs=1", "train_tokens=300000", "mc_samples=100"]
    if tiny:
        sets = ["epochs=1", "train_tokens=700", "valid_tokens=200", "test_tokens=100", "mc_samples=2", "hidden_size=32"]
    command = [sys.executable, "-m", "dropbench.harness.cli", "run", "paper-ptb-medium", "--seeds", "1", "--device", device,
               "--out", str(out / "medium"), "--no-progress"] + [a for s in sets for a in ("--set", s)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    elapsed = time.perf_counter() - started
    import pandas as pd

    results = pd.read_csv(out / "medium" / "results.csv")
    results = results[results["selected"]]
    columns = ["variant", "grid_cell", "val_ppl", "paper_val_ppl", "test_ppl", "paper_test_ppl", "test_ppl_mc", "paper_test_ppl_mc", "train_wps", "paper_wps"]
    return f"shortened paper-ptb-medium ({', '.join(sets)}): {elapsed:.0f} s wall\n" + results[columns].to_string(index=False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-check"))
    parser.add_argument("--tiny", action="store_true", help="small sizes, for a rehearsal on a CPU")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}", flush=True)

    errors = check_against_float64(device)
    print("\n1. against float64 on the CPU (max relative error):")
    for row in errors:
        print(f"  {row['variant']:<20} {row['precision']:<5} logits {row['logits_rel_error']:.2e}  grads {row['grad_rel_error']:.2e}")
    (out / "float64_check.json").write_text(json.dumps(errors, indent=2))

    registry = load_registry()
    for size, (hidden, layers) in ({"tiny": (64, 2)} if args.tiny else {"medium": (650, 2), "large": (1500, 2)}).items():
        result = run_bench(registry, device, hidden, layers, rounds=1 if args.tiny else 3, mc_samples=4 if args.tiny else 100)
        (out / f"bench-{size}.json").write_text(json.dumps(result, indent=2))
        print(f"\n2. bench {size} ({hidden}x{layers}); matmul peak {result['matmul_peak_flops'] / 1e12:.2f} TFLOP/s")
        for row in result["rows"]:
            print(f"  {row['variant']:<20} train {row['train_wps']:>9.0f} w/s ({row['train_ratio_to_baseline']:.2f}x)  "
                  f"eval {row['eval_wps']:>9.0f} w/s  {100 * row['train_flops_fraction_of_peak']:.0f}% peak")

    print("\n3. " + shortened_medium_suite(args.device, out, args.tiny))


if __name__ == "__main__":
    main()
