"""The `dropbench` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .allocator import keep_freed_memory
from .errors import DropbenchError

# Population training pays off where one model leaves the device idle (a GPU at the paper's sizes).
DEFAULT_POPULATION_GPU = 8


def _registry(plugins):
    from dropbench.variants import load_registry
    return load_registry(plugins or ())


def cmd_run(args) -> int:
    from .config import expand, load_suite, parse_overrides
    from .data import resolve_data_dir
    from dropbench.reports import write_report

    from .run import run_trials
    from .train import resolve_device

    registry = _registry(args.plugin)
    suite = load_suite(args.suite)
    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
    if args.seeds is not None and args.seeds < 1:
        raise DropbenchError(f"--seeds must be at least 1, got {args.seeds}")
    from_plugins = [name for name, variant in registry.items() if variant.source.startswith("plugin")]
    trials = expand(suite, registry, seeds=args.seeds, only=only, overrides=parse_overrides(args.set or []), device=args.device,
                    extra_variants=from_plugins)
    for trial in trials:  # the resolved config names the device that actually runs it
        trial.config["device"] = resolve_device(trial.config["device"]).type
    if args.dry_run:
        if args.json:
            print(json.dumps([{"suite": t.suite, "trial_id": t.id, "grid_cell": t.grid_cell, "config": t.config} for t in trials], indent=2))
        else:
            for t in trials:
                print(t.id, t.config["task"], t.config["variant"], f"seed={t.config['seed']}", *(f"{k}={v}" for k, v in t.grid_cell.items()))
            print(f"{len(trials)} trials")
        return 0
    out_dir = Path(args.out or f"results/{suite.name}")
    data_dir = resolve_data_dir(args.data_dir)
    if args.population is not None and args.population < 1:
        raise DropbenchError(f"--population must be at least 1, got {args.population}")
    population = args.population or (DEFAULT_POPULATION_GPU if any(t.config["device"] == "cuda" for t in trials) else 1)
    if any(t.config["device"] == "cpu" for t in trials):
        from . import lstm_cpu

        lstm_cpu.available()  # compiled before the first trial's clock starts, not inside its words/s
    summary = run_trials(trials, registry, out_dir, data_dir, sys.argv, show_progress=not args.no_progress, population_size=population)
    print(f"{len(trials)} trials: " + ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items())))
    print(f"results: {out_dir / 'results.sqlite'}, {out_dir / 'results.csv'}, {out_dir / 'curves.csv'}")
    print(f"report:  {write_report(out_dir, registry)}")
    return 0 if summary.ok else 1


def cmd_report(args) -> int:
    from dropbench.reports import write_report

    print(f"report: {write_report(Path(args.dir), registry=_registry(args.plugin))}")
    return 0


def cmd_variants(args) -> int:
    registry = _registry(args.plugin)
    rows = [{"name": v.name, "description": v.description, "source": v.source} for v in registry.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['description']}  [{r['source']}]")
    return 0


def cmd_suites(args) -> int:
    from .config import expand, load_suite, suite_names
    from .cost import GPU_FLOPS, GPU_RATE_SOURCE, measure_cpu_flops, trial_cost

    registry = _registry(args.plugin)
    cpu_flops = measure_cpu_flops()
    rows = []
    for name in suite_names():
        suite = load_suite(name)
        trials = expand(suite, registry)
        token_steps = flops = 0.0
        for trial in trials:
            steps, operations = trial_cost(trial.config)
            token_steps, flops = token_steps + steps, flops + operations
        rows.append({"name": suite.name, "description": suite.description, "trials": len(trials), "token_steps": token_steps,
                     "flops": flops, "cpu_hours": flops / cpu_flops / 3600, "gpu_hours": flops / GPU_FLOPS / 3600})
    rates = {"cpu_flops_measured": cpu_flops, "gpu_flops": GPU_FLOPS, "gpu_rate_source": GPU_RATE_SOURCE}
    if args.json:
        print(json.dumps({"suites": rows, "rates": rates}, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'suite':<{width}}  trials  token-steps  CPU hours  GPU hours  description")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['trials']:>6}  {r['token_steps']:>11.3g}  {r['cpu_hours']:>9.2f}  {r['gpu_hours']:>9.3f}  {r['description']}")
    print(f"CPU: {cpu_flops / 1e9:.0f} GFLOP/s measured now (2x200 LSTM training); GPU: {GPU_FLOPS / 1e12:.1f} TFLOP/s {GPU_RATE_SOURCE}")
    return 0


def cmd_bench(args) -> int:
    from tqdm import tqdm

    from .bench import BASELINE, parse_size, run_bench
    from .train import resolve_device

    registry = _registry(args.plugin)
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        from dropbench.variants import get_variant
        registry = {name: get_variant(name, registry) for name in wanted}
    device = resolve_device(args.device)
    hidden, layers = parse_size(args.size)
    with tqdm(total=args.rounds * (len(registry) + 1), desc=f"bench {hidden}x{layers} on {device.type}", unit="model", disable=args.no_progress) as bar:
        result = run_bench(registry, device, hidden, layers, rounds=args.rounds, progress=lambda: bar.update(1))
    print(f"{result['device_name']}, torch {result['torch']}, {result['threads']} threads; LSTM {hidden}x{layers}, batch {result['batch_size']},"
          f" bptt {result['bptt']}; matmul peak {result['matmul_peak_flops'] / 1e9:.0f} GFLOP/s; {result['flops_per_token_forward'] / 1e6:.1f} MFLOP/token forward")
    print(f"{'variant':<20} {'train w/s':>10} {'x base':>7} {'quartiles':>11} {'eval w/s':>10} {'x base':>7} {'% peak':>7}"
          f" {'MC samples*w/s':>15} {'MC cost (passes)':>17}")
    for row in sorted(result["rows"], key=lambda r: r["variant"] != BASELINE):
        mc = f"{row['mc_samples_wps']:>15.0f} {row['mc_cost_in_deterministic_passes']:>17.1f}" if "mc_samples_wps" in row else f"{'-':>15} {'-':>17}"
        low, high = row["train_ratio_quartiles"]
        print(f"{row['variant']:<20} {row['train_wps']:>10.0f} {row['train_ratio_to_baseline']:>7.2f} {f'{low:.2f}-{high:.2f}':>11}"
              f" {row['eval_wps']:>10.0f} {row['eval_ratio_to_baseline']:>7.2f} {100 * row['train_flops_fraction_of_peak']:>6.0f}% {mc}")
    print(f"x base: median over {result['rounds']} interleaved rounds of the baseline's step time / the variant's; quartiles of those ratios")
    print(f"MC: {result['mc_samples']} samples over {result['batch_size']} streams; cost = time of MC / time of one deterministic pass")
    for row in result["population"]:
        print(f"population of {row['models']} {row['variant']}: {row['train_wps']:.0f} train w/s in all, {row['ratio_to_alone']:.2f}x one model alone")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


def cmd_data(args) -> int:
    from .data import DEFAULT_CACHE, resolve_data_dir, verify_data
    from .fetch import fetch

    if args.data_command == "fetch":
        dest = Path(args.data_dir) if args.data_dir else DEFAULT_CACHE
        for path in fetch(args.which, dest, mirror=args.mirror):
            print(f"ok  {path}")
        return 0
    data_dir = resolve_data_dir(args.data_dir)
    results = verify_data(data_dir)
    for name, ok, detail in results:
        print(f"{'ok ' if ok else 'BAD'} {name}: {detail}")
    bad = [name for name, ok, _ in results if not ok]
    if bad:
        print(f"{len(bad)} of {len(results)} files missing or wrong in {data_dir}; run `dropbench data fetch all`", file=sys.stderr)
        return 1
    print(f"all {len(results)} files verified in {data_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dropbench", description="Benchmark and compare dropout variants for recurrent networks.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a suite of trials and store the results")
    run.add_argument("suite", nargs="?", default="quick", help="built-in suite name or a .toml file (default: quick)")
    run.add_argument("--out", help="output folder (default: results/SUITE)")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], help="device for every trial (default: the suite's, else auto)")
    run.add_argument("--seeds", type=int, help="run seeds 1..N instead of the suite's seeds")
    run.add_argument("--only", help="comma-separated variant names to run")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key on every trial (repeatable)")
    run.add_argument("--plugin", action="append", metavar="FILE", help="load variants from a Python file and add them to every experiment (repeatable)")
    run.add_argument("--data-dir", help="data folder (default: $DROPBENCH_DATA, else ~/.cache/dropbench)")
    run.add_argument("--dry-run", action="store_true", help="list the resolved trials without running them")
    run.add_argument("--json", action="store_true", help="with --dry-run: print every trial's full config as JSON")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--population", type=int, metavar="S",
                     help=f"train up to S language-model trials of one shape as one population (default: {DEFAULT_POPULATION_GPU} on CUDA, 1 on a CPU)")
    run.set_defaults(func=cmd_run)

    report = commands.add_parser("report", help="write report.html, summary.csv and significance.csv for a results folder")
    report.add_argument("dir", help="the --out folder of a run")
    report.add_argument("--plugin", action="append", metavar="FILE", help="plugin files, for their variants' descriptions")
    report.set_defaults(func=cmd_report)

    variants = commands.add_parser("variants", help="list the registered dropout variants")
    variants.add_argument("--json", action="store_true")
    variants.add_argument("--plugin", action="append", metavar="FILE")
    variants.set_defaults(func=cmd_variants)

    suites = commands.add_parser("suites", help="list the built-in suites with trial counts and estimated cost")
    suites.add_argument("--json", action="store_true")
    suites.add_argument("--plugin", action="append", metavar="FILE")
    suites.set_defaults(func=cmd_suites)

    bench = commands.add_parser("bench", help="measure train/eval words per second of every variant beside torch.nn.LSTM")
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bench.add_argument("--size", default="small", help="small, medium, large or HxL, e.g. 256x2 (default: small)")
    bench.add_argument("--rounds", type=int, default=20, help="interleaved rounds of one step per model; ratios are per-round medians (default 20)")
    bench.add_argument("--only", help="comma-separated variants to measure (default: all registered)")
    bench.add_argument("--plugin", action="append", metavar="FILE")
    bench.add_argument("--json", metavar="FILE", help="also write the measurements as JSON")
    bench.add_argument("--no-progress", action="store_true")
    bench.set_defaults(func=cmd_bench)

    data = commands.add_parser("data", help="fetch or verify the data sets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    fetch = data_commands.add_parser("fetch", help="download the data sets into the cache (or --data-dir) and verify them")
    fetch.add_argument("which", nargs="?", default="all", choices=["ptb", "sentiment", "all"])
    fetch.add_argument("--mirror", help="base URL of a mirror laid out like a data folder")
    fetch.add_argument("--data-dir", help="where to put the files (default: ~/.cache/dropbench)")
    verify = data_commands.add_parser("verify", help="check the SHA-256 of every data file")
    verify.add_argument("--data-dir", help="data folder (default: $DROPBENCH_DATA, else ~/.cache/dropbench)")
    data.set_defaults(func=cmd_data)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        return args.func(args)
    except DropbenchError as exc:
        print(f"dropbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dropbench: interrupted; finished epochs and trials are saved, rerun the same command to resume", file=sys.stderr)
        return 130


def console():
    sys.exit(main())


if __name__ == "__main__":
    console()
