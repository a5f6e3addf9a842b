"""stream.py: every face of every processed frame classified, tracked and written to faces.csv and annotated.mp4."""
from types import SimpleNamespace

import av
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage.data import astronaut

from conftest import assert_one_line_error, run_script
from photos import decode_image
from faces import create_detector, faces_in
from stream import Tracks, VideoWriter, annotate, box_overlap

FRAMES, WIDTH, HEIGHT = 8, 320, 256


def write_video(path, frames, rate=5):
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=rate)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    for frame in frames:
        container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
    container.close()


def read_video(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def clip(sample_data, exported, tmp_path_factory):
    """A short video: a real face (scikit-image's astronaut) moving right over a generated photo's background, and
    model/exp, the tiny exported run, to classify it with."""
    folder = tmp_path_factory.mktemp("stream")
    face = np.asarray(Image.fromarray(astronaut()).resize((HEIGHT, HEIGHT)))
    background = np.asarray(Image.fromarray(decode_image(next((sample_data / "eval/images").iterdir())))
                            .resize((WIDTH, HEIGHT)))
    frames = []
    for k in range(FRAMES):
        frame = background.copy()
        frame[:, 6 * k:6 * k + HEIGHT] = face
        frames.append(frame)
    write_video(folder / "clip.mp4", frames)
    (folder / "model").symlink_to(exported[0].parent)  # the tiny exported run, as model/exp
    return folder


def stream(clip, output, *flags):
    return run_script("stream.py", clip / "clip.mp4", "--output_dir", output, *flags)


def test_every_face_of_every_processed_frame_gets_one_row(clip, tmp_path):
    result = stream(clip, tmp_path, "--model_dir", clip / "model/exp", "--every", "2", "--min_score", "0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "faces.csv")
    detector = create_detector()
    frames = read_video(clip / "clip.mp4")
    expected = {index: sum(face.score >= 0.5 for face in faces_in(detector, [frame])[0])
                for index, frame in enumerate(frames) if index % 2 == 0}
    assert sum(expected.values()) >= FRAMES // 2  # the astronaut is found in every processed frame
    assert rows.groupby("frame").size().reindex(list(expected), fill_value=0).to_dict() == expected
    most_confident = rows.loc[rows.groupby("frame")["score"].idxmax()]
    assert most_confident["track"].nunique() == 1  # one track follows the astronaut across the frames
    probabilities = rows.filter(like="prob_").to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    assert set(rows["label"]) <= {column[len("prob_"):] for column in rows.filter(like="prob_").columns}
    assert rows["time"].is_monotonic_increasing and "frames/s" in result.stdout


def test_the_annotated_video_decodes_with_every_frame_and_drawn_boxes(clip, tmp_path):
    result = stream(clip, tmp_path, "--model_dir", clip / "model/exp")
    assert result.returncode == 0, result.stderr[-3000:]
    annotated, original = read_video(tmp_path / "annotated.mp4"), read_video(clip / "clip.mp4")
    assert len(annotated) == len(original) and annotated[0].shape == original[0].shape
    rows = pd.read_csv(tmp_path / "faces.csv")
    first = rows[rows["frame"] == 0].iloc[0]
    x1, y1, x2, y2 = (int(first[name]) for name in ("x1", "y1", "x2", "y2"))
    edge = slice(y1 + 2, y2 - 2), slice(x1 - 1, x1 + 2)  # the box's left edge, drawn in a class colour
    assert np.abs(annotated[0][edge].astype(int) - original[0][edge].astype(int)).mean() > 20


def test_onnx_and_eager_label_the_faces_alike(clip, tmp_path):
    eager = stream(clip, tmp_path / "eager", "--model_dir", clip / "model/exp")
    exported = stream(clip, tmp_path / "onnx", "--onnx", clip / "model/exp/model.onnx")
    assert eager.returncode == 0 and exported.returncode == 0, (eager.stderr + exported.stderr)[-3000:]
    eager_rows, onnx_rows = (pd.read_csv(tmp_path / name / "faces.csv") for name in ("eager", "onnx"))
    pd.testing.assert_series_equal(onnx_rows["label"], eager_rows["label"])
    np.testing.assert_allclose(onnx_rows.filter(like="prob_"), eager_rows.filter(like="prob_"), atol=1e-4)


def test_a_folder_of_photos_is_a_stream(clip, sample_data, tmp_path):
    photos = sorted((sample_data / "eval/images").iterdir())[:3]
    folder = tmp_path / "frames"
    folder.mkdir()
    for photo in photos:
        (folder / photo.name).write_bytes(photo.read_bytes())
    result = run_script("stream.py", folder, "--onnx", clip / "model/exp/model.onnx", "--output_dir", tmp_path / "out",
                        "--fps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(read_video(tmp_path / "out/annotated.mp4")) == 3
    assert "3 frames" in result.stdout


@pytest.mark.parametrize("damage, flags, message", [
    (lambda clip: (clip / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4),
     lambda clip: [clip / "bad.mp4", "--model_dir", clip / "model/exp"], "cannot"),
    (lambda clip: (clip / "bad.onnx").write_bytes(b"garbage"),
     lambda clip: [clip / "clip.mp4", "--onnx", clip / "bad.onnx"], "cannot read"),
    (lambda clip: None, lambda clip: [clip / "missing.mp4", "--model_dir", clip / "model/exp"],
     "neither a video file"),
    (lambda clip: None, lambda clip: [clip / "clip.mp4"], "--model_dir RUN_DIR or --onnx FILE"),
])
def test_a_broken_source_or_model_is_one_line_and_writes_nothing(clip, tmp_path, damage, flags, message):
    damage(clip)
    result = run_script("stream.py", *flags(clip), "--output_dir", tmp_path / "out")
    assert_one_line_error(result, message)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_tracks_follow_overlapping_boxes_and_smooth_their_labels():
    tracks = Tracks(min_iou=0.3, window=2)
    first, _ = tracks.update([(0, 0, 10, 10), (50, 50, 60, 60)], [np.array([1.0, 0.0]), np.array([0.0, 1.0])])
    second, smoothed = tracks.update([(52, 51, 62, 61), (1, 0, 11, 10)], [np.array([1.0, 0.0]), np.array([0.0, 1.0])])
    assert second == [first[1], first[0]]
    np.testing.assert_allclose(smoothed, [[0.5, 0.5], [0.5, 0.5]])
    third, _ = tracks.update([(200, 200, 210, 210)], [np.array([1.0, 0.0])])
    assert third[0] not in first
    assert box_overlap((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_ctrl_c_ends_the_stream_keeping_every_frame_seen(tmp_path):
    def camera():  # a camera stream stopped by the user after three frames
        for index in range(3):
            yield np.full((HEIGHT, WIDTH, 3), 40 * index, np.uint8), None
        raise KeyboardInterrupt

    def analyse(frame, index, seconds):
        return [{"frame": index, "time": seconds, "track": 0, "x1": 10, "y1": 10, "x2": 60, "y2": 60, "score": 1.0,
                 "label": "face", "confidence": 0.9}]

    writer = VideoWriter(tmp_path / "annotated.mp4", rate=5)
    rows, seen, processed = annotate(camera(), SimpleNamespace(max_frames=None, every=1), 5, None, writer, analyse,
                                     ["face"])
    writer.close()
    assert (seen, processed, [row["frame"] for row in rows]) == (3, 3, [0, 1, 2])
    assert [row["time"] for row in rows] == [0.0, 0.2, 0.4]  # a stream without timestamps: index / rate
    assert len(read_video(tmp_path / "annotated.mp4")) == 3
