"""Compares training recipes over several seeds, on a generated sample set or on a set of class folders with
held-out people: the face crop against none by default.

    python benchmark_recipe.py                               # train.py's defaults with and without the face crop
    python benchmark_recipe.py --variant "recipe=" --variant "plain=--head single --criterion cross_entropy"
    python benchmark_recipe.py --people 30 --eval_people 10 --epochs 2 --resize 64 48 --seeds 0   # a smoke test
    python benchmark_recipe.py --data_dir data/real3 --resize 128 128 \
        --variant "scratch=--model torchvision:mobilenet_v2" \
        --variant "imagenet=--model torchvision:mobilenet_v2 --pretrained_path ~/.cache/maskcls/weights/mobilenet_v2.pth"
    nice python benchmark_recipe.py --adaptation --out bench/adaptation   # inference's adjustments (adaptation.py)
    nice python benchmark_recipe.py --adaptation --fold_all --methods argmax "calibrated + F1 decision" --out bench/kfold

Without --data_dir it generates the sample set once (training people and a held-out eval set with more old people
and more men, as the real one); with it, it takes DIR/train and DIR/eval, class folders of other people each, whose
file names start with the person (`0007_...`: mask_faces.py's and generate_sample.py --kind's sets). It
preprocesses the training photos once (folds, face boxes; a person in one fold), then for every variant and every
seed of `--seeds` trains train.py on fold 0 with the variant's flags after the shared ones (the same network, input
size, epochs, data and folds), predicts the eval set with inference.py and scores it. Prints, per variant, the mean
and spread (standard deviation over seeds) of the eval set's macro F1 (and mask F1, or accuracy) and of the
validation fold's, then every run; results.json in --out keeps them all. A variant is `NAME=FLAGS`; flags given to
train.py win over the shared ones. A run already in --out (its best.pth) is not trained again, only predicted and
scored: a second call with the same --out scores every run by the same inference. A variant with `--fold all` trains
five fold runs, predicted together (their soft vote), its validation scores being the out-of-fold ones.
`--adaptation` measures inference's adjustments instead (adaptation.py): train.py's defaults (and the shared flags)
with every seed, each run predicted by inference.py with every method of ADAPTATION_METHODS (argmax, calibrated,
+ EM, + BBSE, + the F1 decision) on two eval sets of `--eval_people`: one drawn with another mix than training
(`--shifted_mix`: shares of 60+ and of men) and one drawn like training. Prints the macro F1 and the expected
calibration error (15 bins) of each method on each set, mean and spread over seeds, then the share of answers
that are 60+ and male. A data set or run already in --out is reused, so a second call re-measures the methods
without training again. `--fold_all` trains each seed with `--fold all` instead (five fold runs, predicted together
and calibrated on all their validation folds); `--methods` measures some of the methods only.
"""
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import cli
from adaptation import expected_calibration_error
from dataset import COMPETITION, folder_scheme
from evaluation import read_truth, score
from generate_sample import MALE_SHARE, OLD_SHARE, generate
from submissions import read_probabilities

ROOT = Path(__file__).resolve().parent
DEFAULT_VARIANTS = ["face crop=", "no crop=--crop none"]
COLUMNS = {"competition": ("eval_f1", "eval_mask_f1", "eval_gender_f1", "eval_age_f1", "val_f1"),
           "folders": ("eval_f1", "eval_accuracy", "val_f1", "val_accuracy")}
PERSON_OF_FILE = r"^(\d+)_"  # a class-folder set's file names start with the person
ADAPTATION_METHODS = {  # inference.py's flags of each adjustment measured by --adaptation
    "argmax": ["--no-calibrate", "--adapt_prior", "none", "--decision", "argmax"],
    "calibrated": ["--calibrate", "--adapt_prior", "none", "--decision", "argmax"],
    "calibrated + EM": ["--calibrate", "--adapt_prior", "em", "--decision", "argmax"],
    "calibrated + BBSE": ["--calibrate", "--adapt_prior", "bbse", "--decision", "argmax"],
    "calibrated + F1 decision": ["--calibrate", "--adapt_prior", "none", "--decision", "f1"],
}  # the F1 decision answers from the calibrated probabilities whatever --adapt_prior: + EM + F1 answers as + F1
EVAL_SETS = ("shifted", "like training")



def get_args_parser():
    parser = cli.new_parser("Compare training recipes (default: face crop vs none) on a generated sample set.")
    data = parser.add_argument_group("data")
    cli.add_flag(data, "out", default=None, help="working folder for data, runs and results.json "
                                                 "(default: a temporary one)")
    cli.add_flag(data, "people", type=cli.positive_int, default=100, help="generated training people (7 photos each)")
    cli.add_flag(data, "eval_people", type=cli.positive_int, default=60, help="generated held-out eval people")
    cli.add_flag(data, "data_seed", type=cli.non_negative_int, default=0, help="seed of the generated people")
    cli.add_flag(data, "data_dir", default=None,
                 help="a set of class folders to use instead: DIR/train and DIR/eval, other people each")
    adaptation = parser.add_argument_group("adaptation (instead of recipes)")
    cli.add_flag(adaptation, "adaptation", action="store_true",
                 help="measure inference's adjustments (calibration, prior adaptation, F1 decision) on a shifted "
                      "eval set and one drawn like training")
    cli.add_flag(adaptation, "shifted_mix", type=cli.fraction, nargs=2, default=[0.31, 0.65], metavar=("OLD", "MALE"),
                 help=f"the shifted eval set's shares of people 60+ and of men (training: {OLD_SHARE['train']}, "
                      f"{MALE_SHARE['train']})")
    cli.add_flag(adaptation, "fold_all", action="store_true",
                 help="train each seed with --fold all: its fold runs predict together, calibrated and decided on "
                      "all their validation folds")
    cli.add_flag(adaptation, "methods", nargs="+", default=list(ADAPTATION_METHODS), choices=list(ADAPTATION_METHODS),
                 metavar="METHOD", help=f"the adjustments measured, of: {', '.join(map(repr, ADAPTATION_METHODS))}")
    runs = parser.add_argument_group("runs")
    cli.add_flag(runs, "variant", action="append", default=None, metavar="NAME=FLAGS",
                 help=f"a recipe: its name and train.py flags (repeatable; default: {DEFAULT_VARIANTS})")
    cli.add_flag(runs, "seeds", type=cli.non_negative_int, nargs="+", default=[0, 1, 2], help="training seeds of every variant")
    shared = parser.add_argument_group("shared by every run (default: train.py's own)")
    cli.add_flag(shared, "model", default=None, help="network")
    cli.add_flag(shared, "resize", type=cli.positive_int, nargs=2, default=None, metavar=("H", "W"), help="input size")
    cli.add_flag(shared, "epochs", type=cli.positive_int, default=None, help="epochs")
    cli.add_flag(shared, "workers", type=cli.non_negative_int, default=None, help="loader processes")
    return parser


def parse_variants(texts):
    """{name: train.py flags} of NAME=FLAGS texts."""
    variants = {}
    for text in texts:
        name, separator, flags = text.partition("=")
        if not separator or not name.strip():
            raise cli.UserError(f"--variant {text!r} is not NAME=FLAGS (e.g. 'no crop=--crop none')")
        variants[name.strip()] = [os.path.expanduser(flag) for flag in shlex.split(flags)]
    return variants


def shared_flags(args):
    flags = []
    for name in ("model", "resize", "epochs", "workers"):
        value = getattr(args, name)
        if value is not None:
            flags += [f"--{name}", *map(str, value if isinstance(value, list) else [value])]
    return flags


def run(command, env, log):
    """Runs a script with its output in log; on failure prints the log's tail and stops with one line."""
    with open(log, "w") as output:
        result = subprocess.run([sys.executable, *map(str, command)], env=env, stdout=output,
                                stderr=subprocess.STDOUT)
    if result.returncode:
        lines = log.read_text().replace("\r", "\n").strip().splitlines()
        print("\n".join(lines[-20:]), file=sys.stderr)
        raise cli.UserError(f"{command[0]} failed ({lines[-1] if lines else 'no output'}); log in {log}")


def eval_metrics(data, output):
    """The eval set's metrics of inference.py's output folder: output.csv against gt.csv, or a folder set's
    predictions.csv against its class folders."""
    if (data / "gt/gt.csv").is_file():
        truth = pd.read_csv(data / "gt/gt.csv", dtype={"ImageID": str})
        predicted = pd.read_csv(output / "output.csv", dtype={"ImageID": str}).set_index("ImageID")
        return score(truth["ans"].to_numpy(), predicted.loc[truth["ImageID"], "ans"].to_numpy())
    truth = read_truth(data / "eval")
    scheme = folder_scheme(truth["class"].unique())
    predicted = pd.read_csv(output / "predictions.csv", dtype=str).set_index("path").loc[truth["path"], "predicted"]
    label = {name: index for index, name in enumerate(scheme.classes)}
    return score(truth["class"].map(label).to_numpy(), predicted.map(label).to_numpy(), scheme)


def train_and_score(work, data, name, flags, seed, env):
    """Eval-set and validation metrics of one variant trained with one seed."""
    run_name = f"{name.replace(' ', '_')}_seed{seed}"
    run_dir = work / "model" / run_name
    if (run_dir / "best.pth").is_file() or (run_dir / "oof.csv").is_file():
        print(f"reusing {run_dir}", flush=True)
    else:
        run([ROOT / "train.py", "--name", run_name, "--seed", seed, *flags], env, work / f"{run_name}.train.log")
    output = work / "output" / run_name
    run([ROOT / "inference.py", "--model_dir", run_dir, "--output_dir", output], env,
        work / f"{run_name}.inference.log")
    metrics = eval_metrics(data, output)
    return {"variant": name, "seed": seed, **{f"eval_{key}": value for key, value in metrics.items()},
            **validation_metrics(run_dir)}


def validation_metrics(run_dir):
    """The validation fold's F1 and accuracy at best.pth's epoch, or a --fold all parent's out-of-fold ones (every
    training photo, each predicted by the fold run that did not train on it)."""
    if (run_dir / "oof_metrics.json").is_file():
        metrics = json.loads((run_dir / "oof_metrics.json").read_text())
        return {"val_f1": float(metrics["f1"]), "val_accuracy": float(metrics["accuracy"])}
    summary = pd.read_csv(run_dir / "summary.csv")
    best = summary.loc[summary["val_f1"].idxmax()]
    return {"val_f1": float(best["val_f1"]), "val_accuracy": float(best["val_accuracy"])}


def prepare(work, args):
    """(data folder, environment of the scripts): the generated sample set, or --data_dir's class folders with the
    preprocessed training photos' folds CSV in the working folder."""
    if args.data_dir is None:
        data = work / "data"
        generate(data, people=args.people, eval_people=args.eval_people, seed=args.data_seed, overwrite=True)
        env = {"SM_CHANNEL_TRAIN": str(data / "train/images"), "SM_CHANNEL_EVAL": str(data / "eval")}
        preprocess = [ROOT / "preprocess.py"]
    else:
        data = Path(args.data_dir).expanduser()
        if not (data / "train").is_dir() or not (data / "eval").is_dir():
            raise cli.UserError(f"--data_dir {data} needs train/ and eval/, class folders of other people each")
        env = {"SM_CHANNEL_TRAIN": str(data / "train"), "SM_CHANNEL_EVAL": str(data / "eval")}
        preprocess = [ROOT / "preprocess.py", "--layout", "folders", "--group_regex", PERSON_OF_FILE,
                      "--output", work / "folds.csv"]
    env = {**os.environ, **env, "SM_MODEL_DIR": str(work / "model")}
    run(preprocess, env, work / "preprocess.log")
    for line in (work / "preprocess.log").read_text().splitlines():
        if line.startswith(("faces", "warning: faces")):
            print(line)
    return data, env


def benchmark(work, args, variants):
    """Every variant's metrics with every seed, as a list of rows."""
    data, env = prepare(work, args)
    folds = [] if args.data_dir is None else ["--csv", work / "folds.csv"]
    rows = []
    for seed in args.seeds:
        for name, flags in variants.items():
            print(f"training {name!r} with seed {seed}", flush=True)
            rows.append(train_and_score(work, data, name, [*folds, *shared_flags(args), *flags], seed, env))
            write_results(rows, work / "results.json")
    return rows


def prepare_adaptation_data(work, args):
    """The training set with the shifted eval set (work/data) and an eval set drawn like training
    (work/like_training, other people), preprocessed; kept from an earlier call. Returns {eval set: its root}."""
    roots = {"shifted": work / "data", "like training": work / "like_training"}
    if not (work / "data/train/folds.csv").is_file():
        generate(roots["shifted"], people=args.people, eval_people=args.eval_people, seed=args.data_seed,
                 overwrite=True, eval_mix=tuple(args.shifted_mix))
        generate(roots["like training"], people=0, eval_people=args.eval_people, seed=args.data_seed + 1,
                 overwrite=True, eval_mix=(OLD_SHARE["train"], MALE_SHARE["train"]))
        run([ROOT / "preprocess.py", "--data_dir", work / "data/train/images"], os.environ, work / "preprocess.log")
    return roots


def score_method(work, root, run_dir, output, flags, env):
    """Macro F1 (and the other scores), ECE and the shares of 60+ and male answers of one inference.py call."""
    output.parent.mkdir(parents=True, exist_ok=True)
    run([ROOT / "inference.py", "--model_dir", run_dir, "--data_dir", root / "eval", "--output_dir", output, *flags],
        env, output.with_suffix(".log"))
    truth = pd.read_csv(root / "gt/gt.csv", dtype={"ImageID": str})
    answers = pd.read_csv(output / "output.csv", dtype={"ImageID": str}).set_index("ImageID").loc[truth["ImageID"]]
    image_ids, probabilities = read_probabilities(output / "probabilities.csv")
    row_of = {image_id: row for row, image_id in enumerate(image_ids)}
    probabilities = probabilities.numpy()[[row_of[image_id] for image_id in truth["ImageID"]]]
    _, gender, age = COMPETITION.decode(answers["ans"].to_numpy())
    return {**score(truth["ans"].to_numpy(), answers["ans"].to_numpy()),
            "ece": expected_calibration_error(probabilities, truth["ans"].to_numpy()),
            "ece_if_calibrated": ece_of_a_calibrated_predictor(probabilities),
            "answered_60+": float((age == 2).mean()), "answered_male": float((gender == 0).mean())}


def ece_of_a_calibrated_predictor(probabilities, draws=200):
    """The mean ECE of these probabilities against labels drawn from themselves: what a perfectly calibrated
    predictor with the same confidences shows on as many photos, the floor of the measured ECE."""
    rng = np.random.default_rng(0)
    cumulative = np.cumsum(probabilities, axis=1)
    return float(np.mean([expected_calibration_error(probabilities, np.minimum(
        (rng.random((len(probabilities), 1)) > cumulative).sum(axis=1), probabilities.shape[1] - 1))
        for _ in range(draws)]))


def benchmark_adaptation(work, args):
    """Every adjustment method's scores on both eval sets for every seed's run of train.py's defaults."""
    roots = prepare_adaptation_data(work, args)
    env = {**os.environ, "SM_CHANNEL_TRAIN": str(work / "data/train/images"), "SM_MODEL_DIR": str(work / "model")}
    rows = []
    for seed in args.seeds:
        run_dir = work / "model" / f"defaults{'_fold_all' if args.fold_all else ''}_seed{seed}"
        if (run_dir / ("oof.csv" if args.fold_all else "best.pth")).is_file():
            print(f"reusing {run_dir}", flush=True)
        else:
            print(f"training train.py's defaults with seed {seed}{' on every fold' if args.fold_all else ''}",
                  flush=True)
            run([ROOT / "train.py", "--name", run_dir.name, "--seed", seed, *shared_flags(args),
                 *(["--fold", "all"] if args.fold_all else [])], env, work / f"{run_dir.name}.train.log")
        for eval_set, root in roots.items():
            truth = COMPETITION.decode(pd.read_csv(root / "gt/gt.csv")["ans"].to_numpy())
            for method in args.methods:
                flags = ADAPTATION_METHODS[method]
                output = work / "output" / run_dir.name / eval_set.replace(" ", "_") / method.replace(" ", "")
                rows.append({"seed": seed, "eval_set": eval_set, "method": method,
                             "true_60+": float((truth[2] == 2).mean()), "true_male": float((truth[1] == 0).mean()),
                             **score_method(work, root, run_dir, output, flags, env)})
                write_results(rows, work / "results.json")
        print(f"seed {seed} measured", flush=True)
    return rows


def mean_and_spread(values):
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}"


def print_adaptation_table(rows, methods):
    """Macro F1 and ECE of each method on each eval set, then the shares of 60+ and male answers."""
    frame = pd.DataFrame(rows)
    sets = [eval_set for eval_set in EVAL_SETS if eval_set in set(frame["eval_set"])]
    for eval_set in sets:
        part = frame[frame["eval_set"] == eval_set]
        print(f"{eval_set} eval set: {part['true_60+'].iloc[0]:.0%} aged 60+, {part['true_male'].iloc[0]:.0%} men")
    header = "".join(f"{f'{eval_set} {measure}':>24}" for eval_set in sets for measure in ("macro F1", "ECE"))
    print(f"\n{'mean ± spread over seeds':<34}{header}")
    for method in methods:
        cells = [mean_and_spread(frame[(frame["method"] == method) & (frame["eval_set"] == eval_set)][measure])
                 for eval_set in sets for measure in ("f1", "ece")]
        print(f"{method:<34}" + "".join(f"{cell:>24}" for cell in cells))
    calibrated = [method for method in ("calibrated", "calibrated + F1 decision") if method in methods][:1]
    floors = [frame[(frame["method"] == method) & (frame["eval_set"] == eval_set)]["ece_if_calibrated"]
              for method in calibrated for eval_set in sets]  # the decision keeps the calibrated probabilities
    if floors:
        print("the calibrated probabilities' ECE if they were perfectly calibrated, on as many photos: "
              + ", ".join(f"{eval_set} {mean_and_spread(floor)}" for eval_set, floor in zip(sets, floors)))
    print("\nshare of answers 60+ / male (mean over seeds)")
    shares = frame.groupby(["method", "eval_set"], sort=False)[["answered_60+", "answered_male"]].mean()
    print(shares.to_string(float_format="%.3f"))
    print("\nevery run")
    print(frame[["eval_set", "method", "seed", "f1", "ece", "accuracy", "mask_f1", "gender_f1", "age_f1"]]
          .to_string(index=False, float_format="%.4f"))


def write_results(rows, path):
    path.write_text(json.dumps(rows, indent=2) + "\n")


def print_table(rows, variants, columns):
    frame = pd.DataFrame(rows)
    print(f"\n{'mean ± spread over seeds':<26}" + "".join(f"{column:>18}" for column in columns))
    for name in variants:
        part = frame[frame["variant"] == name]
        cells = [f"{part[column].mean():.4f} ± {np.std(part[column], ddof=1) if len(part) > 1 else 0:.4f}"
                 for column in columns]
        print(f"{name:<26}" + "".join(f"{cell:>18}" for cell in cells))
    print("\nevery run")
    print(frame[["variant", "seed", *columns]].to_string(index=False, float_format="%.4f"))


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    variants = parse_variants(args.variant or DEFAULT_VARIANTS)
    with tempfile.TemporaryDirectory(prefix="benchmark_recipe.") as temporary:
        work = Path(args.out or temporary)
        work.mkdir(parents=True, exist_ok=True)
        rows = benchmark_adaptation(work, args) if args.adaptation else benchmark(work, args, variants)
    data = args.data_dir or f"{args.people} training and {args.eval_people} eval people"
    print(f"\n{data}, seeds {' '.join(map(str, args.seeds))}, "
          f"train.py defaults{' + ' + ' '.join(shared_flags(args)) if shared_flags(args) else ''}")
    if args.adaptation:
        print_adaptation_table(rows, args.methods)
    else:
        print_table(rows, variants, COLUMNS["competition" if args.data_dir is None else "folders"])


if __name__ == "__main__":
    sys.exit(cli.run(main))
