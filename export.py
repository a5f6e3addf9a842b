"""Exports a trained run for deployment: one ONNX file per precision (fp32, fp16, int8), each checked against the
eager model, and a report of size, latency, throughput and accuracy.

    python export.py model/exp                          # into model/exp: model.onnx, model_fp16.onnx, model_int8.onnx,
                                                        # export_report.json and export_report.md
    python export.py model/exp --max_mb 15 --max_ms 6   # the report says which variant meets both targets
    python export.py model/exp --int8_ops Conv Gemm --output_dir deploy/   # quantize only these op types
    python inference.py --onnx model/exp/model_int8.onnx                   # the exported model predicts the eval set

The run is rebuilt from its config.json and best.pth (or `--checkpoint last`). The graph takes uint8 (N, 3, H, W)
photos at the run's --resize (any N), normalises them itself and ends in the scheme's class probabilities (a multi
head's task softmaxes multiplied inside), and its metadata holds the scheme, class names, size and crop
(exported.py): a deployment needs the .onnx alone, and gives it photos cropped as faces.py crops them.

- fp32: torch.onnx.export's dynamo exporter. fp16: onnxruntime's float16 converter, inputs and outputs kept in
  their types. int8: onnxruntime's static quantization (QDQ, per-channel weights QInt8, activations QUInt8: the
  U8S8 kernels that run fast on x86), MinMax-calibrated on `--calibration` training photos of the run's folds CSV
  decoded and cropped exactly as at inference; the nodes after the last matrix product (the softmaxes and their
  product) stay in float, so the probabilities keep their resolution. `--int8_ops` restricts the op types quantized.
- Checks against eager over the run's validation fold, each variant gated by what its precision promises: fp32 is
  the same function, so its probabilities may differ from eager's by `--fp32_tolerance` at most; fp16 rounds, so
  its differences may reach `--fp16_tolerance`, and it must agree with eager's top-1 on `--min_agreement` of the
  photos where that top-1 is no near-tie (ahead of the runner-up by more than `--near_tie`: a near-tie flipping
  under fp16 is rounding, not a broken export). int8 trades accuracy for speed by design: its agreement is
  reported, for the user to judge. Every variant also passes onnx.checker and gives finite probabilities. A variant
  that fails its gate is reported and not written (an earlier file of that name is removed, as the report no longer
  vouches for it); the others are. When none passes, nothing is written.
- Report: per variant file MB, batch-1 latency (median and p90 after warm-up; every variant and eager timed in turn
  within each round, on `--threads` threads) and its ratio to eager's, images/s at `--batch_size`, accuracy and macro
  F1 on the validation fold, agreement with eager (overall and off the near-ties), the largest probability
  difference; the CPU and whether it has AVX512-VNNI; which variants meet `--max_mb` and `--max_ms`; which were
  refused and why. The files are moved into place together, once every check ran; the intermediate models live in
  a hidden folder inside the output folder, removed however the export ends (a killed one's by the next export).
"""
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16

import cli
from augmentation import create_transform
from dataset import CACHE_MODES, ImageDataset, load_folds, open_cache, run_scheme, training_targets
from evaluation import score
from faces import crop_regions
from fileio import atomic_paths, scratch_folder
from inference import load_run
from model import WithProbabilities
from exported import INPUT_NAME, OUTPUT_NAME, create_session, with_metadata

VARIANTS = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx"}
REPORT_JSON, REPORT_MARKDOWN = "export_report.json", "export_report.md"


def get_args_parser():
    parser = cli.new_parser("Export a run to ONNX (fp32, fp16, int8), check it against eager and report size, "
                            "latency and accuracy.")
    paths = parser.add_argument_group("paths")
    paths.add_argument("run_dir", type=Path, help="a run directory of train.py (a --fold all parent's fold run)")
    cli.add_flag(paths, "output_dir", type=Path, default=None, help="where the files go (default: run_dir)")
    cli.add_flag(paths, "checkpoint", default="best", choices=("best", "last"), help="which checkpoint to export")
    cli.add_flag(paths, "data_dir", default=None,
                 help="the run's training photos, for calibration and validation (default: its config's data_dir)")
    cli.add_flag(paths, "csv", default=None, help="the run's folds CSV (default: its config's csv)")
    cli.add_flag(paths, "cache", default="disk", choices=CACHE_MODES,
                 help="decoded photos: disk reuses (or builds) training's cache in --cache_dir")
    cli.add_flag(paths, "cache_dir", default=None, help="default: the run's, or .cache beside data_dir")
    variants = parser.add_argument_group("variants")
    cli.add_flag(variants, "variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                 help="precisions to write")
    cli.add_flag(variants, "calibration", type=cli.positive_int, default=128,
                 help="int8: training photos that calibrate the activation ranges")
    cli.add_flag(variants, "int8_ops", nargs="+", default=None, metavar="OP",
                 help="int8: quantize only these ONNX op types, e.g. Conv Gemm (default: every type onnxruntime "
                      "quantizes)")
    checks = parser.add_argument_group("checks and timing")
    cli.add_flag(checks, "batch_size", type=cli.positive_int, default=32,
                 help="batch of the batch-N check and of the throughput")
    cli.add_flag(checks, "fp32_tolerance", type=cli.non_negative_float, default=1e-4,
                 help="fp32 is refused if a probability differs from eager's by more (measured: 4e-8)")
    cli.add_flag(checks, "fp16_tolerance", type=cli.non_negative_float, default=0.02,
                 help="fp16 is refused if a probability differs from eager's by more (measured: 8e-5)")
    cli.add_flag(checks, "min_agreement", type=cli.fraction, default=0.99,
                 help="fp16 agreeing with eager's top-1 on less of the validation photos that are no near-tie is "
                      "refused")
    cli.add_flag(checks, "near_tie", type=cli.fraction, default=0.01,
                 help="a photo whose eager top-1 probability leads the runner-up by this or less is a near-tie")
    cli.add_flag(checks, "threads", type=cli.positive_int, default=1,
                 help="threads of eager torch and onnxruntime while timing (1 was fastest at batch 1 on 2 cores)")
    cli.add_flag(checks, "latency_runs", type=cli.positive_int, default=100, help="timed batch-1 runs per variant")
    cli.add_flag(checks, "warmup", type=cli.non_negative_int, default=10, help="untimed runs first, per variant")
    cli.add_flag(checks, "throughput_runs", type=cli.positive_int, default=5,
                 help="timed batch --batch_size runs per variant")
    targets = parser.add_argument_group("targets (the mask/sunglasses seed's bar)")
    cli.add_flag(targets, "max_mb", type=cli.positive_float, default=15.0, help="largest file size, MB")
    cli.add_flag(targets, "max_ms", type=cli.positive_float, default=6.0, help="slowest median batch-1 latency, ms")
    return parser


def check_run_dir(run_dir):
    if not (run_dir / "config.json").is_file() and (run_dir / "fold0" / "config.json").is_file():
        raise cli.UserError(f"{run_dir} is a --fold all parent: export one of its fold runs, e.g. {run_dir / 'fold0'}")


def fold_photos(config, args):
    """(validation images, their targets, calibration images) as uint8 tensors: the run's held-out fold and
    `--calibration` photos of its training folds, decoded and cropped as training's validation decoded them (the
    same cache)."""
    data_dir = Path(args.data_dir or config.get("data_dir") or "")
    csv = Path(args.csv or config.get("csv") or data_dir.parent / "folds.csv")
    if not csv.is_file():
        raise cli.UserError(f"the run's folds CSV {csv} does not exist: calibration and the checks need its "
                            "photos; pass --data_dir and --csv")
    frame = load_folds(csv, data_dir, config["fold"])
    size = tuple(config["resize"])
    regions = crop_regions(frame, config.get("crop", "none"), config.get("face_margin", 0.0), config.get("crop_box"))
    paths = [data_dir / path for path in frame["path"]]
    cache_dir = Path(args.cache_dir or config.get("cache_dir") or data_dir.parent / ".cache")
    photos = ImageDataset(paths, transform=create_transform("BaseAugmentation", size), size=size, regions=regions,
                          cache=open_cache(paths, size, args.cache, cache_dir, regions))
    held_out = (frame["fold"] == config["fold"]).to_numpy()
    training_rows = np.flatnonzero(~held_out)
    chosen = np.random.default_rng(0).choice(training_rows, min(args.calibration, len(training_rows)), replace=False)

    def stack(rows):
        return torch.stack([photos[int(row)] for row in rows])

    targets = training_targets(frame[held_out], config.get("task", "all"))
    return stack(np.flatnonzero(held_out)), targets, stack(np.sort(chosen))


def export_fp32(eager, size, path):
    """The eager model (WithProbabilities) exported by the dynamo exporter to one file, the batch dynamic (traced at
    2: the exporter specialises a batch of 1; a fresh tensor, as a numpy view would add a gather)."""
    example = torch.zeros((2, 3, *size), dtype=torch.uint8)
    program = torch.onnx.export(eager, (example,), dynamo=True, input_names=[INPUT_NAME],
                                output_names=[OUTPUT_NAME], dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                                verbose=False)
    program.save(str(path), external_data=False)


class Calibration(CalibrationDataReader):
    """The calibration photos, batch by batch, as quantize_static reads them."""

    def __init__(self, images, batch_size):
        self.batches = iter([{INPUT_NAME: batch.numpy()} for batch in images.split(batch_size)])

    def get_next(self):
        return next(self.batches, None)


def nodes_after_last_matmul(model_proto):
    """The names of the nodes fed, directly or not, by the graph's last Gemm or MatMul (the head): the softmaxes
    and their product, which int8 would round to 1/255 steps."""
    nodes = list(model_proto.graph.node)
    last = max((k for k, node in enumerate(nodes) if node.op_type in ("Gemm", "MatMul")), default=None)
    if last is None:
        return []
    reached, names = set(nodes[last].output), []
    for node in nodes[last + 1:]:  # the graph is topologically sorted
        if reached & set(node.input):
            reached |= set(node.output)
            names.append(node.name)
    return names


@contextlib.contextmanager
def temporaries_in(folder):
    """tempfile's default folder is `folder` inside the block: onnxruntime's quantization writes its copies of the
    model there, not in /tmp, where a kill would leave them."""
    previous, tempfile.tempdir = tempfile.tempdir, str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = previous


def quantize_int8(fp32_path, path, calibration, batch_size, scratch, op_types=None):
    """Static QDQ int8 (U8S8, per-channel, MinMax) of the fp32 model, calibrated on `calibration` photos; the
    intermediate models go into the folder `scratch`."""
    with temporaries_in(scratch):
        prepared = scratch / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(str(prepared), str(path), Calibration(calibration, batch_size), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=op_types,
                        nodes_to_exclude=nodes_after_last_matmul(onnx.load(str(prepared))))


def build_variant(variant, fp32_path, calibration, batch_size, int8_ops, scratch):
    """The ONNX model of one precision, made from the fp32 export."""
    if variant == "fp32":
        return onnx.load(str(fp32_path))
    if variant == "fp16":
        return convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    quantize_int8(fp32_path, scratch / "int8.onnx", calibration, batch_size, scratch, int8_ops)
    return onnx.load(str(scratch / "int8.onnx"))


def write_variants(eager, config, paths, calibration, batch_size=32, int8_ops=None, scratch=None):
    """Writes each variant of `paths` ({variant: path}) with the run's metadata; int8 is calibrated on the uint8
    photos of `calibration`, `batch_size` at a time, quantizing the op types `int8_ops` (None: all). The
    intermediate models go into the folder `scratch` (default: a scratch folder beside the first path)."""
    with (contextlib.nullcontext(scratch) if scratch else
          scratch_folder(Path(next(iter(paths.values()))).parent, "export")) as scratch:
        fp32_path = scratch / "fp32.onnx"
        export_fp32(eager, config["resize"], fp32_path)
        for variant, path in paths.items():
            print(f"writing the {variant} model", flush=True)
            proto = build_variant(variant, fp32_path, calibration, batch_size, int8_ops, scratch)
            onnx.save(with_metadata(proto, config, variant), path)


@torch.no_grad()
def eager_probabilities(eager, images, batch_size):
    return torch.cat([eager(batch) for batch in images.split(batch_size)]).numpy()


def session_probabilities(session, images, batch_size):
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]
                           for batch in images.split(batch_size)])


def largest_difference(probabilities, expected):
    """The largest absolute difference of two probability arrays; None when `probabilities` are not all finite (an
    overflow), which no tolerance passes."""
    return float(np.abs(probabilities - expected).max()) if np.isfinite(probabilities).all() else None


def no_near_tie(probabilities, near_tie):
    """Which rows' top-1 leads the runner-up by more than `near_tie`."""
    if probabilities.shape[1] < 2:
        return np.ones(len(probabilities), dtype=bool)
    top_two = np.sort(probabilities, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0] > near_tie


def check_variant(path, session, eager, valid_images, eager_valid, targets, scheme, args):
    """A variant measured against eager: onnx.checker's verdict, the largest probability difference at batch 1, at
    batch N and over the fold, top-1 agreement over the fold and over its photos that are no near-tie, and the
    scores on the fold."""
    try:
        onnx.checker.check_model(str(path))
        checker = None
    except onnx.checker.ValidationError as error:
        checker = cli.first_line(error)
    batch = valid_images[:args.batch_size]
    with torch.no_grad():
        differences = {size: largest_difference(session_probabilities(session, batch[:size], size),
                                                eager(batch[:size]).numpy()) for size in (1, len(batch))}
    probabilities = session_probabilities(session, valid_images, args.batch_size)
    predicted, agreeing = probabilities.argmax(axis=1), probabilities.argmax(axis=1) == eager_valid.argmax(axis=1)
    decided = no_near_tie(eager_valid, args.near_tie)
    metrics = score(targets, predicted, scheme)
    return {"checker": checker, "max_difference_batch_1": differences[1],
            f"max_difference_batch_{len(batch)}": differences[len(batch)],
            "max_difference": largest_difference(probabilities, eager_valid), "agreement": float(agreeing.mean()),
            "no_near_tie_photos": int(decided.sum()),
            "agreement_no_near_tie": float(agreeing[decided].mean()) if decided.any() else 1.0,
            "accuracy": metrics["accuracy"], "f1": metrics["f1"]}


def gate(variant, measured, args):
    """Why a variant fails the gate of its precision (see the docstring at the top), or None when it passes."""
    if measured["checker"]:
        return f"onnx.checker refuses it ({measured['checker']})"
    if None in (measured["max_difference"], measured["max_difference_batch_1"]):
        return "its probabilities are not all finite numbers"
    tolerance = {"fp32": args.fp32_tolerance, "fp16": args.fp16_tolerance}.get(variant)
    if tolerance is not None and measured["max_difference"] > tolerance:
        return (f"its probabilities differ from eager's by up to {measured['max_difference']:.3g}, over "
                f"--{variant}_tolerance {tolerance:g}")
    if variant == "fp16" and measured["agreement_no_near_tie"] < args.min_agreement:
        return (f"it agrees with eager's top-1 on {measured['agreement_no_near_tie']:.4f} of the "
                f"{measured['no_near_tie_photos']} validation photos that are no near-tie (--near_tie "
                f"{args.near_tie:g}), under --min_agreement {args.min_agreement:g}")
    return None


def time_calls(runners, example, warmup, runs):
    """Seconds of each call of each runner on `example`: after `warmup` calls each, `runs` rounds in which every
    runner is timed in turn, so that a slower moment of the machine weighs on all alike."""
    for runner in runners.values():
        for _ in range(warmup):
            runner(example)
    seconds = {name: [] for name in runners}
    for _ in range(runs):
        for name, runner in runners.items():
            started = time.perf_counter()
            runner(example)
            seconds[name].append(time.perf_counter() - started)
    return seconds


def timing(eager, sessions, images, threads=1, warmup=10, latency_runs=100, batch_size=32, throughput_runs=5):
    """Batch-1 latency (median and p90, ms, over `latency_runs` after `warmup`) and images/s at `batch_size` (over
    `throughput_runs`) of eager and of every session (made on `threads` threads), on the uint8 `images`."""
    @torch.no_grad()
    def run_eager(images):
        return eager(images)

    runners = {"eager": run_eager, **{name: (lambda images, session=session: session.run(
        [OUTPUT_NAME], {INPUT_NAME: images.numpy()})) for name, session in sessions.items()}}
    batch = images[:batch_size]
    with cli.torch_threads(threads):
        latency = time_calls(runners, images[:1], warmup, latency_runs)
        throughput = time_calls(runners, batch, min(warmup, 2), throughput_runs)
    return {name: {"latency_ms": 1000 * statistics.median(latency[name]),
                   "latency_p90_ms": 1000 * float(np.percentile(latency[name], 90)),
                   "images_per_second": len(batch) / statistics.median(throughput[name])} for name in runners}


def cpu_description():
    """The CPU's model name and whether it has the AVX512-VNNI int8 dot products (from /proc/cpuinfo)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {"cpu": "unknown", "avx512_vnni": None}
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    return {"cpu": fields.get("model name", "unknown"), "avx512_vnni": "avx512_vnni" in fields.get("flags", "").split()}


def report_rows(sizes, checks, timings, refused, args):
    """One row per variant of `checks` (eager first): size, latency and its ratio to eager's, throughput, scores,
    whether it meets the targets; a refused variant's row has no timing and says why."""
    rows = []
    for name in checks:
        if name in refused:
            rows.append({"variant": name, "file_mb": sizes[name], **checks[name], "refused": refused[name],
                         "meets_targets": False})
            continue
        row = {"variant": name, "file_mb": sizes[name], **timings[name],
               "latency_ratio": timings[name]["latency_ms"] / timings["eager"]["latency_ms"], **checks[name]}
        row["meets_targets"] = name != "eager" and row["file_mb"] <= args.max_mb and row["latency_ms"] <= args.max_ms
        rows.append(row)
    return rows


def build_report(args, config, model, eager, built, valid_images, targets, calibration):
    """Every built variant ({variant: path}) measured against eager (check_variant) and gated (gate), those that
    pass timed beside eager: the report, its `refused` {variant: why}."""
    scheme = run_scheme(config)
    eager_valid = eager_probabilities(eager, valid_images, args.batch_size)
    sessions = {variant: create_session(path, args.threads) for variant, path in built.items()}
    eager_scores = score(targets, eager_valid.argmax(axis=1), scheme)
    checks = {"eager": {"accuracy": eager_scores["accuracy"], "f1": eager_scores["f1"]}}
    refused = {}
    for variant, path in built.items():
        checks[variant] = check_variant(path, sessions[variant], eager, valid_images, eager_valid, targets, scheme,
                                        args)
        if reason := gate(variant, checks[variant], args):
            refused[variant] = reason
            print(f"the {variant} model is refused: {reason}", flush=True)
    passing = {variant: session for variant, session in sessions.items() if variant not in refused}
    print("timing eager" + "".join(f", {variant}" for variant in passing), flush=True)
    timings = timing(eager, passing, valid_images, args.threads, args.warmup, args.latency_runs, args.batch_size,
                     args.throughput_runs)
    weights_mb = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values()) / 1e6
    sizes = {"eager": weights_mb, **{variant: path.stat().st_size / 1e6 for variant, path in built.items()}}
    rows = report_rows(sizes, checks, timings, refused, args)
    return {"run": str(args.run_dir), "checkpoint": args.checkpoint, "resize": config["resize"],
            "validation_photos": len(valid_images), "calibration_photos": len(calibration), "threads": args.threads,
            "batch_size": args.batch_size, "max_mb": args.max_mb, "max_ms": args.max_ms, **cpu_description(),
            "variants": rows, "meeting_targets": [row["variant"] for row in rows if row["meets_targets"]],
            "refused": refused}


def markdown_table(report):
    """The report as the markdown table docs/deployment.md shows."""
    header = ("| variant | file MB | batch-1 ms (median / p90) | × eager | images/s at batch "
              f"{report['batch_size']} | accuracy | macro F1 | agreement | meets ≤ {report['max_mb']:g} MB, "
              f"≤ {report['max_ms']:g} ms |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for row in report["variants"]:
        size = f"{row['file_mb']:.1f}"
        scores = [f"{row[key]:.4f}" if key in row else "—" for key in ("accuracy", "f1", "agreement")]
        meets = "—" if row["variant"] == "eager" else ("yes" if row["meets_targets"] else "no")
        if "refused" in row:
            lines.append(f"| {row['variant']} | {size} | — | — | — | {' | '.join(scores)} | refused |")
            continue
        lines.append(f"| {row['variant']} | {size} | {row['latency_ms']:.2f} / {row['latency_p90_ms']:.2f} | "
                     f"{row['latency_ratio']:.2f} | {row['images_per_second']:.0f} | {' | '.join(scores)} | {meets} |")
    vnni = {True: "with", False: "without", None: "unknown"}[report["avx512_vnni"]]
    refused = "".join(f"\n{variant} refused, not written: {reason}\n" for variant, reason in report["refused"].items())
    return (f"{report['run']}: {report['validation_photos']} validation photos at {report['resize'][0]}×"
            f"{report['resize'][1]}, {report['threads']} thread(s), {report['cpu']} ({vnni} AVX512-VNNI)\n\n"
            + header + "\n".join(lines) + "\n\neager: the PyTorch model in the same process (MB: its fp32 weights)\n"
            + refused)


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    check_run_dir(args.run_dir)
    model, config = load_run(args.run_dir, torch.device("cpu"), args.checkpoint, task=None)  # a --task run too
    eager = WithProbabilities(model, config).eval()
    valid_images, targets, calibration = fold_photos(config, args)
    output_dir = args.output_dir or args.run_dir
    with scratch_folder(output_dir, "export") as scratch:
        built = {variant: scratch / VARIANTS[variant] for variant in args.variants}
        print(f"exporting {args.run_dir} ({config['model']}, {config['head']} head) as {', '.join(built)}")
        write_variants(eager, config, built, calibration, args.batch_size, args.int8_ops, scratch)
        report = build_report(args, config, model, eager, built, valid_images, targets, calibration)
        if len(report["refused"]) == len(built):
            raise cli.UserError("every variant failed its gate (" + "; ".join(
                f"{variant}: {reason}" for variant, reason in report["refused"].items()) + "): nothing written")
        passed = [variant for variant in built if variant not in report["refused"]]
        stale = [output_dir / VARIANTS[variant] for variant in report["refused"]
                 if (output_dir / VARIANTS[variant]).is_file()]
        with atomic_paths(*(output_dir / VARIANTS[variant] for variant in passed), output_dir / REPORT_JSON,
                          output_dir / REPORT_MARKDOWN) as temporaries:
            for variant, temporary in zip(passed, temporaries):
                os.replace(built[variant], temporary)
            Path(temporaries[-2]).write_text(json.dumps(report, indent=2) + "\n")
            Path(temporaries[-1]).write_text(markdown_table(report))
    for path in stale:  # an earlier export's file that this report no longer vouches for
        path.unlink()
        print(f"removed {path}, an earlier export of the refused variant")
    print(markdown_table(report))
    met = ", ".join(report["meeting_targets"]) or "none"
    print(f"meeting <= {args.max_mb:g} MB and <= {args.max_ms:g} ms: {met}; files in {output_dir}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
