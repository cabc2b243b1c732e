"""A small results folder for report tests, written straight through the results store (no training).

build_fixture(out_dir) writes out_dir/results.sqlite with one suite (its name has HTML in it):

    PTB, LSTM 2×16        none (seeds 1-3; seed 3 diverged), variational-tied (1-3, MC),
                          EVIL (1-3; seed 2 failed), moon (seed 1 only)
    sentiment, LSTM 1×8   none (1-2), variational-tied on a p_recurrent × p_embedding grid
                          {0, 0.5}² (1-2 each, MC)
    sentiment, GRU 1×8    none (1-2; seed 3 pending), variational-tied (1-2, MC; seed 3 running)

with per-epoch curves, per-sentence (PTB) / per-segment (sentiment) test losses consistent with the
final metrics, and a run row with an environment. Numbers come from a seeded generator: the same
call gives the same folder. `ptb=False` or `sentiment=False` leaves a task out; `seeds` sets how many
seeds the multi-seed groups get.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np

from dropbench.harness.config import TASK_DEFAULTS, trial_id
from dropbench.harness.store import ResultStore

EVIL = "<script>alert(1)</script>"
SUITE = "fixture-<b>bold</b>"
SENTENCES = 60
SEGMENTS = 40
# variant -> (perplexity level, train words/s)
PTB_VARIANTS = {"none": (120.0, 5500.0), "variational-tied": (95.0, 4700.0), EVIL: (105.0, 3000.0), "moon": (110.0, 4800.0)}


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _config(task: str, variant: str, seed: int, **overrides) -> dict:
    config = {**TASK_DEFAULTS[task], "variant": variant, "seed": seed, "device": "cpu", **overrides}
    if task == "ptb":
        config.update(hidden_size=16, num_layers=2, epochs=4)
    else:
        config.update(hidden_size=8, embedding_size=8, num_layers=1, epochs=5)
    return config


def _ptb_losses(rng, level: float, counts: np.ndarray) -> np.ndarray:
    # summed NLL per sentence: log(level) nats per token plus sentence-level noise
    return counts * (math.log(level) + rng.normal(0, 0.15, counts.size))


def build_fixture(out_dir, *, ptb: bool = True, sentiment: bool = True, seeds: int = 3) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out_dir / "results.sqlite")
    try:
        run_id = store.start_run(SUITE, ["dropbench", "run", "fixture"], {
            "torch": "2.13.0+cpu", "python": "3.11", "platform": "Linux", "device": "cpu",
            "device_name": "<i>fixture cpu</i>", "threads": 2, "git_commit": "0123456789abcdef"})
        position = 0

        def register(config, grid=None):
            nonlocal position
            tid = trial_id({**config, "_grid": grid or {}})
            store.register_trial(tid, position, SUITE, config, grid or {})
            position += 1
            return tid

        if ptb:
            counts = _rng("counts").integers(5, 30, SENTENCES)
            for variant, (level, wps) in PTB_VARIANTS.items():
                mc = variant == "variational-tied"
                config_p = {"p_input": 0.5, "p_output": 0.5} if variant != "none" else {}
                for seed in range(1, (2 if variant == "moon" else seeds + 1)):
                    config = _config("ptb", variant, seed, mc_samples=5 if mc else 0, **config_p)
                    tid = register(config)
                    rng = _rng("ptb", variant, seed)
                    store.mark_running(tid, run_id)
                    quality = level * math.exp(rng.normal(0, 0.02))
                    if variant == "none" and seed == 3:
                        for epoch in (1, 2):
                            store.record_epoch(tid, epoch, {"lr": 1.0, "train_loss": 6.0, "train_ppl": 400.0,
                                                            "val_ppl": 300.0 if epoch == 1 else 1e6, "train_wps": wps, "wall_s": float(epoch)})
                        store.finish_trial(tid, "diverged", {"val_ppl": 1e6, "epochs_run": 2, "train_wps": wps, "wall_s": 2.0},
                                           error="training loss became nan in epoch 2")
                        continue
                    if variant == EVIL and seed == 2:
                        store.record_epoch(tid, 1, {"lr": 1.0, "train_loss": 5.5, "train_ppl": 250.0, "val_ppl": 260.0, "train_wps": wps, "wall_s": 1.0})
                        store.finish_trial(tid, "failed", {"wall_s": 1.5}, error=(
                            "Traceback (most recent call last):\n  File \"train.py\", line 1, in run_trial\n"
                            "RuntimeError: mask <shape> mismatch & more"))
                        continue
                    epochs = 4
                    for epoch in range(1, epochs + 1):
                        val = quality * 1.05 * (1 + 2.0 / epoch ** 1.5)
                        store.record_epoch(tid, epoch, {"lr": 1.0 / max(1, epoch - 1), "train_loss": math.log(val) - 0.1,
                                                        "train_ppl": val * 0.9, "val_ppl": val,
                                                        "train_wps": wps * (1 + rng.normal(0, 0.02)), "wall_s": 2.0 * epoch})
                    losses = {"det": (_ptb_losses(rng, quality, counts), counts)}
                    metrics = {"val_ppl": quality * 1.05 * (1 + 2.0 / epochs ** 1.5),  # = the last epoch's
                               "train_wps": wps * (1 + rng.normal(0, 0.03)), "eval_wps": 3 * wps * (1 + rng.normal(0, 0.03)),
                               "epochs_run": epochs}
                    metrics["test_ppl"] = math.exp(losses["det"][0].sum() / counts.sum())
                    if mc:
                        losses["mc"] = (_ptb_losses(rng, quality * 0.99, counts), counts)
                        metrics["test_ppl_mc"] = math.exp(losses["mc"][0].sum() / counts.sum())
                        metrics["mc_eval_wps"] = wps / 5 * (1 + rng.normal(0, 0.03))
                    metrics["wall_s"] = 2.0 * epochs + 1
                    store.finish_trial(tid, "done", metrics, losses)

        if sentiment:
            for cell in ("lstm", "gru"):
                plans = [("none", {}, 0.19)]
                if cell == "lstm":
                    plans += [("variational-tied", {"p_recurrent": pr, "p_embedding": pe}, 0.17 + 0.02 * pr - 0.03 * pe)
                              for pr in (0.0, 0.5) for pe in (0.0, 0.5)]
                else:
                    plans += [("variational-tied", {}, 0.175)]
                for variant, grid, level in plans:
                    for seed in range(1, min(seeds, 2) + 1):
                        probabilities = {"p_embedding": 0.5, "p_input": 0.5, "p_recurrent": 0.5, "p_output": 0.5} if variant != "none" else {}
                        config = _config("sentiment", variant, seed, cell=cell, mc_samples=3 if variant != "none" else 0,
                                         **{**probabilities, **grid})
                        tid = register(config, grid)
                        rng = _rng("sentiment", cell, variant, repr(grid), seed)
                        store.mark_running(tid, run_id)
                        target = level * (1 + rng.normal(0, 0.03))
                        for epoch in range(1, 6):
                            store.record_epoch(tid, epoch, {"lr": 0.001, "train_loss": 0.5 / epoch, "test_rmse": target * (1 + 0.3 / epoch),
                                                            "test_rmse_mc": target * (1 + 0.25 / epoch) if variant != "none" else None,
                                                            "train_wps": 9000.0 * (1 + rng.normal(0, 0.02)), "wall_s": float(epoch)})
                        squared = (target * rng.normal(1, 0.3, SEGMENTS)) ** 2
                        ones = np.ones(SEGMENTS, dtype=np.int64)
                        losses = {"det": (squared, ones)}
                        metrics = {"test_rmse": math.sqrt(squared.mean()), "train_wps": 9000.0 * (1 + rng.normal(0, 0.03)),
                                   "eval_wps": 40000.0 * (1 + rng.normal(0, 0.03)), "epochs_run": 5, "wall_s": 6.0}
                        if variant != "none":
                            squared_mc = squared * 0.97 * rng.normal(1, 0.01, SEGMENTS)
                            losses["mc"] = (squared_mc, ones)
                            metrics["test_rmse_mc"] = math.sqrt(squared_mc.mean())
                            metrics["mc_eval_wps"] = 12000.0
                        store.finish_trial(tid, "done", metrics, losses)
                if cell == "gru" and seeds >= 2:
                    running = register(_config("sentiment", "variational-tied", 3, cell=cell, mc_samples=3,
                                               p_embedding=0.5, p_input=0.5, p_recurrent=0.5, p_output=0.5))
                    store.mark_running(running, run_id)
                    store.record_epoch(running, 1, {"lr": 0.001, "train_loss": 0.5, "test_rmse": 0.22, "train_wps": 9000.0, "wall_s": 1.0})
                    register(_config("sentiment", "none", 3, cell=cell))  # pending
    finally:
        store.close()
    return out_dir
