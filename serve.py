"""Serves a trained or exported classifier over HTTP: every face of each posted photo found, cropped as the run crops
its photos and classified, photos that arrive together in one batch; and a web page that shows a camera (or a photo)
with each face boxed and labelled.

    python serve.py model/mask_sunglasses               # its model_int8.onnx when export.py wrote one; 127.0.0.1:8000
    python serve.py model/exp/model_int8.onnx --port 8080 --max_faces 4
    python serve.py model/exp --eager --device cuda     # the run's checkpoint in PyTorch, on the GPU
    MASKCLS_API_KEY=secret python serve.py model/exp --host 0.0.0.0       # reachable from the network: a key

    curl -F photo=@door.jpg http://127.0.0.1:8000/predict                 # multipart: one or several files
    curl --data-binary @door.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/predict      # the raw photo
    curl -H 'X-API-Key: secret' http://127.0.0.1:8000/metadata            # also /health, /metrics
    # the page: http://127.0.0.1:8000/ (with a key: /?api_key=secret), camera or photo, boxes drawn per class

MODEL is a run directory of train.py (its model_int8.onnx when it has one, else its checkpoint, `--eager` forcing the
checkpoint) or an exported .onnx file of export.py. Routes:
- POST /predict: one photo as the raw body (any image/* or application/octet-stream type) or one or more files of
  a multipart/form-data body. Its faces are found by the detector that found the run's training faces (its
  face_detection; --detector and --min_face_size choose another). Per photo: its name and size, and per face (the
  --max_faces most confident at or over --min_score) its box in pixels, the detector's score, the label, its
  confidence and every class's probability; a photo without a face says so, and a run trained on whole photos or
  a fixed box (--crop none or box) then classifies the photo whole, as it was trained. Each photo also says the
  batch it was detected in and that batch's detection and classification times.
- GET /health: 200 once the model and the detector are loaded and warmed up, 503 before (or when loading failed).
- GET /metadata: the label scheme, classes and their colours, input size and crop, the model file and its SHA-256.
- GET /metrics: Prometheus text: requests by route and status, refusals and errors by reason, latency, batch sizes.
- GET /: the page (serve_page.html: plain HTML and JS, nothing fetched from elsewhere).

Safe by construction: a body over --max_bytes is refused (413) from its Content-Length, or as soon as the bytes read
pass it; an upload slower than --read_timeout is 408; every photo is decoded by photos.decode_image (EXIF
orientation; a corrupt file or a decompression bomb is a 400 with its one-line message); non-finite model outputs
are a 500 that says so; nothing is written to disk (multipart parts are held in memory); with --api_key (or the
variable MASKCLS_API_KEY) every route but /health needs the header X-API-Key (or Authorization: Bearer KEY; the
page also takes ?api_key=); the server listens on 127.0.0.1 unless --host says otherwise; at most --queue requests
are in progress at once, another gets a 503 at once, so a burst cannot exhaust the memory.

Fast: onnxruntime sessions and the detector are created once; --workers threads each take the photos waiting
(up to --max_batch, waiting --batch_wait_ms for more to arrive) and detect them in batches of one size and classify
all their faces in one pass. benchmark.py --serve measures requests/s and latency under load.
"""
import asyncio
import concurrent.futures
import contextlib
import hashlib
import io
import logging
import math
import os
import queue
import secrets
import socket
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)
from python_multipart import FormParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

import cli
from dataset import run_scheme
from faces import CONFIDENT, DETECTORS, Detection, create_detector, faces_in, run_detection
from frame_faces import class_colours, classify_crops, face_crops, face_margin, pixel_box
from inference import load_run, source_config
from photos import decode_image

PAGE = Path(__file__).with_name("serve_page.html")
API_KEY_VARIABLE = "MASKCLS_API_KEY"
ROUTES = ("/", "/predict", "/health", "/metadata", "/metrics")
OPEN_ROUTES = ("/health",)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)
WARM_UP_SIZE = (480, 640)  # a camera frame's height and width
PAGE_HEADERS = {  # the page may load nothing from anywhere else: it works offline, and nothing leaks out of it
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
                               "'unsafe-inline'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
                               "connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
ANSWER_HEADERS = {"Cache-Control": "no-store"}  # answers about people's faces are kept by no cache
log = logging.getLogger("serve")


def get_args_parser():
    parser = cli.new_parser("Serve a trained or exported classifier over HTTP: faces found, cropped and classified; a "
                            "web page for a camera.")
    model = parser.add_argument_group("model")
    model.add_argument("model", metavar="MODEL", help="a run directory of train.py or an exported .onnx of export.py")
    cli.add_flag(model, "eager", action="store_true",
                 help="a run directory: serve its PyTorch checkpoint even when it has a model_int8.onnx")
    cli.add_flag(model, "checkpoint", default="best", choices=("best", "last"), help="--eager: which checkpoint")
    network = parser.add_argument_group("network")
    cli.add_flag(network, "host", default="127.0.0.1",
                 help="address to listen on (0.0.0.0: every interface; then set an --api_key)")
    cli.add_flag(network, "port", type=cli.int_at_least(0), default=8000, help="port to listen on")
    cli.add_flag(network, "api_key", default=None,
                 help=f"every route but /health requires this key (default: the variable {API_KEY_VARIABLE}; none)")
    cli.add_flag(network, "quiet", action="store_true", help="no log line per request (uvicorn's access log)")
    cli.add_flag(network, "ssl_certfile", default=None, help="serve HTTPS with this certificate (PEM)")
    cli.add_flag(network, "ssl_keyfile", default=None, help="--ssl_certfile's private key (PEM)")
    faces = parser.add_argument_group("faces")
    cli.add_flag(faces, "max_faces", type=cli.positive_int, default=8, help="the most confident faces per photo")
    cli.add_flag(faces, "min_score", type=cli.fraction, default=CONFIDENT, help="faces detected with less are ignored")
    cli.add_flag(faces, "detector", default=None, choices=DETECTORS,
                 help="face detector (default: the one that found the run's training faces, its face_detection)")
    cli.add_flag(faces, "min_face_size", type=cli.positive_int, default=None,
                 help="smallest face looked for, pixels (default: the run's training detection's)")
    limits = parser.add_argument_group("limits")
    cli.add_flag(limits, "max_bytes", type=cli.positive_int, default=10_000_000,
                 help="largest request body, bytes (413 above)")
    cli.add_flag(limits, "max_files", type=cli.positive_int, default=16, help="most photos in one request (413 above)")
    cli.add_flag(limits, "queue", type=cli.positive_int, default=16,
                 help="most /predict requests in progress at once; one more gets 503 at once")
    cli.add_flag(limits, "read_timeout", type=cli.positive_float, default=10.0,
                 help="seconds a request's body may take to arrive (408 after)")
    speed = parser.add_argument_group("speed")
    cli.add_flag(speed, "max_batch", type=cli.positive_int, default=8, help="most photos detected in one batch")
    cli.add_flag(speed, "batch_wait_ms", type=cli.non_negative_float, default=5.0,
                 help="how long a batch waits for more photos to arrive, milliseconds")
    cli.add_flag(speed, "workers", type=cli.positive_int, default=1,
                 help="threads that each detect and classify one batch at a time")
    cli.add_flag(speed, "threads", type=cli.non_negative_int, default=1,
                 help="torch's and onnxruntime's threads per batch (0: their own choice, every core)")
    cli.add_flag(speed, "device", type=cli.device, default="cuda" if torch.cuda.is_available() else "cpu",
                 help="device of the detector and of an eager model")
    return parser


class Refusal(Exception):
    """A request answered with an error: its HTTP status, one line for the client, and the reason counted in
    /metrics."""

    def __init__(self, status, reason, message):
        super().__init__(message)
        self.status, self.reason = status, reason


def served_model(source, eager=False):
    """What MODEL serves: the .onnx itself, a run directory's model_int8.onnx when it has one (and not `eager`), or
    the run directory (its checkpoint)."""
    source = Path(source)
    if source.suffix != ".onnx" and not eager and (source / "model_int8.onnx").is_file():
        return source / "model_int8.onnx"
    return source


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Photo(NamedTuple):
    """An uploaded photo: the name it was sent under, its bytes, and its decoded RGB pixels."""
    name: str
    data: bytes
    pixels: np.ndarray


class Classifier:
    """The model and its face detector, loaded once: `analyse` answers a batch of photos."""

    def __init__(self, args):
        self.args, self.device = args, torch.device(args.device)
        self.source = served_model(args.model, args.eager)
        self.file = self.source if self.source.suffix == ".onnx" else self.source / f"{args.checkpoint}.pth"
        self.config = source_config(self.source)  # the cheap checks first: a wrong MODEL fails before serving
        self.scheme = run_scheme(self.config)
        crop = self.config.get("crop", "none")  # runs saved before crops existed saw the whole photo
        # a photo without a face is classified whole by a run that saw whole photos (or its --crop box) in training
        self.whole_photo, self.whole_region = crop != "face", self.config.get("crop_box") if crop == "box" else None
        # faces found as its training faces were: a run directory's config.json says how (an exported file's metadata
        # does not carry it yet: it says mtcnn, as before the choice of detectors)
        run_config = source_config(args.model) if self.source != Path(args.model) else self.config
        self.trained_detection = run_detection(run_config)
        trained = Detection.from_signature(self.trained_detection)
        self.detection = trained._replace(**{key: value for key, value in (("detector", args.detector),
                                             ("min_face_size", args.min_face_size)) if value is not None})
        self.model = self.detector = self.checksum = None

    def load(self):
        self.model, self.config = load_run(self.source, self.device, self.args.checkpoint, task=None,
                                           threads=self.args.threads)
        self.model.eval()
        self.detector = create_detector(self.device, self.detection.min_face_size, self.detection.detector)
        self.checksum = sha256(self.file)
        # the first request does not pay for the lazy start-up of either
        faces_in(self.detector, [np.zeros((*WARM_UP_SIZE, 3), np.uint8)])
        classify_crops(self.model, self.config, self.scheme,
                       torch.zeros((1, 3, *self.config["resize"]), dtype=torch.uint8), self.device)

    def detect(self, photos):
        """Each photo's faces over --min_score, the --max_faces most confident: the detector sees the photos of one
        size together (MTCNN batches them)."""
        found, by_shape = [None] * len(photos), {}
        for index, photo in enumerate(photos):
            by_shape.setdefault(photo.pixels.shape, []).append(index)
        for indices in by_shape.values():
            for index, faces in zip(indices, faces_in(self.detector, [photos[k].pixels for k in indices])):
                found[index] = [face for face in faces if face.score >= self.args.min_score][:self.args.max_faces]
        return found

    def crops(self, photo, faces):
        """The uint8 crops a photo is classified by: its faces', or else, for a run of whole photos, the photo
        decoded as inference.py decodes it (its crop box, at its size), or none."""
        if faces:
            return face_crops(self.config, photo.pixels, faces)
        if not self.whole_photo:
            return torch.empty((0, 3, *self.config["resize"]), dtype=torch.uint8)
        pixels = decode_image(io.BytesIO(photo.data), tuple(self.config["resize"]), self.whole_region)
        return torch.from_numpy(pixels).permute(2, 0, 1)[None]

    def analyse(self, photos):
        """The answer of each photo of a batch (answer_photo), the batch's detection and classification timed."""
        started = time.perf_counter()
        found = self.detect(photos)
        detected = time.perf_counter()
        crops = [self.crops(photo, faces) for photo, faces in zip(photos, found)]
        batch = torch.cat(crops)
        probabilities = (classify_crops(self.model, self.config, self.scheme, batch, self.device) if len(batch)
                         else np.empty((0, len(self.scheme.classes))))
        if not np.isfinite(probabilities).all():
            raise Refusal(500, "non_finite", f"the model gave non-finite probabilities (NaN or infinity) for "
                                             f"{photos[0].name if len(photos) == 1 else 'a batch of photos'}: its "
                                             "weights or its export are broken; retrain or re-export it")
        timing = {"batch": len(photos), "detect_ms": round((detected - started) * 1000, 2),
                  "classify_ms": round((time.perf_counter() - detected) * 1000, 2)}
        answers, start = [], 0
        for photo, faces, photo_crops in zip(photos, found, crops):
            vectors = probabilities[start:start + len(photo_crops)]
            start += len(photo_crops)
            answers.append({**self.answer_photo(photo, faces, vectors), **timing})
        return answers

    def classes_of(self, vector):
        classes = self.scheme.classes
        return {"label": classes[int(np.argmax(vector))], "confidence": round(float(np.max(vector)), 6),
                "probabilities": {name: round(float(value), 6) for name, value in zip(classes, vector)}}

    def answer_photo(self, photo, faces, vectors):
        """A photo's JSON answer: its size, its faces (box in pixels, detector score, classes), or why it has none."""
        height, width = photo.pixels.shape[:2]
        answer = {"name": photo.name, "width": width, "height": height,
                  "faces": [{"box": [round(float(side), 1) for side in pixel_box(face, photo.pixels)],
                             "score": round(face.score, 4), **self.classes_of(vector)}
                            for face, vector in zip(faces, vectors)],
                  "whole_photo": None}
        if not faces:
            answer["message"] = f"no face found (at --min_score {self.args.min_score})"
            if len(vectors):
                answer["whole_photo"] = self.classes_of(vectors[0])
                answer["message"] += (f": the whole photo classified, as the run was trained on "
                                      f"{self.config.get('crop', 'none')} crops")
        return answer

    def metadata(self):
        config = self.config
        return {"model": str(self.source), "file": self.file.name, "sha256": self.checksum,
                "variant": config.get("variant", "eager"), "scheme": self.scheme.to_dict(),
                "classes": self.scheme.classes, "colours": class_colours(self.scheme.classes),
                "resize": config["resize"], "crop": config.get("crop", "none"), "face_margin": face_margin(config),
                "crop_box": config.get("crop_box"), "head": config["head"], "task": config.get("task", "all"),
                "detector": {"name": self.detection.detector, "min_face_size": self.detection.min_face_size,
                             "max_faces": self.args.max_faces, "min_score": self.args.min_score,
                             "trained_with": self.trained_detection},
                "limits": {"max_bytes": self.args.max_bytes, "max_files": self.args.max_files,
                           "queue": self.args.queue, "read_timeout": self.args.read_timeout},
                "batching": {"max_batch": self.args.max_batch, "batch_wait_ms": self.args.batch_wait_ms,
                             "workers": self.args.workers},
                "device": str(self.device)}


class Batcher:
    """Photos handed over by requests, answered by `workers` threads: each takes the photos waiting, up to
    `max_batch`, waits up to `wait` seconds for more, and answers them together with `analyse(photos)`."""

    def __init__(self, analyse, max_batch, wait, workers, on_batch=None):
        self.analyse, self.max_batch, self.wait, self.on_batch = analyse, max_batch, wait, on_batch
        self.waiting = queue.Queue()  # unbounded here: the requests in progress are bounded before they get here
        self.threads = [threading.Thread(target=self.run, name=f"batch-{k}", daemon=True) for k in range(workers)]
        for thread in self.threads:
            thread.start()

    def submit(self, photo):
        """A future of the photo's answer."""
        future = concurrent.futures.Future()
        self.waiting.put((photo, future))
        return future

    def take(self):
        """The next batch of (photo, future) pairs, or None when closing."""
        first = self.waiting.get()
        if first is None:
            return None
        batch, deadline = [first], time.monotonic() + self.wait
        while len(batch) < self.max_batch:
            try:
                item = self.waiting.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                self.waiting.put(None)  # another worker's stop: answer this batch first
                break
            batch.append(item)
        return batch

    def run(self):
        while (batch := self.take()) is not None:
            batch = [(photo, future) for photo, future in batch if future.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                answers = self.analyse([photo for photo, _ in batch])
            except BaseException as error:  # noqa: BLE001 -- handed to the requests waiting, which answer it
                for _, future in batch:
                    future.set_exception(error)
                continue
            if self.on_batch:
                self.on_batch(answers)
            for (_, future), answer in zip(batch, answers):
                future.set_result(answer)

    def close(self):
        for _ in self.threads:
            self.waiting.put(None)
        for thread in self.threads:
            thread.join()
        while not self.waiting.empty():  # photos that came in as it closed
            item = self.waiting.get()
            if item is not None:
                item[1].cancel()


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self):
        disable_created_metrics()  # no *_created series beside each counter: half the text, nothing lost
        self.registry = CollectorRegistry()
        options = {"registry": self.registry}
        self.requests = Counter("maskcls_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], **options)
        self.errors = Counter("maskcls_errors", "requests refused or failed, by reason", ["reason"], **options)
        self.latency = Histogram("maskcls_request_seconds", "time to answer a request, by route", ["route"],
                                 buckets=LATENCY_BUCKETS, **options)
        self.in_progress = Gauge("maskcls_predict_in_progress", "/predict requests in progress", **options)
        self.photos = Counter("maskcls_photos", "photos analysed", **options)
        self.faces = Counter("maskcls_faces", "faces classified, by label", ["label"], **options)
        self.batch = Histogram("maskcls_batch_photos", "photos per detection batch", buckets=BATCH_BUCKETS, **options)
        self.detect = Histogram("maskcls_detect_seconds", "detection time of a batch", buckets=LATENCY_BUCKETS,
                                **options)
        self.classify = Histogram("maskcls_classify_seconds", "classification time of a batch",
                                  buckets=LATENCY_BUCKETS, **options)

    def count_batch(self, answers):
        self.batch.observe(len(answers))
        self.detect.observe(answers[0]["detect_ms"] / 1000)
        self.classify.observe(answers[0]["classify_ms"] / 1000)
        self.photos.inc(len(answers))
        for answer in answers:
            for face in answer["faces"]:
                self.faces.labels(face["label"]).inc()


def given_key(request):
    """The API key a request carries: X-API-Key, Authorization: Bearer, or (the page's own address) ?api_key=."""
    if key := request.headers.get("x-api-key"):
        return key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    return request.query_params.get("api_key") if request.url.path == "/" else None


def check_key(request, api_key):
    if api_key is None or request.url.path in OPEN_ROUTES:
        return
    given = given_key(request)
    if given is None or not secrets.compare_digest(given.encode(), api_key.encode()):
        raise Refusal(401, "unauthorized", "missing or wrong API key: send it as the X-API-Key header (or "
                                           "Authorization: Bearer KEY; the page: /?api_key=KEY)")


async def read_body(request, max_bytes, timeout):
    """The request's body, refused (413) from its Content-Length or as soon as more than `max_bytes` arrived, before
    it is read whole, and (408) when it takes longer than `timeout` seconds."""
    declared = request.headers.get("content-length", "")
    too_large = Refusal(413, "too_large", f"the request is over --max_bytes {max_bytes} bytes: send a smaller photo")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        raise Refusal(408, "timeout", f"the photo took over --read_timeout {timeout:g} s to arrive") from None
    except ClientDisconnect:
        raise Refusal(400, "disconnected", "the client left before its photo arrived") from None
    return b"".join(chunks)


def multipart_files(body, boundary):
    """(name, bytes) of every file part of a multipart/form-data body, in order, held in memory."""
    files = []

    def on_file(part):
        part.file_object.seek(0)
        name = part.file_name.decode("utf-8", "replace") if part.file_name else f"file {len(files) + 1}"
        files.append((name, part.file_object.read()))

    parser = FormParser("multipart/form-data", None, on_file, boundary=boundary,
                        config={"MAX_MEMORY_FILE_SIZE": math.inf})  # never spooled to disk
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as error:
        raise Refusal(400, "bad_form", f"the multipart body does not parse: {cli.first_line(error)}") from None
    return files


def uploaded_files(body, content_type, max_files):
    """(name, bytes) of each photo of a request: the file parts of a multipart/form-data body, or the raw body of
    an image/* or application/octet-stream one."""
    media, options = parse_options_header(content_type)
    media = media.decode("latin-1").lower()
    if media == "multipart/form-data":
        if b"boundary" not in options:
            raise Refusal(400, "bad_form", "the multipart/form-data body names no boundary")
        files = multipart_files(body, options[b"boundary"])
    elif media.startswith("image/") or media == "application/octet-stream":
        files = [("photo", body)] if body else []
    else:
        raise Refusal(415, "unsupported_type", f"Content-Type {media or 'missing'}: send a photo as the raw body "
                                               "(image/jpeg, image/png...) or as files of a multipart/form-data body")
    files = [(name, data) for name, data in files if data]
    if not files:
        raise Refusal(400, "no_photo", "the request holds no photo: send one as the raw body or as a file of a "
                                       "multipart/form-data body")
    if len(files) > max_files:
        raise Refusal(413, "too_many_photos", f"{len(files)} photos in one request: at most --max_files {max_files}")
    return files


class Upload(io.BytesIO):
    """An upload's bytes as the open file decode_image reads; its message names it by `name` (a multipart part's
    file name)."""

    def __init__(self, data, name):
        super().__init__(data)
        self.name = name


def decode_upload(name, data, named):
    """The Photo of an upload, decoded by the toolkit's one decode path; its one-line error is a 400."""
    buffer = Upload(data, name if named else "the uploaded photo")
    try:
        return Photo(name, data, decode_image(buffer))
    except cli.UserError as error:
        raise Refusal(400, "bad_photo", str(error)) from None


class Service:
    """What the app serves: the classifier, loaded in the background at start-up, and its batches."""

    def __init__(self, args, metrics):
        self.args, self.metrics = args, metrics
        self.classifier = Classifier(args)
        self.batcher, self.failure, self.in_progress = None, None, 0

    def start(self):
        try:
            self.classifier.load()
        except Exception as error:  # noqa: BLE001 -- /health says so; the server stays up to say it
            log.exception("loading %s failed", self.classifier.source)
            self.failure = cli.first_line(error)
            return
        self.batcher = Batcher(self.classifier.analyse, self.args.max_batch, self.args.batch_wait_ms / 1000,
                               self.args.workers, self.metrics.count_batch)
        log.info("ready: %s (%d classes) on %s", self.classifier.source, len(self.classifier.scheme.classes),
                 self.args.device)

    def stop(self):
        if self.batcher is not None:
            self.batcher.close()

    def check_ready(self):
        if self.batcher is None:
            detail = f"loading failed: {self.failure}" if self.failure else "the model is still loading"
            raise Refusal(503, "loading", detail)

    @contextlib.contextmanager
    def admitted(self):
        """One of the --queue places for a /predict request, or a 503 when every one is taken (on the event loop's
        thread only, so no lock)."""
        if self.in_progress >= self.args.queue:
            raise Refusal(503, "busy", f"the server is busy: {self.args.queue} requests in progress (--queue); retry "
                                       "in a moment")
        self.in_progress += 1
        self.metrics.in_progress.set(self.in_progress)
        try:
            yield
        finally:
            self.in_progress -= 1
            self.metrics.in_progress.set(self.in_progress)

    async def predict(self, request):
        self.check_ready()
        started = time.perf_counter()
        with self.admitted():
            body = await read_body(request, self.args.max_bytes, self.args.read_timeout)
            files = uploaded_files(body, request.headers.get("content-type"), self.args.max_files)
            named = request.headers.get("content-type", "").lower().startswith("multipart/")
            photos = [await run_in_threadpool(decode_upload, name, data, named) for name, data in files]
            del body, files
            answers = await asyncio.gather(*(asyncio.wrap_future(self.batcher.submit(photo)) for photo in photos))
        return {"model": self.classifier.file.name, "photos": answers,
                "total_ms": round((time.perf_counter() - started) * 1000, 2)}


def refusal_response(refusal, metrics):
    metrics.errors.labels(refusal.reason).inc()
    headers = {"Retry-After": "1"} if refusal.reason == "busy" else {"WWW-Authenticate": "Bearer"} \
        if refusal.status == 401 else {}
    return JSONResponse({"detail": str(refusal)}, refusal.status, headers={**ANSWER_HEADERS, **headers})


def create_app(args):
    """The FastAPI app serving args.model as the flags say; the model loads in the background when the app starts
    (GET /health says when it is ready). Checks MODEL at once: a wrong one is the one-line error."""
    metrics = Metrics()
    service = Service(args, metrics)
    api_key = args.api_key
    page = PAGE.read_text()
    # decode_image refuses a likely bomb by turning its warning into an error inside a catch_warnings block, which
    # concurrent decodes would undo for each other: here it is an error in every thread, for good
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        loading = asyncio.create_task(asyncio.to_thread(service.start))
        yield
        await loading
        service.stop()

    app = FastAPI(title="maskcls", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.middleware("http")
    async def count_and_guard(request, call_next):
        started = time.perf_counter()
        route = request.url.path if request.url.path in ROUTES else "other"
        try:
            check_key(request, api_key)
            response = await call_next(request)
        except Refusal as refusal:
            response = refusal_response(refusal, metrics)
        except Exception as error:  # noqa: BLE001 -- a bug: the log has its traceback, the client one line
            log.error("unexpected error answering %s", request.url.path, exc_info=error)
            metrics.errors.labels("internal").inc()
            response = JSONResponse({"detail": f"internal error: {type(error).__name__} (the server's log has the "
                                               "details)"}, 500, headers=ANSWER_HEADERS)
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(Refusal)
    async def refused(_, refusal):
        return refusal_response(refusal, metrics)

    @app.post("/predict")
    async def predict(request: Request):
        return JSONResponse(await service.predict(request), headers=ANSWER_HEADERS)

    @app.get("/health")
    async def health():
        if service.batcher is None:
            status = f"failed: {service.failure}" if service.failure else "loading"
            return JSONResponse({"status": status}, 503, headers=ANSWER_HEADERS)
        return JSONResponse({"status": "ready", "model": service.classifier.file.name}, headers=ANSWER_HEADERS)

    @app.get("/metadata")
    async def metadata():
        service.check_ready()
        return JSONResponse(service.classifier.metadata(), headers=ANSWER_HEADERS)

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/")
    async def index():
        return HTMLResponse(page, headers=PAGE_HEADERS)

    return app


@contextlib.contextmanager
def serving(app, host="127.0.0.1"):
    """`app` served by uvicorn in a thread of this process on a free port of `host` (tests, embedding), until the
    block ends: yields its base URL once it listens (GET /health says when its model is ready)."""
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn stopped before it listened")
            time.sleep(0.01)
        yield f"http://{host}:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        listener.close()


def check_flags(args):
    args.api_key = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        raise cli.UserError("HTTPS needs both --ssl_certfile and --ssl_keyfile")
    for path in filter(None, (args.ssl_certfile, args.ssl_keyfile)):
        if not Path(path).is_file():
            raise cli.UserError(f"{path} does not exist: pass a PEM file")
    if args.host not in ("127.0.0.1", "localhost", "::1") and args.api_key is None:
        print(f"warning: listening on {args.host} without an API key: anyone who reaches it can use it (set "
              f"--api_key or {API_KEY_VARIABLE})", file=sys.stderr)


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    check_flags(args)
    if args.threads:
        torch.set_num_threads(args.threads)  # MTCNN's small convolutions gain little from more, lose on a busy CPU
    app = create_app(args)
    scheme = app.state.service.classifier.scheme
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    address = f"{'https' if args.ssl_certfile else 'http'}://{args.host}:{args.port}"
    print(f"serving {app.state.service.classifier.source} ({len(scheme.classes)} classes: "
          f"{', '.join(scheme.classes[:6])}{'...' if len(scheme.classes) > 6 else ''}) at {address}: the page at /, "
          f"POST /predict, GET /health /metadata /metrics{'; API key required' if args.api_key else ''}")
    uvicorn.run(app, host=args.host, port=args.port, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                log_level="info", access_log=not args.quiet, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    sys.exit(cli.run(main))
