"""Measures how fast this toolkit feeds and trains a model, side by side in one run on the same photos.

    python benchmark.py                                   # resnet18 at 128x96, batch 64, 448 generated photos
    python benchmark.py --data_dir data/train/images --device cuda --workers 8 --steps 50
    python benchmark.py --device cuda --amp bf16 --channels_last          # the fast paths, training and inference
    python benchmark.py --optimizer_loop --onnx_variants                   # the optimizer unfused: what fusing saves
    python benchmark.py --photos 32 --steps 2 --resize 64 48 --model test_resnet   # a smoke test: seconds
    python benchmark.py --serve model/mask_sunglasses --data_dir data/mask_sunglasses/eval --clients 4 --requests 2000

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

`--serve MODEL` measures serve.py instead: it starts `serve.py MODEL` (with `--server_flags`) on a free port of
127.0.0.1, and `--clients` threads each post the photos (of --data_dir, or generated 384x512 ones), one at a time
over a kept-alive connection, until `--requests` have been answered or `--max_seconds` have passed. After
`--warmup_requests` untimed ones it prints photos/s end to end (detection included), the latency's median, p90, p99
and maximum, the errors (any answer but 200, or no answer), the faces found, the server's mean batch (its /metrics)
and its resident memory when ready, after the warm-up and at the end. Only loopback traffic; the last line is
`serve_photos_per_s X p50_ms Y p99_ms Z errors N memory_growth_mib M`.
"""
import http.client
import math
import os
import re
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
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
from optim import create_optimizer
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
    cli.add_flag(model, "optimizer_loop", action="store_true",
                 help="step the optimizer parameter by parameter, not in train.py's fused kernel (what fusing saves)")
    onnx_group = parser.add_argument_group("onnx")
    cli.add_flag(onnx_group, "onnx_variants", nargs="*", default=["fp32", "int8"], choices=list(export.VARIANTS),
                 help="export.py's variants timed beside eager (none: skip)")
    cli.add_flag(onnx_group, "onnx_threads", type=cli.positive_int, default=1,
                 help="threads of eager and onnxruntime for the ONNX comparison")
    serving = parser.add_argument_group("serving (instead of the measures above)")
    cli.add_flag(serving, "serve", default=None, metavar="MODEL",
                 help="measure serve.py serving MODEL (a run directory or .onnx) under load")
    cli.add_flag(serving, "clients", type=cli.positive_int, default=4, help="concurrent clients")
    cli.add_flag(serving, "requests", type=cli.positive_int, default=2000, help="timed requests, one photo each")
    cli.add_flag(serving, "warmup_requests", type=cli.non_negative_int, default=50, help="untimed requests first")
    cli.add_flag(serving, "max_seconds", type=cli.positive_float, default=900.0,
                 help="stop sending after this long, whatever was answered")
    cli.add_flag(serving, "server_flags", default="", help="serve.py's flags, as one string (e.g. '--workers 2')")
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


def training_rate(model, batches, device, images, fused=True, **step_options):
    """Images/s of train.train_one_epoch over `batches` (a loader or a list) of `images` in all, with its
    `step_options` (amp, channels_last, jitter), after one untimed warm-up step; the optimizer train.py's default,
    stepping every parameter in one fused kernel unless not `fused`."""
    optimizer = create_optimizer(train.parse_args(["--device", device.type]), model.parameters(), fused)
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
    fast_paths = {"amp": args.amp, "channels_last": args.channels_last, "fused": not args.optimizer_loop}
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


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def resident_mib(pid):
    """The resident memory of process `pid` (Linux /proc), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise cli.UserError(f"no VmRSS in /proc/{pid}/status: the server's memory is measured on Linux")


def get(port, path):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def start_server(args, port, log):
    """serve.py serving --serve on 127.0.0.1:`port`, its output into `log`; returns the process once /health says
    ready, or stops with its last line."""
    command = [sys.executable, str(Path(__file__).with_name("serve.py")), args.serve, "--host", "127.0.0.1",
               "--port", str(port), "--quiet", *shlex.split(args.server_flags)]
    server, deadline = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), time.monotonic() + 300
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if get(port, "/health")[0] == 200:
                return server
        except OSError:
            pass  # not listening yet
        time.sleep(0.2)
    server.kill()
    log.seek(0)
    lines = log.read().decode(errors="replace").strip().splitlines() or ["no output"]
    raise cli.UserError(f"serve.py did not become ready: {lines[-1]}")


class Load:
    """Requests shared out to client threads: each takes the next photo until `total` were sent or the deadline
    passed, and records (seconds, status, faces) per request."""

    def __init__(self, port, photos, total, deadline):
        self.port, self.photos, self.total, self.deadline = port, photos, total, deadline
        self.sent, self.results, self.lock = 0, [], threading.Lock()

    def next_photo(self):
        with self.lock:
            if self.sent >= self.total or time.monotonic() > self.deadline:
                return None
            self.sent += 1
            return self.photos[self.sent % len(self.photos)]

    def client(self):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while (photo := self.next_photo()) is not None:
            started = time.perf_counter()
            try:
                connection.request("POST", "/predict", photo, {"Content-Type": "application/octet-stream"})
                response = connection.getresponse()
                body = response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status, body = None, b""
                connection.close()  # a new connection for the next request
            faces = body.count(b'"score"') if status == 200 else 0
            with self.lock:
                self.results.append((time.perf_counter() - started, status, faces))
        connection.close()

    def run(self, clients):
        threads = [threading.Thread(target=self.client) for _ in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started


def percentile_ms(ordered, fraction):
    """The `fraction` percentile of sorted seconds, in milliseconds (nearest rank)."""
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def mean_batch(metrics):
    """Photos per detection batch, from the server's /metrics text."""
    values = {name: float(value) for name, value in re.findall(r"^maskcls_batch_photos_(sum|count) (\S+)$", metrics,
                                                                re.MULTILINE)}
    return values.get("sum", 0) / max(values.get("count", 0), 1)


def measure_serving(args):
    """Prints serve.py's photos/s, latency, errors and memory under --clients concurrent clients."""
    with tempfile.TemporaryDirectory() as scratch:
        paths = find_photos(args, Path(scratch))
        photos = [path.read_bytes() for path in paths]
        sizes = sorted({read_image(path).size for path in paths[:20]})
    port = free_port()
    with tempfile.TemporaryFile() as log:
        server = start_server(args, port, log)
        try:
            ready = resident_mib(server.pid)
            Load(port, photos, args.warmup_requests, math.inf).run(args.clients)
            warm = resident_mib(server.pid)
            load = Load(port, photos, args.requests, time.monotonic() + args.max_seconds)
            seconds = load.run(args.clients)
            end = resident_mib(server.pid)
            metrics = get(port, "/metrics")[1]
            metadata = get(port, "/metadata")[1]
        finally:
            server.terminate()
            server.wait(30)
    latencies = sorted(latency for latency, _, _ in load.results)
    answered = [result for result in load.results if result[1] == 200]
    errors = len(load.results) - len(answered)
    p50, p90, p99 = (percentile_ms(latencies, fraction) for fraction in (0.5, 0.9, 0.99))
    served = re.search(r'"file": ?"([^"]+)"', metadata)
    print(f"serve: {served.group(1) if served else args.serve} from {args.serve}, {len(photos)} photos of "
          f"{', '.join(f'{w}x{h}' for w, h in sizes)} cycled, {args.clients} clients, {os.cpu_count()} cores; "
          f"serve.py {args.server_flags or '(its defaults)'}")
    print(f"serve: {len(load.results)} requests in {seconds:.1f} s: {len(answered) / seconds:.1f} photos/s answered; "
          f"latency ms p50 {p50:.0f}, p90 {p90:.0f}, p99 {p99:.0f}, max "
          f"{latencies[-1] * 1000:.0f}; errors {errors}; {sum(r[2] for r in answered) / max(len(answered), 1):.2f} "
          f"faces per photo; {mean_batch(metrics):.2f} photos per detection batch")
    print(f"serve: server memory (RSS) MiB: {ready:.0f} ready, {warm:.0f} after {args.warmup_requests} warm-up "
          f"requests, {end:.0f} after {len(load.results)} more ({end - warm:+.0f})")
    print(f"serve_photos_per_s {len(answered) / seconds:.1f} p50_ms {p50:.0f} p99_ms {p99:.0f} errors {errors} "
          f"memory_growth_mib {end - warm:.0f}")


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.serve:
        return measure_serving(args)
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
