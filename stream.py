"""Classifies every face of a video stream: faces detected in each frame, classified, followed from frame to frame,
their labels smoothed, and written as an annotated video and a CSV.

    python stream.py clip.mp4 --model_dir model/mask                 # output/annotated.mp4 + output/faces.csv
    python stream.py clip.mp4 --onnx model/mask/model_int8.onnx --every 2 --max_faces 4
    python stream.py frames/ --model_dir model/exp --fps 10          # a folder of photos, in name order
    python stream.py 0 --onnx model.onnx --max_frames 300            # camera 0 (Linux v4l2, macOS avfoundation)
    python stream.py rtsp://camera.local/stream --onnx model.onnx    # any URL FFmpeg reads

SOURCE is a video file or URL (decoded by PyAV, FFmpeg's bindings), a folder of photos (.jpg, .jpeg, .png, sorted
by path), or a camera index. Every `--every` frames the face detector (faces.py, `--detector`) finds the faces (the
`--max_faces` most confident at or over `--min_score`); each is cropped as the run crops its photos (the face box
grown by the run's --face_margin, at its input's aspect ratio) and classified by the run (eager PyTorch,
`--model_dir`) or an exported model (onnxruntime, `--onnx`, see export.py). Faces are followed from one processed
frame to the next by the overlap of their boxes (IoU at least `--iou`), and each one's label is the most probable
class of its probabilities averaged over its last `--smooth` processed frames, which steadies a label that flickers.

Written under `--output_dir`: annotated.mp4, every frame with its faces' boxes, labels, confidences and track
numbers (the frames between two processed ones show the last boxes), and faces.csv, one row per face per
processed frame: frame, time (s), track, box in pixels (x1, y1, x2, y2), detector score, the smoothed label and its
confidence, then this frame's own probability of each class (prob_<class>). Both are complete when the stream ends
or is stopped with Ctrl-C (a camera's usual end). The frames per second achieved are printed at the end.
"""
import collections
import functools
import itertools
import platform
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

import cli
from dataset import run_scheme
from faces import CONFIDENT, add_detection_flags, create_detector, detection_of, faces_in
from fileio import atomic_path, write_csv
from frame_faces import class_colours, classify_faces, face_margin, pixel_box
from inference import load_run
from photos import decode_image, find_photos


def get_args_parser():
    parser = cli.new_parser("Classify every face of a video, photo folder or camera; write an annotated video and a "
                            "CSV.")
    paths = parser.add_argument_group("paths")
    paths.add_argument("source", metavar="SOURCE", help="video file or URL, folder of photos, or camera index")
    cli.add_flag(paths, "model_dir", default=None, help="a run directory of train.py (eager PyTorch)")
    cli.add_flag(paths, "onnx", default=None, metavar="FILE", help="an exported model of export.py (onnxruntime)")
    cli.add_flag(paths, "checkpoint", default="best", choices=("best", "last"), help="--model_dir: which checkpoint")
    cli.add_flag(paths, "output_dir", default=cli.env_default("SM_OUTPUT_DATA_DIR", "output"),
                 help="where annotated.mp4 and faces.csv go (env SM_OUTPUT_DATA_DIR)")
    frames = parser.add_argument_group("frames")
    cli.add_flag(frames, "every", type=cli.positive_int, default=1, help="detect and classify every Nth frame")
    cli.add_flag(frames, "max_frames", type=cli.positive_int, default=None, help="stop after this many frames")
    cli.add_flag(frames, "fps", type=cli.positive_float, default=25.0,
                 help="frame rate of a photo folder (and of a stream that does not say its own)")
    faces = parser.add_argument_group("faces")
    cli.add_flag(faces, "max_faces", type=cli.positive_int, default=8, help="the most confident faces per frame")
    cli.add_flag(faces, "min_score", type=cli.fraction, default=CONFIDENT, help="faces detected with less are ignored")
    add_detection_flags(faces, face_choice=False)
    cli.add_flag(faces, "iou", type=cli.fraction, default=0.3,
                 help="a face continues a track when its box overlaps the track's last box this much")
    cli.add_flag(faces, "smooth", type=cli.positive_int, default=5,
                 help="a track's label averages its probabilities over this many processed frames")
    runtime = parser.add_argument_group("runtime")
    cli.add_flag(runtime, "device", type=cli.device, default="cuda" if torch.cuda.is_available() else "cpu",
                 help="device of the detector and of an eager model")
    cli.add_flag(runtime, "threads", type=cli.non_negative_int, default=0,
                 help="--onnx: onnxruntime's intra-op threads (0: its own choice)")
    return parser


def load_classifier(args, device):
    """(model, config) of --model_dir or --onnx, exactly one of them."""
    if (args.model_dir is None) == (args.onnx is None):
        raise cli.UserError("pass the classifier: --model_dir RUN_DIR or --onnx FILE (one of them)")
    source = Path(args.onnx or args.model_dir)
    model, config = load_run(source, device, args.checkpoint, task=None, threads=args.threads)  # any task's classes
    if config.get("crop", "none") != "face":
        print(f"{source} was trained on {config.get('crop', 'none')} crops, not faces: its faces are cropped with a "
              f"margin of {face_margin(config)}, and its labels may be off", file=sys.stderr)
    return model.eval(), config


def camera_input(index):
    """av.open's arguments for camera `index` on this platform."""
    system = platform.system()
    if system == "Linux":
        return f"/dev/video{index}", "v4l2"
    if system == "Darwin":
        return str(index), "avfoundation"
    raise cli.UserError(f"camera {index}: cameras are read on Linux (v4l2) and macOS (avfoundation) only; pass a "
                        "video file or URL")


def open_video(source):
    """The PyAV container of a video file, URL or camera index, with a one-line error when it does not open."""
    target, input_format = camera_input(source) if source.isdigit() else (source, None)
    if "://" not in source and not source.isdigit() and not Path(source).is_file():
        raise cli.UserError(f"{source} is neither a video file, a folder of photos, a camera index nor a URL")
    try:
        container = av.open(target, format=input_format, timeout=10)
    except (av.FFmpegError, OSError) as error:
        raise cli.UserError(f"cannot open {source} as a video: {cli.first_line(error)}") from None
    if not container.streams.video:
        container.close()
        raise cli.UserError(f"{source} holds no video stream")
    return container


def video_frames(container, source):
    """(RGB uint8 array, time in seconds) of every frame of the container's first video stream."""
    try:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24"), frame.time
    except av.FFmpegError as error:
        raise cli.UserError(f"cannot decode {source}: {cli.first_line(error)}") from None
    finally:
        container.close()


def folder_photos(folder):
    """The photos of a folder (dataset.find_photos), refused when there are none."""
    photos = find_photos(folder)
    if not photos:
        raise cli.UserError(f"{folder} holds no photos (.jpg, .jpeg, .png)")
    return photos


def open_source(args):
    """(frames, frame rate, number of frames or None): the frames of SOURCE as (RGB uint8 array, time in seconds or
    None) pairs."""
    if Path(args.source).is_dir():
        photos = folder_photos(args.source)
        return ((decode_image(photo), index / args.fps) for index, photo in enumerate(photos)), args.fps, len(photos)
    container = open_video(args.source)
    stream = container.streams.video[0]
    rate = float(stream.average_rate) if stream.average_rate else args.fps
    return video_frames(container, args.source), rate, stream.frames or None


def box_overlap(box, other):
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    width = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
    height = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
    union = (box[2] - box[0]) * (box[3] - box[1]) + (other[2] - other[0]) * (other[3] - other[1]) - width * height
    return width * height / union if union > 0 else 0.0


class Tracks:
    """Faces followed across processed frames: a face continues the unmatched track whose last box it overlaps most
    (IoU at least `min_iou`), else starts a new one; a track keeps its last `window` probability vectors and ends
    when a processed frame does not see it."""

    def __init__(self, min_iou, window):
        self.min_iou, self.window = min_iou, window
        self.last_box, self.history, self.numbers = {}, {}, itertools.count()

    def update(self, boxes, probabilities):
        """The track number and smoothed probabilities of each face of a frame (boxes in pixels)."""
        pairs = sorted(((box_overlap(box, last), face, track) for face, box in enumerate(boxes)
                        for track, last in self.last_box.items()), reverse=True)
        assigned, taken = {}, set()
        for overlap, face, track in pairs:
            if overlap >= self.min_iou and face not in assigned and track not in taken:
                assigned[face] = track
                taken.add(track)
        tracks = [assigned.get(face, None) for face in range(len(boxes))]
        tracks = [next(self.numbers) if track is None else track for track in tracks]
        self.last_box = dict(zip(tracks, boxes))
        self.history = {track: self.history.get(track, collections.deque(maxlen=self.window)) for track in tracks}
        for track, vector in zip(tracks, probabilities):
            self.history[track].append(vector)
        return tracks, [np.mean(self.history[track], axis=0) for track in tracks]


class Annotator:
    """Draws boxes, labels, confidences and track numbers on frames."""

    def __init__(self, classes, height):
        self.colours = class_colours(classes)
        self.font = ImageFont.load_default(size=max(12, height // 30))

    def draw(self, frame, faces):
        image = Image.fromarray(frame)
        canvas = ImageDraw.Draw(image)
        for face in faces:
            colour = self.colours[face["label"]]
            box = [face["x1"], face["y1"], face["x2"], face["y2"]]
            canvas.rectangle(box, outline=colour, width=max(2, image.height // 150))
            text = f"{face['label']} {face['confidence']:.2f} #{face['track']}"
            left, top, right, bottom = canvas.textbbox((box[0], box[1]), text, font=self.font, anchor="lb")
            canvas.rectangle([left - 2, top - 2, right + 2, bottom + 2], fill=colour)
            canvas.text((box[0], box[1]), text, fill="white", font=self.font, anchor="lb")
        return np.asarray(image)


class VideoWriter:
    """Frames encoded into an MP4 file at `path` (H.264, yuv420p, `rate` frames/s), its size taken from the first
    frame, trimmed to even sides as yuv420p needs (later frames of another size, a photo folder's, are resized)."""

    def __init__(self, path, rate):
        self.path, self.rate, self.container = path, rate, None

    def write(self, frame):
        if self.container is None:
            self.container = av.open(str(self.path), "w", format="mp4")
            self.stream = self.container.add_stream("libx264", rate=Fraction(self.rate).limit_denominator(1001))
            self.stream.height, self.stream.width = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
            self.stream.pix_fmt = "yuv420p"
        if frame.shape[:2] != (self.stream.height, self.stream.width):
            frame = np.asarray(Image.fromarray(frame).resize((self.stream.width, self.stream.height)))
        image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        self.container.mux(self.stream.encode(image))

    def close(self):
        if self.container is not None:
            self.container.mux(self.stream.encode())  # flushes the frames the encoder holds
            self.container.close()


def process(frame, frame_index, seconds, *, detector, model, config, scheme, tracks, args, device):
    """The CSV rows of one processed frame: its faces, classified and tracked."""
    found = [face for face in faces_in(detector, [frame])[0] if face.score >= args.min_score][:args.max_faces]
    if not found:
        tracks.update([], [])
        return []
    classes = scheme.classes
    probabilities = classify_faces(model, config, scheme, frame, found, device)
    boxes = [pixel_box(face, frame) for face in found]
    numbers, smoothed = tracks.update(boxes, probabilities)
    return [{"frame": frame_index, "time": round(seconds, 4), "track": track,
             **dict(zip(("x1", "y1", "x2", "y2"), np.round(box, 1))), "score": round(detection_score, 4),
             "label": classes[int(np.argmax(mean))], "confidence": float(np.max(mean)),
             **{f"prob_{name}": float(value) for name, value in zip(classes, vector)}}
            for (_, detection_score, _), box, track, mean, vector in zip(found, boxes, numbers, smoothed,
                                                                          probabilities)]


def annotate(frames, args, rate, total, writer, analyse, classes):
    """Feeds every frame (up to --max_frames) to `analyse` every --every frames and writes it annotated with the
    faces last found (boxes coloured by their label among `classes`); returns (CSV rows, frames seen, frames
    processed). Ctrl-C ends the stream, keeping what was seen."""
    rows, shown, annotator, seen, processed = [], [], None, 0, 0
    try:
        for index, (frame, seconds) in enumerate(tqdm(itertools.islice(frames, args.max_frames), total=total,
                                                      desc="frames", unit="frame")):
            if index % args.every == 0:
                shown = analyse(frame, index, index / rate if seconds is None else seconds)
                rows.extend(shown)
                processed += 1
            annotator = annotator or Annotator(classes, frame.shape[0])
            writer.write(annotator.draw(frame, shown))
            seen += 1
    except KeyboardInterrupt:
        print(f"stopped at frame {seen}: keeping what was seen", file=sys.stderr)
    return rows, seen, processed


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    device = torch.device(args.device)
    model, config = load_classifier(args, device)
    frames, rate, count = open_source(args)
    detection = detection_of(args)
    detector = create_detector(device, detection.min_face_size, detection.detector)
    tracks = Tracks(args.iou, args.smooth)
    scheme = run_scheme(config)
    analyse = functools.partial(process, detector=detector, model=model, config=config, scheme=scheme, tracks=tracks,
                                args=args, device=device)
    output_dir, started = Path(args.output_dir), time.perf_counter()
    total = min(filter(None, (count, args.max_frames)), default=None)
    with atomic_path(output_dir / "annotated.mp4") as temporary:  # a failed stream leaves no half video
        writer = VideoWriter(temporary, rate)
        try:
            rows, seen, processed = annotate(frames, args, rate, total, writer, analyse, scheme.classes)
        finally:
            writer.close()
        if not seen:
            raise cli.UserError(f"{args.source} gave no frame")
    write_csv(pd.DataFrame(rows, columns=csv_columns(scheme.classes)), output_dir / "faces.csv")
    seconds = time.perf_counter() - started
    print(f"{seen} frames ({processed} processed, {len(rows)} faces) in {seconds:.1f} s: {seen / seconds:.1f} "
          f"frames/s, {processed / seconds:.1f} processed frames/s; wrote {output_dir / 'annotated.mp4'} and "
          f"{output_dir / 'faces.csv'}")


def csv_columns(classes):
    return ["frame", "time", "track", "x1", "y1", "x2", "y2", "score", "label", "confidence",
            *(f"prob_{name}" for name in classes)]


if __name__ == "__main__":
    sys.exit(cli.run(main))
