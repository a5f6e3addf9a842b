"""Compares the fast CPU recipe (recipes/fast_cpu.sh) with plain cross-entropy on a generated sample set.

    python benchmark_recipe.py                       # 100 people, 5 folds, the recipe as written (hours on 2 cores)
    python benchmark_recipe.py --people 40 --kfold 2 --epochs 6 --resize 64 48 --workers 0     # ~5 min on 2 cores

Generates the sample set (generate_sample.generate), runs the recipe script (preprocess + train --fold all), then
trains the baseline on the same folds -- the same network, input size, epochs, batch size and learning rate, with
cross-entropy and nothing else -- and prints both out-of-fold macro F1s (over every training image) side by side.
The shared settings default to the recipe's own; any flag given here applies to both runs.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cli
from generate_sample import generate

ROOT = Path(__file__).resolve().parent
RECIPE = ROOT / "recipes" / "fast_cpu.sh"
METRICS = ("f1", "accuracy", "mask_f1", "gender_f1", "age_f1")


def get_args_parser():
    parser = cli.new_parser("Fast CPU recipe vs plain cross-entropy, out-of-fold macro F1 on a generated sample set.")
    data = parser.add_argument_group("data")
    cli.add_flag(data, "out", default=None, help="working folder for data and runs (default: a temporary one)")
    cli.add_flag(data, "people", type=cli.positive_int, default=100, help="generated training people")
    cli.add_flag(data, "kfold", type=cli.int_at_least(2), default=5, help="folds (one model per fold)")
    cli.add_flag(data, "seed", type=cli.non_negative_int, default=0, help="seed of the generated people")
    shared = parser.add_argument_group("shared by both runs (defaults: recipes/fast_cpu.sh's)")
    cli.add_flag(shared, "model", default="resnet18", help="network")
    cli.add_flag(shared, "resize", type=cli.positive_int, nargs=2, default=[128, 96], metavar=("H", "W"),
                 help="input size")
    cli.add_flag(shared, "epochs", type=cli.positive_int, default=8, help="epochs per fold")
    cli.add_flag(shared, "batch_size", type=cli.positive_int, default=32, help="training batch size")
    cli.add_flag(shared, "lr", type=cli.positive_float, default=3e-3, help="learning rate")
    cli.add_flag(shared, "workers", type=cli.non_negative_int, default=None,
                 help="loader processes (default: train.py's)")
    return parser


def shared_flags(args):
    flags = ["--model", args.model, "--resize", *map(str, args.resize), "--epochs", str(args.epochs),
             "--batch_size", str(args.batch_size), "--lr", str(args.lr)]
    return flags + (["--workers", str(args.workers)] if args.workers is not None else [])


def run(name, command, env, log):
    """Runs a command with its output in log; on failure prints the log's tail and stops with one line."""
    print(f"running the {name} (output in {log})", flush=True)
    with open(log, "w") as output:
        result = subprocess.run(list(map(str, command)), env=env, stdout=output, stderr=subprocess.STDOUT)
    if result.returncode:
        lines = log.read_text().replace("\r", "\n").strip().splitlines()
        print("\n".join(lines[-20:]), file=sys.stderr)
        raise cli.UserError(f"the {name} failed ({lines[-1] if lines else 'no output'})")


def benchmark(work, args):
    """(recipe metrics, baseline metrics): each run's oof_metrics.json."""
    if (work / "model").exists():
        raise cli.UserError(f"{work / 'model'} exists: pass an empty or new --out")
    generate(work / "data", people=args.people, eval_people=0, seed=args.seed, overwrite=True)
    env = {**os.environ, "SM_CHANNEL_TRAIN": str(work / "data/train/images"), "SM_MODEL_DIR": str(work / "model"),
           "PYTHON": sys.executable, "KFOLD": str(args.kfold)}
    run("fast CPU recipe", ["bash", RECIPE, *shared_flags(args)], env, work / "recipe.log")
    run("plain cross-entropy baseline", [sys.executable, ROOT / "train.py", "--name", "baseline", "--fold", "all",
                                         "--criterion", "cross_entropy", *shared_flags(args)], env, work / "baseline.log")
    return [json.loads((work / "model" / name / "oof_metrics.json").read_text()) for name in ("fast_cpu", "baseline")]


def main():
    args = get_args_parser().parse_args()
    with tempfile.TemporaryDirectory(prefix="benchmark_recipe.") as temporary:
        work = Path(args.out or temporary)
        work.mkdir(parents=True, exist_ok=True)
        recipe, baseline = benchmark(work, args)
    print(f"\n{args.people} people, {args.kfold} folds, {args.model} {args.resize[0]}x{args.resize[1]}, "
          f"{args.epochs} epochs; out-of-fold metrics over every training image")
    print(f"{'':<22}" + "".join(f"{name:>10}" for name in METRICS))
    for name, metrics in (("fast CPU recipe", recipe), ("plain cross-entropy", baseline)):
        print(f"{name:<22}" + "".join(f"{metrics[metric]:>10.4f}" for metric in METRICS))


if __name__ == "__main__":
    cli.run(main)
