"""Measures how fast this toolkit feeds and trains a model, side by side in one run on the same photos.

    python benchmark.py                                   # resnet18 at 128x96, batch 64, 448 generated photos
    python benchmark.py --data_dir data/train/images --device cuda --workers 8 --steps 50
    python benchmark.py --device cuda --amp bf16 --channels_last          # the fast paths, training and inference
    python benchmark.py --photos 32 --steps 2 --resize 64 48 --model test_resnet   # a smoke test: seconds

- loader: images/s of the naive per-item pipeline the cache replaced (PIL decode of the whole photo, Resize,
  ToTensor, Normalize) against loaders on the decoded-image cache (built first, timed apart): with
  BaseAugmentation (like for like: what decoding once saves) and with the training --augmentation (the training
  loader: its per-photo transforms); each with --workers processes, so the ratios hold per worker.
- training: images/s of train.train_one_epoch fed by the training loader, the preset's colour jitter of each batch
  included (end to end), against the same steps fed by a random uint8 batch already in memory, without jitter (the
  model alone), the best of two interleaved rounds each; the ratio says how much the data hold the model back.
- inference: images/s at --batch_size and the median latency of one photo, in eval mode without gradients.
- ONNX (`--onnx_variants`, on a CPU): the same model exported as export.py exports it (int8 calibrated on the cached
  photos), each variant's images/s and median batch-1 latency beside eager's, all on `--onnx_threads` threads and
  timed in turn within each round.
- memory: the peak resident set of this process and of the finished loader workers after each part (the cache is
  a mapped file: its pages count where they are read), and the peak GPU memory of each part on CUDA.
The last line is `loader_speedup X e2e_ratio Y`, for scripts.
"""
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision.transforms import v2

import cli
import export
import train
from augmentation import AUGMENTATIONS, MEAN, STD, create_batch_jitter, create_transform, decode_size
from dataset import NUM_CLASSES, ImageDataset, loader_options, open_cache
from generate_sample import generate
from exported import create_session
from model import AMP_DTYPES, WithProbabilities, autocast, check_amp, create_model, place_model, to_memory_format
from photos import IMAGE_EXTENSIONS, read_image

PHOTOS_PER_PERSON = 7
LATENCY_RUNS = 30
ROUNDS = 2  # interleaved model-only and end-to-end measurements, the best of each kept


def get_args_parser():
    parser = cli.new_parser("Loader, training and inference speed of this toolkit, side by side.")
    data = parser.add_argument_group("data")
    cli.add_flag(data, "data_dir", default=None,
                 help="folder of person folders to read photos from (default: generate --photos into a temporary one)")
    cli.add_flag(data, "photos", type=cli.positive_int, default=448,
                 help="number of photos (the first ones of --data_dir)")
    cli.add_flag(data, "augmentation", default="CustomAugmentation", choices=list(AUGMENTATIONS),
                 help="the training loader's transform")
    cli.add_flag(data, "workers", type=cli.non_negative_int, default=max(0, min(8, (os.cpu_count() or 1) - 1)),
                 help="loader worker processes, for both loaders (default: train.py's)")
    model = parser.add_argument_group("model")
    cli.add_flag(model, "model", default="resnet18", help="timm, torchvision or efficientnet-pytorch name")
    cli.add_flag(model, "resize", type=cli.positive_int, nargs=2, default=[128, 96], metavar=("H", "W"),
                 help="input size")
    cli.add_flag(model, "batch_size", type=cli.positive_int, default=64, help="batch size of training and inference")
    cli.add_flag(model, "steps", type=cli.positive_int, default=10, help="timed training and inference steps")
    cli.add_flag(model, "device", type=cli.device, default="cuda" if torch.cuda.is_available() else "cpu",
                 help="torch device")
    cli.add_flag(model, "amp", default="off", choices=list(AMP_DTYPES), help="mixed precision, as train.py's")
    cli.add_flag(model, "channels_last", action="store_true", help="channels-last format, as train.py's")
    onnx_group = parser.add_argument_group("onnx")
    cli.add_flag(onnx_group, "onnx_variants", nargs="*", default=["fp32", "int8"], choices=list(export.VARIANTS),
                 help="export.py's variants timed beside eager (none: skip)")
    cli.add_flag(onnx_group, "onnx_threads", type=cli.positive_int, default=1,
                 help="threads of eager and onnxruntime for the ONNX comparison")
    return parser


class NaiveDataset(Dataset):
    """The per-item pipeline the cache replaced: every photo decoded whole and resized every time it is read."""

    def __init__(self, paths, resize):
        self.paths = paths
        self.transform = v2.Compose([v2.Resize(resize, antialias=True), v2.ToImage(),
                                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return self.transform(read_image(self.paths[index])), 0


def find_photos(args, scratch):
    """The first --photos photos of --data_dir, or of a sample set generated into `scratch`."""
    if args.data_dir is None:
        generate(scratch, people=math.ceil(args.photos / PHOTOS_PER_PERSON), eval_people=0, seed=0)
    data_dir = Path(args.data_dir or scratch / "train/images")
    paths = sorted(path for path in data_dir.glob("*/*") if path.suffix.lower() in IMAGE_EXTENSIONS)[:args.photos]
    if not paths:
        raise cli.UserError(f"no photos in the person folders of {data_dir}")
    return paths


def peak_memory(device):
    """Peak resident MiB of this process and of its finished children (the loader workers), and of the GPU."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    gpu = f", GPU {torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else ""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return f"peak MiB: process {own:.0f}, loader workers {workers:.0f}{gpu}"


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(loader, passes=2):
    """Loader throughput over whole passes, after one untimed pass (worker start-up, page cache)."""
    for _ in loader:
        pass
    started, seen = time.perf_counter(), 0
    for _ in range(passes):
        for images, _ in loader:
            seen += len(images)
    return seen / (time.perf_counter() - started)


def training_rate(model, batches, device, images, **step_options):
    """Images/s of train.train_one_epoch over `batches` (a loader or a list) of `images` in all, with its
    `step_options` (amp, channels_last, jitter), after one untimed warm-up step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    criterion = torch.nn.CrossEntropyLoss()
    train.train_one_epoch(model, [next(iter(batches))], criterion, optimizer, scheduler, device, 0, **step_options)
    synchronize(device)
    started = time.perf_counter()
    train.train_one_epoch(model, batches, criterion, optimizer, scheduler, device, 1, **step_options)
    synchronize(device)
    return images / (time.perf_counter() - started)


@torch.no_grad()
def inference_rates(model, args, device):
    """(images/s at --batch_size, median milliseconds for one photo) in eval mode."""
    model.eval()
    batch = torch.randint(0, 256, (args.batch_size, 3, *args.resize), dtype=torch.uint8, device=device)

    def forward(images):
        with autocast(device, args.amp):
            return model(to_memory_format(images, args.channels_last))

    forward(batch)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        forward(batch)
    synchronize(device)
    rate = args.steps * args.batch_size / (time.perf_counter() - started)
    latencies = []
    for _ in range(LATENCY_RUNS):
        started = time.perf_counter()
        forward(batch[:1])
        synchronize(device)
        latencies.append(time.perf_counter() - started)
    return rate, statistics.median(latencies) * 1000


def cached_dataset(paths, augmentation, resize, cache_dir):
    """This project's training dataset: the photos decoded once into a disk cache, then `augmentation`."""
    size = decode_size(augmentation, resize)
    started = time.perf_counter()
    cache = open_cache(paths, size, "disk", cache_dir)
    print(f"cache build       {len(paths) / (time.perf_counter() - started):8.0f} photos/s on all cores "
          f"(decoded at {size[0]}x{size[1]})")
    return ImageDataset(paths, torch.randint(0, NUM_CLASSES, (len(paths),)), create_transform(augmentation, resize),
                        size, cache)


def compare_loaders(args, paths, cache_dir, device):
    """Prints the naive and cached loaders' images/s per worker; returns (training dataset, its speedup)."""
    options, per_worker = loader_options(args.workers, device, persistent=True), max(args.workers, 1)
    naive = images_per_second(DataLoader(NaiveDataset(paths, args.resize), args.batch_size, **options))
    print(f"loader naive      {naive / per_worker:8.0f} images/s per worker (whole-photo PIL decode, Resize, "
          f"ToTensor, Normalize); {peak_memory(device)}")
    for augmentation in dict.fromkeys(["BaseAugmentation", args.augmentation]):  # like for like, then training's
        dataset = cached_dataset(paths, augmentation, args.resize, cache_dir)
        cached = images_per_second(DataLoader(dataset, args.batch_size, **options))
        jitter = "; its colour jitter is per batch, in training below" if create_batch_jitter(augmentation) else ""
        print(f"loader cached     {cached / per_worker:8.0f} images/s per worker ({augmentation} on the cache{jitter}):"
              f" {cached / naive:.2f}x; {peak_memory(device)}")
    return dataset, cached / naive


def compare_training(args, dataset, device):
    """Prints training images/s fed by the cached loader and by a batch in memory, each the best of ROUNDS
    interleaved rounds (the machine's other load hits both alike); returns their ratio."""
    model = place_model(create_model({"model": args.model, "head": "single"}), device, args.channels_last)
    in_memory = [(torch.randint(0, 256, (args.batch_size, 3, *args.resize), dtype=torch.uint8),
                  torch.randint(0, NUM_CLASSES, (args.batch_size,)))] * args.steps
    sampler = RandomSampler(dataset, num_samples=args.steps * args.batch_size)
    loader = DataLoader(dataset, args.batch_size, sampler=sampler, drop_last=True,
                        **loader_options(args.workers, device, persistent=True))
    images, jitter = args.steps * args.batch_size, create_batch_jitter(args.augmentation)
    fast_paths = {"amp": args.amp, "channels_last": args.channels_last}
    rates = [(training_rate(model, in_memory, device, images, **fast_paths),
              training_rate(model, loader, device, images, jitter=jitter, **fast_paths)) for _ in range(ROUNDS)]
    model_only, end_to_end = (max(rate) for rate in zip(*rates))
    print(f"train model-only  {model_only:8.1f} images/s (a random uint8 batch in memory)")
    print(f"train end-to-end  {end_to_end:8.1f} images/s (the cached loader{', batch colour jitter' if jitter else ''}"
          f"): {end_to_end / model_only:.2f}x the model alone; {peak_memory(device)}")
    return model, end_to_end / model_only


def compare_onnx(model, dataset, args, scratch):
    """Prints images/s at --batch_size and median batch-1 ms of eager and of each ONNX variant, on --onnx_threads
    threads, every runner timed in turn within each round (export.time_calls)."""
    eager = WithProbabilities(model.cpu(), {"head": "single"}).eval()
    config, paths = {"model": args.model, "head": "single", "resize": list(args.resize)}, {}
    calibration = torch.stack([dataset[index][0] for index in range(min(len(dataset), args.batch_size))])
    for variant in args.onnx_variants:
        paths[variant] = scratch / export.VARIANTS[variant]
    export.write_variants(eager, config, paths, calibration, args.batch_size)
    sessions = {variant: create_session(path, args.onnx_threads) for variant, path in paths.items()}
    timing = export.timing(eager, sessions, calibration, args.onnx_threads, warmup=3, latency_runs=LATENCY_RUNS,
                           batch_size=args.batch_size, throughput_runs=args.steps)
    for name, measured in timing.items():
        size = f", {paths[name].stat().st_size / 1e6:.1f} MB" if name in paths else ""
        label = f"onnx {name}" if name in paths else f"{name} (cpu)"
        print(f"{label:17} {measured['images_per_second']:8.1f} images/s "
              f"at batch {len(calibration)}; one photo {measured['latency_ms']:.2f} ms "
              f"({measured['latency_ms'] / timing['eager']['latency_ms']:.2f}x eager; {args.onnx_threads} thread(s)"
              f"{size})")


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    args.resize, device = tuple(args.resize), torch.device(args.device)
    check_amp(args.amp, device)
    with tempfile.TemporaryDirectory() as scratch:
        paths = find_photos(args, Path(scratch))
        print(f"{len(paths)} photos, {args.model} at {args.resize[0]}x{args.resize[1]}, batch {args.batch_size}, "
              f"{args.workers} loader workers, {device} ({os.cpu_count()} cores), amp {args.amp}"
              f"{', channels-last' if args.channels_last else ''}")
        dataset, loader_speedup = compare_loaders(args, paths, Path(scratch) / "cache", device)
        model, e2e_ratio = compare_training(args, dataset, device)
        rate, latency = inference_rates(model, args, device)
        print(f"inference         {rate:8.1f} images/s at batch {args.batch_size}; one photo {latency:.1f} ms "
              f"(median of {LATENCY_RUNS}); {peak_memory(device)}")
        if args.onnx_variants:
            compare_onnx(model, dataset, args, Path(scratch))
    print(f"loader_speedup {loader_speedup:.2f} e2e_ratio {e2e_ratio:.2f}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
