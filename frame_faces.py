"""The faces of a picture already decoded (a video frame, an uploaded photo) cut out as a run cuts its photos and
classified, and the colour each class is drawn in.

Not a script: stream.py (video frames) and serve.py (uploaded photos, camera frames of its page) share it.

A face's crop is its box grown by the run's --face_margin (faces.grow), fitted to the run's input aspect ratio and
resized by photos.crop_pixels, exactly as training decodes a face; the classes' probabilities are the run's
(model.predict_batch), for an eager run and an exported one alike.
"""
import numpy as np
import torch

from faces import grow
from model import predict_batch
from photos import crop_pixels

DEFAULT_MARGIN = 0.4  # train.py's --face_margin, for exported configs of runs older than the flag
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#9a6324",
           "#800000"]


def face_margin(config):
    """The run's --face_margin, or train.py's default for a config that has none."""
    margin = config.get("face_margin")
    return DEFAULT_MARGIN if margin is None else margin


def face_crops(config, frame, faces):
    """The uint8 (N, 3, H, W) crops of `faces` (faces.Face, fractions of `frame`) at the run's --resize."""
    size, regions = tuple(config["resize"]), grow([face.box for face in faces], face_margin(config))
    return torch.stack([torch.from_numpy(crop_pixels(frame, size, region)).permute(2, 0, 1) for region in regions])


def classify_crops(model, config, scheme, crops, device):
    """Class probabilities (N, C) of a uint8 batch of crops, as a numpy array."""
    return predict_batch(model, crops, config["head"], scheme, device).numpy()


def classify_faces(model, config, scheme, frame, faces, device):
    """Each face's class probabilities: its box grown by the run's margin, cropped and resized as at training."""
    return classify_crops(model, config, scheme, face_crops(config, frame, faces), device)


def class_colours(classes):
    """The colour of each class, by its index: the same in annotated videos and on the server's page."""
    return {name: PALETTE[index % len(PALETTE)] for index, name in enumerate(classes)}


def pixel_box(face, frame):
    """A face's box (x1, y1, x2, y2) in pixels of `frame`."""
    height, width = frame.shape[:2]
    return tuple(np.asarray(face.box) * [width, height, width, height])
