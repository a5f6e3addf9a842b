"""Combines predictions into one submission: split-task runs composed into 18 classes, soft and hard votes.

    export SM_CHANNEL_EVAL=data/eval SM_OUTPUT_DATA_DIR=output
    python ensemble.py --mask model/mask --gender model/gender --age model/age     # runs trained with --task
    python ensemble.py out_a/probabilities.csv out_b model/exp3 --weights 2 1 1    # soft vote
    python ensemble.py out_a out_b out_c --method hard
    python ensemble.py val_a/probabilities.csv val_b/probabilities.csv --fold 0     # weights chosen on fold 0
    python ensemble.py model/a/oof.csv model/b --weights 2 1 --fold all   # ... on out-of-fold predictions

Each positional input is one voter: a probabilities.csv, a folder holding one (an output folder), or a run
directory or parent of runs, predicted here (a parent's runs averaged, as inference.py does). `--mask`,
`--gender` and `--age` take runs trained with that `--task` (several runs of a task are averaged); the 18
class probabilities are the product of the three distributions, and this composition is one more voter
when positional inputs are given too (the last one for `--weights`). `--method soft` averages the voters'
probabilities, weighted by `--weights`; `--method hard` answers the class most voters pick (weighted), a tie
going to the class with the larger summed probability. Either way probabilities.csv holds the weighted mean.
Rows follow info.csv (`--data_dir`) when it exists, which it must when a run is predicted, else the first
input's order; inputs that predict another set of ImageIDs are refused. With `--fold K` every input must
predict fold K (inference.py and inference_tta.py write such files with `--fold K`), runs are predicted on
it, and the macro F1 of the combination is printed. With `--fold all` the inputs are out-of-fold predictions,
the oof.csv of `train.py --fold all` runs (or those runs' folders): the vote covers every training image and
is scored against the folds CSV's labels, so weights are chosen on all the training data, then applied to
the same runs' eval-set probabilities. `--calibrate` and `--adapt_prior` adjust each run predicted here as
inference.py does (probability files are taken as written); `--decision f1 --oof FILE` decides the soft vote by
per-class weights fitted on FILE, the held-out predictions of the same combination (its --fold K or --fold all
output); `--keep_raw` also writes the vote of the unadjusted inputs as probabilities_raw.csv.
"""
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

import cli
from adaptation import Adjuster
from dataset import COMPETITION, TASK_CLASSES, LabelScheme, compose_probabilities, frame_scheme
from inference import (add_common_flags, find_runs, predict_runs, print_held_out_score, read_folds, read_images,
                       read_info, read_oof, runs_scheme)
from submissions import read_probabilities, write_probabilities, write_submission

METHODS = ("soft", "hard")


def get_args_parser():
    parser = cli.new_parser("Compose split-task runs or vote across predictions; write output.csv and "
                            "probabilities.csv.")
    paths = add_common_flags(parser, fold_all=True)
    paths.add_argument("inputs", nargs="*", default=[], metavar="INPUT",
                       help="probabilities.csv files, folders holding one, run directories or parents of runs: "
                            "one voter each")
    tasks = parser.add_argument_group("split-task composition")
    for task in TASK_CLASSES:
        cli.add_flag(tasks, task, nargs="+", default=None, metavar="RUN",
                     help=f"run directories (or parents) trained with --task {task}, averaged")
    vote = parser.add_argument_group("vote")
    cli.add_flag(vote, "method", default="soft", choices=METHODS,
                 help="soft: weighted mean of probabilities; hard: weighted majority of the voters' answers")
    cli.add_flag(vote, "weights", type=cli.non_negative_float, nargs="+", default=None,
                 help="one weight per voter, in input order, the composition last (default: all 1)")
    parser.set_defaults(decision="argmax")  # the combination's held-out predictions are --oof's to give
    return parser


def soft_vote(probabilities, weights):
    """The weighted mean (N, K) of the voters' probabilities (V, N, K)."""
    return torch.einsum("v,vnk->nk", weights, probabilities) / weights.sum()


def hard_vote(probabilities, weights):
    """The class with the most weighted votes among the voters' most probable classes; among tied classes, the
    one with the larger summed probability."""
    picks = F.one_hot(probabilities.argmax(dim=2), probabilities.shape[2]).to(weights.dtype)
    votes = torch.einsum("v,vnk->nk", weights, picks)
    tied = torch.isclose(votes, votes.max(dim=1, keepdim=True).values)
    return torch.where(tied, soft_vote(probabilities, weights), -1.0).argmax(dim=1)


def check_voters(args):
    """The weights of the voters the arguments name, as a tensor; refuses an incomplete or empty ensemble."""
    given = [task for task in TASK_CLASSES if getattr(args, task)]
    if given and len(given) < len(TASK_CLASSES):
        missing = next(task for task in TASK_CLASSES if task not in given)
        raise cli.UserError(f"--{missing} is missing: composition needs --mask, --gender and --age runs")
    voters = len(args.inputs) + bool(given)
    if not voters:
        raise cli.UserError("nothing to combine: pass probabilities.csv files or run directories, "
                            "or --mask, --gender and --age runs")
    weights = args.weights or [1.0] * voters
    if len(weights) != voters:
        raise cli.UserError(f"--weights has {len(weights)} values for {voters} voters: give one per input "
                            "(and one for the composition, last)")
    if sum(weights) <= 0:  # each is finite and 0 or more (cli.non_negative_float)
        raise cli.UserError(f"--weights {' '.join(map(str, weights))}: weights must not all be 0")
    return torch.tensor(weights)


def probability_file(source, fold=None):
    """The probabilities.csv an input names (with --fold all: the oof.csv of a --fold all run), or None when it
    names runs to predict."""
    path = Path(source)
    if fold == "all":
        if path.is_dir() and not (path / "oof.csv").is_file():
            raise cli.UserError(f"{path} holds no oof.csv: --fold all combines the out-of-fold predictions of "
                                "train.py --fold all runs")
        return path / "oof.csv" if path.is_dir() else path
    if not path.is_dir():
        return path
    if not (path / "config.json").is_file() and (path / "probabilities.csv").is_file():
        return path / "probabilities.csv"
    return None


def align(image_ids, probabilities, reference, name, reference_name):
    """The probabilities in the reference's row order; refuses another set of ImageIDs, naming the first mismatch."""
    position = {image_id: row for row, image_id in enumerate(image_ids)}
    missing = [image_id for image_id in reference if image_id not in position]
    if missing:
        raise cli.UserError(f"{name} has no row for {missing[0]}, which {reference_name} lists ({len(missing)} "
                            "missing): every input must predict the same images")
    known = set(reference)
    extra = [image_id for image_id in image_ids if image_id not in known]
    if extra:
        raise cli.UserError(f"{name} predicts {extra[0]}, which {reference_name} does not list ({len(extra)} "
                            "extra): every input must predict the same images")
    return probabilities[[position[image_id] for image_id in reference]]


def read_rows(args, predicts):
    """(info, paths, labels, name): the rows to write, from info.csv or the held-out fold; info None when only
    probability files are combined and there is no info.csv."""
    info_path = Path(args.data_dir) / "info.csv"
    if args.fold is not None:
        return *read_images(args), f"fold {args.fold}"
    if predicts:
        return *read_images(args), str(info_path)
    if info_path.is_file():
        return read_info(args.data_dir), None, None, str(info_path)
    return None, None, None, None


def predict_voter(runs, paths, args, device, adjuster, task="all"):
    """(adjusted, unadjusted) mean probabilities of one voter's runs (inference.predict_runs)."""
    start = len(adjuster.raw)
    adjusted = predict_runs(runs, paths, args, device, task, adjuster=adjuster)
    return adjusted, torch.stack(adjuster.raw[start:]).mean(dim=0)


def predict_composition(args, paths, device, adjuster):
    """(adjusted, unadjusted) 18-class probabilities as the product of the mask, gender and age runs'
    distributions."""
    tasks = [predict_voter(find_runs(getattr(args, task)), paths, args, device, adjuster, task)
             for task in TASK_CLASSES]
    return tuple(compose_probabilities(*parts) for parts in zip(*tasks))


def check_adjustments(args):
    """The Adjuster of the flags; --decision f1 needs --oof (the combination's held-out predictions) and soft
    votes."""
    if args.decision == "f1" and not args.oof:
        raise cli.UserError("--decision f1 fits its weights on held-out predictions of this combination: pass --oof "
                            "FILE (e.g. the probabilities.csv of the same ensemble.py command with --fold K)")
    if args.decision == "f1" and args.method == "hard":
        raise cli.UserError("--decision f1 decides on the soft vote's probabilities: use --method soft")
    return Adjuster(args.calibrate, args.adapt_prior, args.decision)


def combination_scheme(args, classes):
    """The label scheme of the combined probabilities: the folds CSV's for --fold, else the competition's (or, for
    probability files of other classes, one task of `classes` numbered classes)."""
    if args.fold is not None:
        return frame_scheme(read_folds(args.csv, args.train_dir, args.fold))
    if classes == COMPETITION.num_classes:
        return COMPETITION
    return LabelScheme("classes", {"class": [str(k) for k in range(classes)]})


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    weights = check_voters(args)
    device = torch.device(args.device)
    if args.fold == "all" and args.mask:
        raise cli.UserError("--fold all combines oof.csv files; --mask, --gender and --age runs cannot be predicted "
                            "on the images they trained on")
    adjuster = check_adjustments(args)
    files = [probability_file(source, args.fold) for source in args.inputs]
    info, paths, labels, reference_name = read_rows(args, predicts=None in files or bool(args.mask))
    reference = None if info is None else info["ImageID"].tolist()
    aligned, raw, as_written = [], [], []
    scheme = COMPETITION if args.mask else None  # the voting runs' scheme, once one is predicted
    for source, file in zip(args.inputs, files):
        if file is None:
            runs = find_runs([source])
            run_scheme = runs_scheme(runs, args)
            if scheme is not None and run_scheme != scheme:
                raise cli.UserError(f"{source} predicts other classes than the runs before it "
                                    f"({', '.join(run_scheme.classes)} against {', '.join(scheme.classes)}): vote "
                                    "over runs of one label scheme")
            scheme = run_scheme
            name, image_ids = source, reference
            probabilities, unadjusted = predict_voter(runs, paths, args, device, adjuster)
        else:
            name, (image_ids, probabilities) = str(file), read_probabilities(file)
            unadjusted = probabilities
            as_written.append(name)
        # the first voter sets the class count (any scheme's), the composition the competition's 18
        classes = COMPETITION.num_classes if args.mask else aligned[0].shape[1] if aligned else probabilities.shape[1]
        if probabilities.shape[1] != classes:
            raise cli.UserError(f"{name} holds {probabilities.shape[1]} classes, not {classes}: every input must "
                                "predict the same classes (compose single-task runs with --mask, --gender and --age)")
        if reference is None:  # no info.csv: the first input sets the rows
            reference, reference_name = image_ids, name
        aligned.append(align(image_ids, probabilities, reference, name, reference_name))
        raw.append(align(image_ids, unadjusted, reference, name, reference_name))
    if as_written and (args.calibrate or args.adapt_prior != "none"):
        print(f"{', '.join(as_written)}: taken as written (--calibrate and --adapt_prior adjust the runs predicted "
              "here)")
    if args.mask:
        for kept, probabilities in zip((aligned, raw), predict_composition(args, paths, device, adjuster)):
            kept.append(probabilities)
    info = pd.DataFrame({"ImageID": reference, "ans": 0}) if info is None else info
    stacked = torch.stack(aligned)
    vote = soft_vote(stacked, weights)
    if args.method == "hard":
        answers = hard_vote(stacked, weights)
    else:
        scheme = scheme or combination_scheme(args, vote.shape[1])  # the runs' own, where runs voted
        adjuster.oof = read_oof(args, scheme) if args.decision == "f1" else None
        answers = adjuster.decide(scheme, vote)
    answers = write_submission(info, vote, args.output_dir, answers)
    if args.keep_raw:
        write_probabilities(info["ImageID"], soft_vote(torch.stack(raw), weights),
                            Path(args.output_dir) / "probabilities_raw.csv")
    if labels is not None:
        print_held_out_score(args.fold, labels, answers, frame_scheme(read_folds(args.csv, args.train_dir, args.fold)))


if __name__ == "__main__":
    sys.exit(cli.run(main))
