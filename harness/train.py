"""One trial, top to bottom: build the model a config describes, train it epoch by epoch with its
variant's masks, evaluate, and hand back metrics. `run_trial(config, variant, ...)` is a pure
function of the resolved config (and the data), so any executor can run it.

After every epoch the full training state is checkpointed atomically, so a killed trial resumes
from its last finished epoch and ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from dropbench.variants import Variant

from .data import load_ptb, load_sentiment
from .errors import DropbenchError
from .evaluate import batchify, lm_target_logprobs, per_sentence, sentiment_predictions
from .models import LanguageModel, SentimentRegressor
from .population import train_epoch_together
from .precision import autocast, matmul_precision


# Rows per evaluation forward pass of the sentiment model (MC copies included).
EVAL_ROWS = 512


@dataclass
class TrialOutcome:
    status: str  # 'done' or 'diverged'
    metrics: dict
    sample_losses: dict = field(default_factory=dict)  # kind -> (losses (N,), counts (N,))
    error: Optional[str] = None


@dataclass
class Progress:
    """Hooks the runner passes in: a per-epoch callback (curves to the store) and a per-batch tick."""
    on_epoch: Callable[[int, dict], None] = lambda epoch, values: None
    start: Callable[[int], None] = lambda total_batches: None
    tick: Callable[[], None] = lambda: None
    note: Callable[[str], None] = lambda message: None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DropbenchError("--device cuda asked for, but this PyTorch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


class Clock:
    """Wall time of a section, synchronising CUDA so that queued kernels are counted."""

    def __init__(self, device: torch.device):
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def _limit(tokens: torch.Tensor, count: int) -> torch.Tensor:
    return tokens[:count] if count else tokens


def _detach(state):
    return [tuple(s.detach() for s in layer) for layer in state]


def _make_optimizer(model, config):
    if config["optimizer"] == "adam":
        # weight_decay is the L2 coefficient λ of the authors' Keras regularizers: the loss gains
        # λ Σ p², so the gradient gains 2 λ p.
        return torch.optim.Adam(model.parameters(), lr=config["lr"], weight_decay=2 * config["weight_decay"])
    return torch.optim.SGD(model.parameters(), lr=config["lr"])


def _decay_weights(model, config):
    """Decoupled weight decay p -= wd * p after each SGD step, not scaled by lr (authors' LM code)."""
    if config["optimizer"] == "sgd" and config["weight_decay"]:
        with torch.no_grad():
            for param in model.parameters():
                param.mul_(1.0 - config["weight_decay"])


def _save_checkpoint(path: Optional[Path], model, optimizer, run: dict, device, generator: Optional[torch.Generator] = None):
    """Everything needed to continue after this epoch, written atomically (temporary file + rename)."""
    run["wall_s"] = _wall_seconds(run)
    if path is None:
        return
    none = torch.empty(0, dtype=torch.uint8)
    rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else none,
           "masks": generator.get_state() if generator is not None else none}
    temporary = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "run": run, "rng": rng}, temporary)
    os.replace(temporary, path)


def _resume(path: Optional[Path], model, optimizer, run: dict, device, progress, generator: Optional[torch.Generator] = None) -> dict:
    """Restore model, optimizer and RNG from the last epoch's checkpoint; returns its `run` state,
    or `run` unchanged when there is none. A corrupt or truncated checkpoint is removed and the
    trial starts afresh; loading is `weights_only`, so a checkpoint can never run code."""
    if path is None or not path.exists():
        return run
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as exc:
        progress.note(f"checkpoint {path.name} is corrupt or truncated ({type(exc).__name__}); starting this trial afresh")
        path.unlink()
        return run
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"]["cpu"])
    if device.type == "cuda" and saved["rng"]["cuda"].numel():
        torch.cuda.set_rng_state(saved["rng"]["cuda"], device)
    if generator is not None:
        generator.set_state(saved["rng"]["masks"])
    return {**saved["run"], "wall_before": saved["run"]["wall_s"], "session_start": run["session_start"]}


def _wall_seconds(run: dict) -> float:
    """Wall time of the trial so far, across restarts."""
    return run["wall_before"] + time.perf_counter() - run["session_start"]


def run_trial(config: dict, variant: Variant, data_dir: Path, checkpoint: Optional[Path] = None, progress: Optional[Progress] = None) -> TrialOutcome:
    device = resolve_device(config["device"])
    torch.manual_seed(config["seed"])
    progress = progress or Progress()
    with matmul_precision(config["precision"]):
        if config["task"] == "ptb":
            corpus = load_ptb(data_dir)
            trial = LanguageModelTrial(config, variant, corpus, device, checkpoint, progress)
            return train_language_models([trial], corpus, progress)[0]
        return train_sentiment(config, variant, data_dir, device, checkpoint, progress)


def run_population(configs: list[dict], variants: list[Variant], data_dir: Path, checkpoints: list[Optional[Path]],
                   progresses: list[Progress], bar: Progress) -> list[TrialOutcome]:
    """Language-model trials of one shape (`population.population_key`) trained side by side as one
    population; each ends with what it would have reached alone, up to float rounding."""
    device = resolve_device(configs[0]["device"])
    corpus = load_ptb(data_dir)
    trials = []
    for config, variant, checkpoint, progress in zip(configs, variants, checkpoints, progresses):
        torch.manual_seed(config["seed"])  # the member's initial weights, as run_trial draws them
        trials.append(LanguageModelTrial(config, variant, corpus, device, checkpoint, progress))
    with matmul_precision(configs[0]["precision"]):
        return train_language_models(trials, corpus, bar)


class LanguageModelTrial:
    """One language-model trial across its epochs: the model, its optimizer, the generator its
    training masks come from, and `run`, everything a checkpoint carries."""

    def __init__(self, config: dict, variant: Variant, corpus, device: torch.device, checkpoint: Optional[Path], progress: Progress):
        self.config, self.variant, self.device, self.checkpoint, self.progress = config, variant, device, checkpoint, progress
        self.model = LanguageModel(len(corpus.vocab), config["cell"], config["hidden_size"], config["num_layers"], variant,
                                   embedding_size=config["embedding_size"] or None).to(device)
        if config["init_scale"]:
            self.model.init_uniform(config["init_scale"])
        self.optimizer = _make_optimizer(self.model, config)
        # the trial's own mask stream: the same draws alone or in a population
        self.generator = torch.Generator(device).manual_seed(config["seed"])
        self.valid = _limit(corpus.valid, config["valid_tokens"])
        self.test = _limit(corpus.test, config["test_tokens"])
        self.outcome: Optional[TrialOutcome] = None
        run = {"epoch": 0, "lr": config["lr"], "best_val": math.inf, "best_weights": None, "bad_epochs": 0,
               "train_seconds": 0.0, "train_tokens": 0, "val_seconds": 0.0, "val_tokens": 0, "last_val": None,
               "wall_before": 0.0, "session_start": time.perf_counter()}
        self.run = _resume(checkpoint, self.model, self.optimizer, run, device, progress, self.generator)

    def wants_epoch(self) -> bool:
        """Whether another epoch runs: epochs left and early stopping has not fired. Decided before
        the epoch, not after the checkpoint, so that a resumed trial stops too."""
        patience = self.config["early_stopping_patience"]
        return self.outcome is None and self.run["epoch"] < self.config["epochs"] and not (patience and self.run["bad_epochs"] >= patience)

    def end_epoch(self, loss_sum: float, steps: int, seconds: float):
        """Validation, learning-rate schedule, early stopping and the checkpoint after an epoch of
        `steps` time steps with summed per-step loss `loss_sum`, trained in `seconds`."""
        config, run, clock = self.config, self.run, Clock(self.device)
        epoch = run["epoch"] + 1
        run["train_seconds"] += seconds
        run["train_tokens"] += steps * config["batch_size"]
        train_loss = loss_sum / steps
        started = clock.now()
        with autocast(config, self.device):
            logprob, _ = lm_target_logprobs(self.model, self.valid, config["eval_batch_size"], config["bptt"], self.device)
        run["val_seconds"] += clock.now() - started
        run["val_tokens"] += logprob.size
        val_ppl = float(np.exp(-logprob.mean()))
        if not (math.isfinite(train_loss) and math.isfinite(val_ppl)):
            self.outcome = _diverged(epoch)
            return
        run["last_val"] = val_ppl
        self.progress.on_epoch(epoch, {"lr": run["lr"], "train_loss": train_loss, "train_ppl": math.exp(min(train_loss, 700)),
                                       "val_ppl": val_ppl, "train_wps": run["train_tokens"] / run["train_seconds"], "wall_s": run["train_seconds"]})
        if val_ppl < run["best_val"]:
            run["best_val"], run["bad_epochs"] = val_ppl, 0
            if config["early_stopping_patience"]:
                run["best_weights"] = copy.deepcopy(self.model.state_dict())
        else:
            run["bad_epochs"] += 1
        if epoch > config["lr_decay_start"]:
            run["lr"] /= config["lr_decay"]
        run["epoch"] = epoch
        _save_checkpoint(self.checkpoint, self.model, self.optimizer, run, self.device, self.generator)

    def finish(self, eos_id: int) -> TrialOutcome:
        """Test perplexity, deterministic and MC, of the final (or, with early stopping, best) model."""
        if self.outcome is not None:
            return self.outcome
        config, run, model, device = self.config, self.run, self.model, self.device
        if run["best_weights"] is not None:
            model.load_state_dict(run["best_weights"])
        metrics = {"epochs_run": run["epoch"], "val_ppl": run["best_val"] if config["early_stopping_patience"] else run["last_val"],
                   "train_wps": run["train_tokens"] / max(run["train_seconds"], 1e-9),
                   "eval_wps": run["val_tokens"] / max(run["val_seconds"], 1e-9)}
        with autocast(config, device):
            logprob, positions = lm_target_logprobs(model, self.test, config["test_batch_size"], config["bptt"], device)
        metrics["test_ppl"] = float(np.exp(-logprob.mean()))
        losses = {"det": per_sentence(logprob, positions, self.test, eos_id)}
        if config["mc_samples"]:
            clock = Clock(device)
            started = clock.now()
            generator = torch.Generator(device).manual_seed(config["seed"])
            with autocast(config, device):
                logprob, positions = lm_target_logprobs(model, self.test, config["test_batch_size"], config["bptt"], device, config,
                                                        config["mc_samples"], generator=generator)
            metrics["mc_eval_wps"] = logprob.size * config["mc_samples"] / (clock.now() - started)
            metrics["test_ppl_mc"] = float(np.exp(-logprob.mean()))
            losses["mc"] = per_sentence(logprob, positions, self.test, eos_id)
        metrics["wall_s"] = _wall_seconds(run)
        return TrialOutcome("done", metrics, losses)


def train_language_models(trials: list[LanguageModelTrial], corpus, bar: Progress) -> list[TrialOutcome]:
    """Epoch by epoch until every trial is done. The trials furthest behind (after a resume, some
    may be an epoch ahead) train their next epoch together: alone through the model's own
    forward, several as one population. Then each validates and checkpoints on its own."""
    config, device = trials[0].config, trials[0].device
    train = batchify(_limit(corpus.train, config["train_tokens"]), config["batch_size"]).to(device)
    chunks_per_epoch = len(range(0, train.shape[0] - 1, config["bptt"]))
    bar.start(chunks_per_epoch * max(t.config["epochs"] - t.run["epoch"] for t in trials))
    while active := [t for t in trials if t.wants_epoch()]:
        epoch = min(t.run["epoch"] for t in active)
        group = [t for t in active if t.run["epoch"] == epoch]
        clock = Clock(device)
        started = clock.now()
        if len(group) == 1:
            results = [_train_epoch_alone(group[0], train, bar)]
        else:
            results = train_epoch_together(group, train, bar)
        seconds = clock.now() - started
        for trial, (loss_sum, steps) in zip(group, results):
            trial.end_epoch(loss_sum, steps, seconds)
    return [trial.finish(corpus.eos_id) for trial in trials]


def _train_epoch_alone(trial: LanguageModelTrial, train: torch.Tensor, bar: Progress) -> tuple[float, int]:
    """One epoch of truncated BPTT over `train` (N, B). Returns (summed per-step loss, steps)."""
    config, model, optimizer, device = trial.config, trial.model, trial.optimizer, trial.device
    bptt, batch = config["bptt"], config["batch_size"]
    for group in optimizer.param_groups:
        group["lr"] = trial.run["lr"]
    model.train()
    state = model.initial_state(batch, device)  # reset each epoch, carried across chunks
    loss_sum, steps = torch.zeros((), device=device), 0
    for start in range(0, train.shape[0] - 1, bptt):
        x = train[start : min(start + bptt, train.shape[0] - 1)]
        y = train[start + 1 : start + 1 + x.shape[0]]
        masks = model.draw_masks(config, x, device, generator=trial.generator)
        with autocast(config, device):
            logits, state = model(x, _detach(state), masks)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        (loss * x.shape[0]).backward()  # mean NLL per step, summed over the chunk's steps (paper §2)
        if config["max_grad_norm"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config["max_grad_norm"])
        optimizer.step()
        _decay_weights(model, config)
        loss_sum += loss.detach() * x.shape[0]
        steps += x.shape[0]
        bar.tick()
    return loss_sum.item(), steps


def _diverged(epoch: int) -> TrialOutcome:
    return TrialOutcome("diverged", {"epochs_run": epoch}, error=f"loss became NaN or inf in epoch {epoch}")


def _rmse(predictions_std: np.ndarray, data) -> tuple[float, np.ndarray]:
    """RMSE on the raw rating scale from standardised predictions; also the per-segment squared errors."""
    squared = (predictions_std * data.std + data.mean - data.test_y_raw.double().numpy()) ** 2
    return float(np.sqrt(squared.mean())), squared


def train_sentiment(config, variant, data_dir, device, checkpoint, progress) -> TrialOutcome:
    data = load_sentiment(data_dir)
    model = SentimentRegressor(data.vocab_size, config["cell"], config["hidden_size"], variant,
                               embedding_size=config["embedding_size"] or config["hidden_size"]).to(device)
    if config["init_scale"]:
        model.init_uniform(config["init_scale"])
    optimizer = _make_optimizer(model, config)
    train_x, train_y = data.train_x, data.train_y
    if config["train_segments"]:
        train_x, train_y = train_x[: config["train_segments"]], train_y[: config["train_segments"]]
    if config["test_segments"]:
        data = dataclasses.replace(data, test_x=data.test_x[: config["test_segments"]], test_y_raw=data.test_y_raw[: config["test_segments"]])
    test_x = data.test_x
    batch, clock = config["batch_size"], Clock(device)

    run = {"epoch": 0, "lr": config["lr"], "train_seconds": 0.0, "train_tokens": 0, "wall_before": 0.0, "session_start": time.perf_counter()}
    run = _resume(checkpoint, model, optimizer, run, device, progress)

    batches_per_epoch = math.ceil(train_x.shape[0] / batch)
    progress.start(batches_per_epoch * (config["epochs"] - run["epoch"]))
    for epoch in range(run["epoch"] + 1, config["epochs"] + 1):
        for group in optimizer.param_groups:
            group["lr"] = run["lr"]
        model.train()
        order = torch.randperm(train_x.shape[0])
        loss_sum, seen = torch.zeros((), device=device), 0
        started = clock.now()
        for first in range(0, train_x.shape[0], batch):
            rows = order[first : first + batch]
            x, y = train_x[rows].t().to(device), train_y[rows].to(device)
            masks = model.draw_masks(config, x, device)
            with autocast(config, device):
                loss = F.mse_loss(model(x, masks), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config["max_grad_norm"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config["max_grad_norm"])
            optimizer.step()
            _decay_weights(model, config)
            loss_sum += loss.detach() * rows.numel()
            seen += rows.numel()
            progress.tick()
        run["train_seconds"] += clock.now() - started
        run["train_tokens"] += seen * train_x.shape[1]
        train_loss = loss_sum.item() / seen
        if not math.isfinite(train_loss):
            return _diverged(epoch)
        with autocast(config, device):
            test_rmse, _ = _rmse(sentiment_predictions(model, test_x, EVAL_ROWS, device), data)
        test_rmse_mc = None
        if config["mc_samples_per_epoch"]:
            # its masks come from a forked RNG: monitoring must not change the training that follows
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast(config, device):
                test_rmse_mc, _ = _rmse(sentiment_predictions(model, test_x, EVAL_ROWS, device, config, config["mc_samples_per_epoch"]), data)
        if epoch > config["lr_decay_start"]:
            run["lr"] /= config["lr_decay"]
        run["epoch"] = epoch
        progress.on_epoch(epoch, {"lr": optimizer.param_groups[0]["lr"], "train_loss": train_loss, "test_rmse": test_rmse,
                                  "test_rmse_mc": test_rmse_mc, "train_wps": run["train_tokens"] / run["train_seconds"], "wall_s": run["train_seconds"]})
        _save_checkpoint(checkpoint, model, optimizer, run, device)

    started = clock.now()
    with autocast(config, device):
        predictions = sentiment_predictions(model, test_x, EVAL_ROWS, device)
    eval_seconds = clock.now() - started
    test_rmse, squared = _rmse(predictions, data)
    metrics = {"epochs_run": run["epoch"], "test_rmse": test_rmse, "train_wps": run["train_tokens"] / max(run["train_seconds"], 1e-9),
               "eval_wps": test_x.numel() / eval_seconds}
    ones = np.ones(squared.shape[0], dtype=np.int64)
    losses = {"det": (squared, ones)}
    if config["mc_samples"]:
        started = clock.now()
        with autocast(config, device):
            predictions = sentiment_predictions(model, test_x, EVAL_ROWS, device, config, config["mc_samples"])
        metrics["mc_eval_wps"] = test_x.numel() * config["mc_samples"] / (clock.now() - started)
        metrics["test_rmse_mc"], squared = _rmse(predictions, data)
        losses["mc"] = (squared, ones)
    metrics["wall_s"] = _wall_seconds(run)
    return TrialOutcome("done", metrics, losses)

