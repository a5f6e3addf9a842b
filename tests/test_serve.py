"""serve.py: the HTTP API (FastAPI's TestClient, and uvicorn itself where only a socket shows it) on the shared tiny
18-class export and on a class-folder run trained on whole photos."""
import hashlib
import io
import json
import re
import socket
import struct
import tempfile
import time
import zlib

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from skimage.data import astronaut

import serve
from conftest import assert_one_line_error, run_script
from dataset import run_scheme
from faces import create_detector, faces_in
from fileio import load_checkpoint, save_checkpoint
from frame_faces import classify_faces
from generate_sample import generate_classes
from inference import load_run
from model import predict_batch
from photos import decode_image

# The astronaut's face in skimage's 512x512 portrait, by eye: forehead to chin, ear to ear (pixels); as test_faces.py
ASTRONAUT_FACE = (165, 55, 285, 185)
KEY = "door-secret"
ENV = {"OMP_NUM_THREADS": "1"}


def jpeg(pixels, quality=90):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


ASTRONAUT = jpeg(astronaut())
WALL = jpeg(np.full((384, 512, 3), (120, 130, 140), np.uint8))  # a photo without a face


def bomb_png(width=30000, height=30000):
    """A tiny PNG whose header claims width x height pixels: a decompression bomb."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR's width and height, after the signature and chunk header
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def server_args(model, *flags):
    return serve.get_args_parser().parse_args([str(model), "--threads", "0", *map(str, flags)])


def wait_ready(client, headers=None):
    for _ in range(600):
        if client.get("/health", headers=headers).status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready: {client.get('/health').json()}")


@pytest.fixture(scope="module")
def client(exported):
    """The shared tiny 18-class run's directory served (its model_int8.onnx), with an API key and small limits."""
    app = serve.create_app(server_args(exported[0], "--api_key", KEY, "--max_bytes", 1_500_000, "--max_files", 3,
                                       "--batch_wait_ms", 200, "--min_score", 0.5))
    with TestClient(app, headers={"X-API-Key": KEY}) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def whole_photo_run(tmp_path_factory):
    """A class-folder run (mask / no_mask) trained on whole photos (--crop none), tiny: its run directory."""
    root = tmp_path_factory.mktemp("mask")
    generate_classes(root, "mask", people=4, eval_people=0, seed=3)
    for script, *flags in (("preprocess.py", "--data_dir", root / "train", "--group_regex", r"^(\d+)_", "--kfold", "2",
                            "--faces", "off"),
                           ("train.py", "--data_dir", root / "train", "--model_dir", root / "model", "--crop", "none",
                            "--model", "test_resnet", "--resize", "64", "48", "--epochs", "1", "--batch_size", "8",
                            "--workers", "0")):
        result = run_script(script, *flags, env=ENV)
        assert result.returncode == 0, result.stderr[-2000:]
    return root / "model/exp"


def predict(client, body=ASTRONAUT, content_type="image/jpeg", **options):
    return client.post("/predict", content=body, headers={"Content-Type": content_type, **options.pop("headers", {})},
                       **options)


def errors_counted(client, reason):
    """maskcls_errors_total{reason} in the server's /metrics."""
    text = client.get("/metrics").text
    found = re.search(rf'^maskcls_errors_total{{reason="{reason}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_the_astronaut_is_one_face_boxed_on_her_face_classified_as_the_run_crops_it(client, exported):
    response = predict(client)
    assert response.status_code == 200, response.text
    [photo] = response.json()["photos"]
    assert (photo["width"], photo["height"], len(photo["faces"])) == (512, 512, 1)
    [face] = photo["faces"]
    x1, y1, x2, y2 = face["box"]
    left, top, right, bottom = ASTRONAUT_FACE
    assert left < (x1 + x2) / 2 < right and top < (y1 + y2) / 2 < bottom
    assert 0.5 < (x2 - x1) / (right - left) < 1.2 and face["score"] > 0.9  # the face, not the photo nor an eye
    model, config = load_run(exported[0] / "model_int8.onnx", "cpu", task=None)
    classes = run_scheme(config).classes
    assert len(classes) == 18 and face["label"] in classes and list(face["probabilities"]) == classes
    assert face["confidence"] == max(face["probabilities"].values())
    pixels = decode_image(io.BytesIO(ASTRONAUT))
    expected = classify_faces(model, config, run_scheme(config), pixels, faces_in(create_detector(), [pixels])[0][:1],
                              "cpu")[0]
    np.testing.assert_allclose(list(face["probabilities"].values()), expected, atol=1e-5)
    assert photo["detect_ms"] > 0 and photo["classify_ms"] > 0 and response.json()["model"] == "model_int8.onnx"
    assert response.headers["cache-control"] == "no-store"


def test_photos_that_arrive_together_are_one_batch_answered_each_in_order(client):
    alone = predict(client).json()["photos"][0]
    response = client.post("/predict", files=[("photo", ("door.jpg", ASTRONAUT, "image/jpeg")),
                                              ("photo", ("wall.jpg", WALL, "image/jpeg")),
                                              ("photo", ("again.jpg", ASTRONAUT, "image/jpeg"))])
    assert response.status_code == 200, response.text
    photos = response.json()["photos"]
    assert [photo["name"] for photo in photos] == ["door.jpg", "wall.jpg", "again.jpg"]
    assert [photo["batch"] for photo in photos] == [3, 3, 3]  # detected together
    assert photos[1]["faces"] == [] and photos[1]["message"].startswith("no face found")
    assert photos[1]["whole_photo"] is None  # a run of face crops says so rather than guessing
    for photo in (photos[0], photos[2]):
        np.testing.assert_allclose(photo["faces"][0]["box"], alone["faces"][0]["box"], atol=0.2)
        assert photo["faces"][0]["label"] == alone["faces"][0]["label"]


def test_metadata_names_the_scheme_the_crop_and_the_file_with_its_checksum(client, exported):
    metadata = client.get("/metadata").json()
    onnx = exported[0] / "model_int8.onnx"
    assert metadata["file"] == "model_int8.onnx" and metadata["variant"] == "int8"
    assert metadata["sha256"] == hashlib.sha256(onnx.read_bytes()).hexdigest()
    config = json.loads((exported[0] / "config.json").read_text())
    assert metadata["classes"] == run_scheme(config).classes and metadata["scheme"] == config["scheme"]
    assert (metadata["resize"], metadata["crop"], metadata["face_margin"]) == ([64, 48], "face", config["face_margin"])
    assert set(metadata["colours"]) == set(metadata["classes"])
    assert metadata["detector"]["trained_with"] == config["face_detection"]  # faces found as in training
    assert metadata["detector"]["name"] == config["face_detection"].split(":")[0]


def test_another_detector_finds_the_astronaut_too(exported):
    pytest.importorskip("yuface", reason="the yunet detector's package (yuface) is not installed")
    with TestClient(serve.create_app(server_args(exported[0], "--detector", "yunet"))) as client:
        wait_ready(client)
        [photo] = predict(client).json()["photos"]
        assert client.get("/metadata").json()["detector"]["name"] == "yunet"
    [face] = photo["faces"]
    left, top, right, bottom = ASTRONAUT_FACE
    assert left < (face["box"][0] + face["box"][2]) / 2 < right and top < (face["box"][1] + face["box"][3]) / 2 < bottom


def test_a_class_folder_run_of_whole_photos_classifies_a_faceless_photo_whole(whole_photo_run):
    app = serve.create_app(server_args(whole_photo_run))  # no .onnx in the run: its best.pth, eager
    with TestClient(app) as client:
        wait_ready(client)
        response = client.post("/predict", files=[("photo", ("wall.jpg", WALL, "image/jpeg")),
                                                  ("photo", ("door.jpg", ASTRONAUT, "image/jpeg"))])
        metadata = client.get("/metadata").json()
    assert response.status_code == 200, response.text
    wall, door = response.json()["photos"]
    assert metadata["classes"] == ["mask", "no_mask"] and metadata["file"] == "best.pth"
    assert wall["faces"] == [] and "whole photo classified" in wall["message"]
    model, config = load_run(whole_photo_run, "cpu", task=None)
    pixels = torch.from_numpy(decode_image(io.BytesIO(WALL), tuple(config["resize"]))).permute(2, 0, 1)[None]
    expected = predict_batch(model, pixels, config["head"], run_scheme(config), "cpu")[0].numpy()
    np.testing.assert_allclose(list(wall["whole_photo"]["probabilities"].values()), expected, atol=1e-5)
    assert len(door["faces"]) == 1 and door["faces"][0]["label"] in ("mask", "no_mask") and door["whole_photo"] is None


def test_health_is_503_until_the_model_and_detector_are_loaded(exported):
    app = serve.create_app(server_args(exported[0]))
    unstarted = TestClient(app)  # outside `with`, the app's start-up (which loads the model) has not run
    assert unstarted.get("/health").status_code == 503 and unstarted.get("/health").json()["status"] == "loading"
    assert predict(unstarted).status_code == 503 and "still loading" in predict(unstarted).json()["detail"]
    with TestClient(app) as client:
        wait_ready(client)
        assert client.get("/health").json() == {"status": "ready", "model": "model_int8.onnx"}


REFUSALS = {  # name: (request options, status, the message's words, the reason counted in /metrics)
    "too large by its Content-Length": (dict(body=b"\xff" * 1_600_000), 413, "over --max_bytes 1500000", "too_large"),
    "too large as it streams in": (dict(body=[b"\xff" * 800_000] * 2), 413, "over --max_bytes", "too_large"),
    "corrupt": (dict(body=ASTRONAUT[:len(ASTRONAUT) // 2]), 400, "cannot decode the uploaded photo", "bad_photo"),
    "not a photo": (dict(body=b"GIF89a nonsense"), 400, "cannot decode the uploaded photo", "bad_photo"),
    "a decompression bomb": (dict(body=bomb_png(), content_type="image/png"), 400, "decompression bomb", "bad_photo"),
    "no key": (dict(headers={"X-API-Key": ""}), 401, "missing or wrong API key", "unauthorized"),
    "a wrong key": (dict(headers={"X-API-Key": KEY + "x"}), 401, "missing or wrong API key", "unauthorized"),
    "a wrong bearer": (dict(headers={"X-API-Key": "", "Authorization": "Bearer nope"}), 401, "API key",
                       "unauthorized"),
    "text": (dict(body=b"hello", content_type="text/plain"), 415, "Content-Type text/plain", "unsupported_type"),
    "an empty body": (dict(body=b""), 400, "holds no photo", "no_photo"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_every_refusal_has_its_status_and_one_line_and_is_counted(client, name):
    options, status, words, reason = REFUSALS[name]
    before = errors_counted(client, reason)
    response = predict(client, **options)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert words in detail and "\n" not in detail and "Traceback" not in detail
    assert errors_counted(client, reason) == before + 1
    assert re.search(rf'^maskcls_requests_total{{route="/predict",status="{status}"}} [1-9]', client.get("/metrics").text,
                     re.MULTILINE)


def test_multipart_refusals_name_the_file_and_the_limit(client):
    bad = client.post("/predict", files=[("photo", ("door.jpg", ASTRONAUT, "image/jpeg")),
                                         ("photo", ("broken.jpg", b"\xff\xd8 not a jpeg", "image/jpeg"))])
    assert bad.status_code == 400 and bad.json()["detail"].startswith("cannot decode broken.jpg:")
    many = client.post("/predict", files=[("photo", (f"{k}.jpg", WALL, "image/jpeg")) for k in range(4)])
    assert many.status_code == 413 and "at most --max_files 3" in many.json()["detail"]
    fields = client.post("/predict", data={"note": "no file here"}, files=[("empty", ("", b"", "image/jpeg"))])
    assert fields.status_code == 400 and "holds no photo" in fields.json()["detail"]


def test_only_health_is_open_without_the_key(client):
    for path in ("/", "/metadata", "/metrics", "/nowhere"):
        assert client.get(path, headers={"X-API-Key": ""}).status_code == 401, path
    assert client.get("/health", headers={"X-API-Key": ""}).status_code == 200
    assert client.get("/", headers={"X-API-Key": ""}, params={"api_key": KEY}).status_code == 200  # the page's way
    assert client.get("/metadata", headers={"X-API-Key": ""}, params={"api_key": KEY}).status_code == 401
    assert client.get("/metadata", headers={"X-API-Key": "", "Authorization": f"Bearer {KEY}"}).status_code == 200


def test_the_page_is_served_whole_and_loads_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and "getUserMedia" in page.text and "smooth labels" in page.text
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page.text)  # no CDN, no other host
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_a_large_multipart_upload_is_held_in_memory_not_on_disk(client, tmp_path, monkeypatch):
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # where a spooled upload would land
    noise = np.random.default_rng(0).integers(0, 256, (640, 640, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    assert len(buffer.getvalue()) > 1 << 20  # over python-multipart's own in-memory limit
    response = client.post("/predict", files=[("photo", ("noise.png", buffer.getvalue(), "image/png"))])
    assert response.status_code == 200 and response.json()["photos"][0]["width"] == 640
    assert list(spool.iterdir()) == []


def test_non_finite_outputs_are_a_500_that_says_so(exported, tmp_path):
    run = tmp_path / "broken"
    run.mkdir()
    (run / "config.json").write_bytes((exported[0] / "config.json").read_bytes())
    state = load_checkpoint(exported[0] / "best.pth")
    name = next(key for key, value in state["model"].items() if value.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    save_checkpoint(state, run / "best.pth")
    with TestClient(serve.create_app(server_args(run))) as client:
        wait_ready(client)
        response = predict(client)
        assert response.status_code == 500 and "non-finite probabilities" in response.json()["detail"]
        assert errors_counted(client, "non_finite") == 1


def send_slowly(url, content_length):
    """A client that sends its headers and part of a body, then nothing: the socket."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)))
    connection.sendall(f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                       f"Content-Length: {content_length}\r\n\r\n".encode() + ASTRONAUT[:1000])
    return connection


def test_a_full_queue_is_a_503_at_once_and_a_stalled_upload_a_408(exported):
    app = serve.create_app(server_args(exported[0], "--queue", 1, "--read_timeout", 1))
    with serve.serving(app) as url:
        with httpx.Client(base_url=url, timeout=30) as http:
            while http.get("/health").status_code != 200:
                time.sleep(0.05)
            stalled = send_slowly(url, len(ASTRONAUT))  # takes the only place, and holds it
            time.sleep(0.3)
            busy = http.post("/predict", content=ASTRONAUT, headers={"Content-Type": "image/jpeg"})
            assert busy.status_code == 503 and "busy" in busy.json()["detail"] and busy.headers["retry-after"] == "1"
            stalled.settimeout(10)
            assert stalled.recv(4096).startswith(b"HTTP/1.1 408")  # after --read_timeout
            stalled.close()
            answered = http.post("/predict", content=ASTRONAUT, headers={"Content-Type": "image/jpeg"})
            assert answered.status_code == 200 and len(answered.json()["photos"][0]["faces"]) == 1
            metrics = http.get("/metrics").text
    assert 'maskcls_errors_total{reason="busy"} 1.0' in metrics
    assert 'maskcls_errors_total{reason="timeout"} 1.0' in metrics


def test_a_wrong_model_or_flag_is_one_line_before_serving(tmp_path, exported):
    assert_one_line_error(run_script("serve.py", tmp_path / "nothing"), "is not a run directory")
    assert_one_line_error(run_script("serve.py", tmp_path / "nothing.onnx"), "no ONNX model at")
    assert_one_line_error(run_script("serve.py", exported[0], "--ssl_certfile", tmp_path / "cert.pem"),
                          "both --ssl_certfile and --ssl_keyfile")
    args = serve.get_args_parser().parse_args([str(exported[0])])
    assert args.host == "127.0.0.1" and args.max_bytes == 10_000_000  # localhost unless told otherwise
    assert serve.served_model(exported[0], eager=True) == exported[0]
