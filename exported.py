"""An exported classifier as one .onnx file: what it carries besides its graph, and running it as a run is run.

Not a script: export.py writes these files, inference.py (`--onnx FILE`, TTA and folder sorting included) and
stream.py run them with onnxruntime.

The graph takes uint8 (N, 3, H, W) photos at the run's --resize, normalises them itself and ends in the scheme's
class probabilities (N, C), a multi head's task softmaxes already multiplied. The model's metadata (the key
`maskcls`, JSON) holds what a deployment needs to feed it: the label scheme and its class names, the input size and
the crop (--crop, --face_margin, --crop_box), with the run's model, head, task and fold. So the .onnx alone is enough.
"""
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from cli import UserError, first_line
from dataset import run_scheme

METADATA_KEY = "maskcls"
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
DEPLOYED_KEYS = ("model", "head", "task", "fold", "scheme", "resize", "crop", "face_margin", "crop_box",
                 "augmentation")


def deployment_config(config, variant):
    """The part of a run's config.json that the exported model carries, with its class names and its `variant`."""
    deployed = {key: config.get(key) for key in DEPLOYED_KEYS}
    deployed["crop"] = config.get("crop", "none")  # runs saved before crops existed saw the whole photo
    return {**deployed, "classes": run_scheme(config).classes, "variant": variant}


def with_metadata(model_proto, config, variant):
    """The ONNX model with the run's deployment config in its metadata (the other entries kept)."""
    onnx.helper.set_model_props(model_proto, {
        **{prop.key: prop.value for prop in model_proto.metadata_props if prop.key != METADATA_KEY},
        METADATA_KEY: json.dumps(deployment_config(config, variant))})
    return model_proto


def read_config(path):
    """The deployment config an exported model carries (deployment_config), checked: one line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no ONNX model at {path}: export a run with export.py")
    try:
        model_proto = onnx.load(path, load_external_data=False)
    except Exception as error:  # noqa: BLE001 -- protobuf's parse errors have no common type
        raise UserError(f"cannot read {path} as an ONNX model: {first_line(error)}") from None
    props = {prop.key: prop.value for prop in model_proto.metadata_props}
    if METADATA_KEY not in props:
        raise UserError(f"{path} carries no {METADATA_KEY} metadata: export the run with export.py")
    try:
        config = json.loads(props[METADATA_KEY])
        run_scheme(config)
    except (ValueError, TypeError, KeyError, AttributeError):
        raise UserError(f"{path}: its {METADATA_KEY} metadata is not what export.py writes") from None
    resize = config.get("resize")
    if not (isinstance(resize, list) and len(resize) == 2 and all(type(side) is int and side > 0 for side in resize)):
        raise UserError(f"{path}: its {METADATA_KEY} metadata has no valid resize")
    return config


def create_session(path, threads=0):
    """An onnxruntime session of the model at `path`, `threads` intra-op threads (0: onnxruntime's choice)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=onnxruntime.get_available_providers())
    except Exception as error:  # noqa: BLE001 -- onnxruntime's load errors have no common type
        raise UserError(f"onnxruntime cannot load {path}: {first_line(error)}") from None


def as_uint8(images):
    """A batch as the uint8 numpy array the graph takes: uint8 unchanged, floats in [0, 1] (TTA's views) rounded."""
    if images.dtype != torch.uint8:
        images = images.float().mul(255).round_().clamp_(0, 255).to(torch.uint8)
    return images.cpu().numpy()


class OnnxClassifier(nn.Module):
    """An exported model where inference expects a trained one: `forward` takes a batch (uint8, or floats in [0, 1])
    and returns the log of the graph's class probabilities, on the batch's device. `config` is the model's own with
    the head `single`: a single head's softmax turns those logs back into the very probabilities, so inference.py's
    and inference_tta.py's predictions work unchanged."""

    def __init__(self, path, threads=0):
        super().__init__()
        self.path, self.session = Path(path), create_session(path, threads)
        self.config = {**read_config(path), "head": "single"}

    def forward(self, images):
        probabilities = self.session.run([OUTPUT_NAME], {INPUT_NAME: as_uint8(images)})[0]
        return torch.from_numpy(np.log(np.maximum(probabilities, np.finfo(np.float32).tiny))).to(images.device)
