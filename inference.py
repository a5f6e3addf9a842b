"""Predicts the eval set with one or more trained runs and writes the submission.

    export SM_CHANNEL_EVAL=data/eval SM_CHANNEL_MODEL=model/exp SM_OUTPUT_DATA_DIR=output
    python inference.py                                  # output/output.csv + output/probabilities.csv
    python inference.py --model_dir model/exp model/exp2 --batch_size 128

Each run is rebuilt from its own config.json (model, head, resize), so nothing from training has to be
repeated. Several runs, or a parent folder of runs, are averaged (soft vote). output.csv is info.csv with
`ans` filled, in info.csv's row order. probabilities.csv is the common currency of TTA and ensembles:
`ImageID` followed by one column per class, `prob_0` ... `prob_17`, each row summing to 1.
"""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

import cli
from augmentation import create_transform
from dataset import ImageDataset
from fileio import load_checkpoint, write_csv
from model import create_model, load_weights, predict

PROBABILITY_PREFIX = "prob_"


def get_args_parser():
    parser = cli.new_parser("Predict the eval set and write output.csv and probabilities.csv.")
    paths = parser.add_argument_group("paths")
    cli.add_flag(paths, "data_dir", default=cli.env_default("SM_CHANNEL_EVAL", "data/eval"),
                 help="eval folder holding info.csv and images/ (env SM_CHANNEL_EVAL)")
    cli.add_flag(paths, "model_dir", nargs="+", default=[cli.env_default("SM_CHANNEL_MODEL", "model/exp")],
                 help="run directories, or parents of run directories, to average (env SM_CHANNEL_MODEL)")
    cli.add_flag(paths, "output_dir", default=cli.env_default("SM_OUTPUT_DATA_DIR", "output"),
                 help="where output.csv and probabilities.csv go (env SM_OUTPUT_DATA_DIR)")
    cli.add_flag(paths, "checkpoint", default="best", choices=("best", "last"), help="which checkpoint of each run")
    runtime = parser.add_argument_group("runtime")
    cli.add_flag(runtime, "batch_size", type=int, default=256, help="images per batch")
    cli.add_flag(runtime, "workers", type=int, default=max(0, min(8, (os.cpu_count() or 1) - 1)),
                 help="loader worker processes")
    cli.add_flag(runtime, "device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    return parser


def find_runs(paths):
    """Run directories (holding config.json) among paths, expanding a parent into its runs."""
    runs = []
    for path in map(Path, paths):
        if (path / "config.json").is_file():
            runs.append(path)
        elif path.is_dir() and (children := sorted(p.parent for p in path.glob("*/config.json"))):
            runs.extend(children)
        else:
            raise cli.UserError(f"{path} is not a run directory (no config.json): pass the folder train.py made")
    return runs


def load_run(run_dir, device, checkpoint="best"):
    """(model, config) of a trained run, from its config.json and checkpoint."""
    config = json.loads((run_dir / "config.json").read_text())
    if config.get("task", "all") != "all":
        raise cli.UserError(f"{run_dir} predicts the {config['task']} task alone: compose mask, gender "
                            "and age runs into 18 classes with ensemble.py")
    model = create_model(config, initial_weights=False)
    path = run_dir / f"{checkpoint}.pth"
    load_weights(model, load_checkpoint(path)["model"], path)
    return model.to(device), config


def read_eval_set(eval_dir):
    """info.csv of the eval folder, checked: the columns are there and every image exists."""
    info_path, image_dir = Path(eval_dir) / "info.csv", Path(eval_dir) / "images"
    if not info_path.is_file():
        raise cli.UserError(f"{info_path} does not exist: pass --data_dir or set SM_CHANNEL_EVAL")
    info = pd.read_csv(info_path, dtype={"ImageID": str})
    if "ImageID" not in info.columns:
        raise cli.UserError(f"{info_path} lacks the ImageID column")
    absent = [image_id for image_id in info["ImageID"] if not (image_dir / image_id).is_file()]
    if absent:
        raise cli.UserError(f"{len(absent)} images named in {info_path} are not in {image_dir} (first: {absent[0]})")
    return info, [image_dir / image_id for image_id in info["ImageID"]]


def predict_run(model, config, paths, batch_size, workers, device):
    """Class probabilities of the photos at `paths`, seen through the run's evaluation transform."""
    dataset = ImageDataset(paths, transform=create_transform("BaseAugmentation", config["resize"]))
    loader = DataLoader(dataset, batch_size, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda")
    return predict(model, loader, config["head"], device)[0]


def write_probabilities(image_ids, probabilities, path):
    columns = [f"{PROBABILITY_PREFIX}{k}" for k in range(probabilities.shape[1])]
    frame = pd.DataFrame(np.asarray(probabilities), columns=columns)
    frame.insert(0, "ImageID", list(image_ids))
    write_csv(frame, path)


def write_submission(info, probabilities, output_dir):
    """output.csv (info.csv with ans = the most probable class) and probabilities.csv."""
    submission = info.assign(ans=np.asarray(probabilities).argmax(axis=1))
    write_probabilities(info["ImageID"], probabilities, Path(output_dir) / "probabilities.csv")
    write_csv(submission, Path(output_dir) / "output.csv")
    print(f"wrote {Path(output_dir) / 'output.csv'} ({len(submission)} rows) and probabilities.csv")


def main():
    args = get_args_parser().parse_args()
    device = torch.device(args.device)
    info, paths = read_eval_set(args.data_dir)
    runs = find_runs(args.model_dir)
    probabilities = 0
    for run_dir in runs:
        model, config = load_run(run_dir, device, args.checkpoint)
        probabilities = probabilities + predict_run(model, config, paths, args.batch_size, args.workers, device)
    write_submission(info, probabilities / len(runs), args.output_dir)


if __name__ == "__main__":
    cli.run(main)
