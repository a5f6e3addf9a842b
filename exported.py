"""An exported classifier as one .onnx file: what it carries besides its graph, and running it as a run is run.

Not a script: export.py writes these files, inference.py (`--onnx FILE`, TTA and folder sorting included) and
stream.py run them with onnxruntime.

The graph takes uint8 (N, 3, H, W) photos at the run's --resize, normalises them itself and ends in the scheme's
class probabilities (N, C), a multi head's task softmaxes already multiplied. The model's metadata (the key
`maskcls`, JSON) holds what a deployment needs to feed it: the label scheme and its class names, the input size and
the crop (--crop, --face_margin, --crop_box), with the run's model, head, task and fold. So the .onnx alone is enough.

Nothing a file carries is trusted: read_config checks the metadata (check_config: the scheme and its class names,
task, resize, crop, margin and box, the very checks a run's config.json gets at inference) and that it describes
the graph (uint8 (N, 3, H, W) in at the metadata's resize, one probability per class out).
"""
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from cli import UserError, first_line
from dataset import run_scheme
from faces import CROP_MODES, Detection

METADATA_KEY = "maskcls"
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
DEPLOYED_KEYS = ("model", "head", "task", "fold", "scheme", "resize", "crop", "face_margin", "crop_box",
                 "augmentation", "face_detection")
MAX_FACE_MARGIN = 100  # face widths on each side: far past the whole photo for any face a detector finds


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


def is_number(value):
    return type(value) in (int, float) and math.isfinite(value)  # JSON's true is no number, nor NaN or Infinity


def check_config(config, source):
    """The label scheme of a run's config.json or an exported model's metadata, after checking what predicting needs
    of it: the scheme, its class names and the task (dataset.run_scheme), the resize, and the crop, its face margin
    and box as train.py takes them, and the face detection. One line naming `source` and the key otherwise."""
    if not isinstance(config, dict):
        raise UserError(f"{source} is not a table of keys and values")
    scheme = run_scheme(config, source)
    resize = config.get("resize")
    if not (isinstance(resize, list) and len(resize) == 2 and all(type(side) is int and side > 0 for side in resize)):
        raise UserError(f"{source}: resize is {resize!r}, not two positive integers (height, width)")
    crop = config.get("crop", "none")  # runs saved before crops existed saw the whole photo
    if crop not in CROP_MODES:
        raise UserError(f"{source}: crop is {crop!r}, not one of {', '.join(CROP_MODES)}")
    margin = config.get("face_margin")  # stream.py grows the faces it finds by it whatever the run's crop
    if (crop == "face" or margin is not None) and not (is_number(margin) and 0 <= margin <= MAX_FACE_MARGIN):
        raise UserError(f"{source}: face_margin is {margin!r}, not a number from 0 to {MAX_FACE_MARGIN}")
    box = config.get("crop_box")
    if crop == "box" and not (isinstance(box, list) and len(box) == 4 and all(map(is_number, box))
                              and 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
        raise UserError(f"{source}: crop_box is {box!r}, not four fractions x1 y1 x2 y2 of the photo with "
                        "x1 < x2 and y1 < y2")
    if config.get("face_detection") is not None:
        try:
            Detection.from_signature(config["face_detection"])
        except UserError as error:
            raise UserError(f"{source}: {error}") from None
    return scheme


def dimensions(value_info):
    """The element type and the dimensions (an int each, None where the graph leaves it free) of a graph input's
    or output's tensor, None for a value that is no tensor."""
    if not value_info.type.HasField("tensor_type"):
        return None, None
    tensor = value_info.type.tensor_type
    return tensor.elem_type, [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim]


def shape_text(shape):
    return "(" + ", ".join("?" if side is None else str(side) for side in shape) + ")"


def type_name(element_type):
    return onnx.TensorProto.DataType.Name(element_type) if element_type in onnx.TensorProto.DataType.values() \
        else str(element_type)


def check_graph(model_proto, config, scheme, path):
    """Refuses a model whose graph is not what its metadata describes: one uint8 input `images` (N, 3, H, W) at
    the metadata's resize and one float output `probabilities` (N, the scheme's class count)."""
    inputs = {value.name: dimensions(value) for value in model_proto.graph.input}
    outputs = {value.name: dimensions(value) for value in model_proto.graph.output}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise UserError(f"{path} has no input {INPUT_NAME!r} and output {OUTPUT_NAME!r}: it is no model export.py "
                        "wrote")
    (in_type, in_shape), (out_type, out_shape) = inputs[INPUT_NAME], outputs[OUTPUT_NAME]
    expected = [None, 3, *config["resize"]]
    if in_type != onnx.TensorProto.UINT8 or in_shape is None or len(in_shape) != 4 or any(
            side is not None and side not in (0, want) for side, want in zip(in_shape[1:], expected[1:])):
        raise UserError(f"{path}: its graph takes {type_name(in_type)} images of shape {shape_text(in_shape or [])}, "
                        f"not UINT8 (?, 3, {config['resize'][0]}, {config['resize'][1]}) as its metadata's resize "
                        "says")
    if out_shape is None or len(out_shape) != 2 or out_shape[1] not in (None, 0, scheme.num_classes):
        raise UserError(f"{path}: its graph gives probabilities of shape {shape_text(out_shape or [])}, not one per "
                        f"class of the {scheme.num_classes} its metadata names")
    if out_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
        raise UserError(f"{path}: its graph gives probabilities of type {type_name(out_type)}, not floats")


def read_config(path):
    """The deployment config an exported model carries (deployment_config), checked (check_config) and checked
    against the graph (check_graph): one line otherwise."""
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
    except (ValueError, RecursionError):
        raise UserError(f"{path}: its {METADATA_KEY} metadata is not JSON, as export.py writes it") from None
    source = f"{path}'s {METADATA_KEY} metadata"
    scheme = check_config(config, source)
    if config.get("classes") != scheme.classes:
        raise UserError(f"{source}: its classes are not those of its label scheme ({len(scheme.classes)} classes: "
                        f"{', '.join(scheme.classes[:3])}{', ...' if len(scheme.classes) > 3 else ''})")
    check_graph(model_proto, config, scheme, path)
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
        classes = len(self.config["classes"])
        if probabilities.shape != (len(images), classes):  # a graph whose shapes its declaration left free
            raise UserError(f"{self.path} gave probabilities of shape {probabilities.shape} for {len(images)} photos "
                            f"of its {classes} classes: it is not the model its metadata describes")
        probabilities = probabilities.astype(np.float32)
        return torch.from_numpy(np.log(np.maximum(probabilities, np.finfo(np.float32).tiny))).to(images.device)
