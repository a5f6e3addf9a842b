"""serve.py's page in a real browser: Debian's Chromium driven by Playwright (launched from its path: Playwright cannot
download its own browsers here), its camera Chromium's fake one fed a clip made from a photo. Screenshots are kept in
each test's tmp_path."""
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from skimage.data import astronaut

import serve

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -r "
                                                             "requirements.txt")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.slow,  # a real browser: `make test-fast` leaves it out
              pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="no Chromium at /usr/bin/chromium: `make "
                                 "browser` installs Debian's (apt-get install chromium)")]
# headless as root, and nothing reached for beyond the page's own server
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CLIP_SIZE, FACE_SIDE = (480, 640), 400
ASTRONAUT_FACE = (165, 55, 285, 185)  # her face in the 512x512 portrait, pixels (as test_faces.py)


def write_y4m(path, frames, rate=10):
    """RGB uint8 frames as a Y4M clip (4:2:0), the format of Chromium's --use-file-for-fake-video-capture."""
    height, width = frames[0].shape[:2]
    with open(path, "wb") as clip:
        clip.write(f"YUV4MPEG2 W{width} H{height} F{rate}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            red, green, blue = np.moveaxis(frame.astype(np.float32), 2, 0)
            luma = 0.299 * red + 0.587 * green + 0.114 * blue
            planes = [luma, 128 - 0.168736 * red - 0.331264 * green + 0.5 * blue,
                      128 + 0.5 * red - 0.418688 * green - 0.081312 * blue]
            planes[1:] = [plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3)) for plane in planes[1:]]
            clip.write(b"FRAME\n" + b"".join(np.clip(plane.round(), 0, 255).astype(np.uint8).tobytes()
                                             for plane in planes))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 640x480 clip of the astronaut's portrait moving right and back over a grey wall, as Chromium loops it: (path,
    the portrait's x offsets)."""
    face = np.asarray(Image.fromarray(astronaut()).resize((FACE_SIDE, FACE_SIDE)))
    frames, offsets = [], [60 + 6 * k for k in (*range(10), *range(9, -1, -1))]
    for offset in offsets:
        frame = np.full((*CLIP_SIZE, 3), 110, np.uint8)
        frame[40:40 + FACE_SIDE, offset:offset + FACE_SIDE] = face
        frames.append(frame)
    path = tmp_path_factory.mktemp("camera") / "door.y4m"
    write_y4m(path, frames)
    return path, offsets


@pytest.fixture(scope="module")
def server(exported):
    """The shared tiny 18-class export served by uvicorn on a free port of 127.0.0.1: its URL, once ready."""
    with serve.serving(serve.create_app(serve.get_args_parser().parse_args([str(exported[0]), "--threads", "0",
                                                                            "--min_score", "0.5"]))) as url:
        for _ in range(600):
            if httpx.get(f"{url}/health").status_code == 200:
                break
            time.sleep(0.05)
        yield url


@pytest.fixture(scope="module")
def browser(clip):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            *LAUNCH_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={clip[0]}"])
        yield browser
        browser.close()


def wait_until(page, expression, timeout=30):
    """Polls a JS expression of the page until it is true (Playwright's wait_for_function evaluates strings, which
    the page's Content-Security-Policy forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"{expression}: still false after {timeout} s; {page.evaluate('window.maskcls')}"
        time.sleep(0.1)


@pytest.fixture
def page(browser, server):
    """A fresh page of the server, ready, with every console error, page error and failed request it meets in
    page.problems."""
    page = browser.new_page()
    page.problems = []
    page.on("console", lambda message: message.type == "error" and page.problems.append(message.text))
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.on("requestfailed", lambda request: page.problems.append(f"{request.url}: {request.failure}"))
    page.goto(server)
    wait_until(page, "window.maskcls.phase === 'ready'", 20)
    yield page
    page.close()


# the page's state and, read in the same turn of its event loop, the canvas pixel on the first box's left edge
SNAPSHOT = """() => {
  const view = document.getElementById("view"), box = window.maskcls.drawn.length ? window.maskcls.drawn[0].box : null;
  const edge = box ? view.getContext("2d").getImageData(Math.round(box[0]), Math.round((box[1] + box[3]) / 2), 1, 1)
    : null;
  return {state: window.maskcls, canvas: [view.width, view.height], edge: edge ? Array.from(edge.data.slice(0, 3)) : null};
}"""


def rgb(colour):
    return [int(colour[k:k + 2], 16) for k in (1, 3, 5)]


def test_the_page_loads_its_classes_without_a_console_error(page, exported):
    assert page.locator("#legend li").count() == 18
    assert page.locator("#status").inner_text().startswith("model_int8.onnx: 18 classes")
    assert page.is_enabled("#camera") and page.is_enabled("#photo")
    assert page.problems == []


def test_an_uploaded_photo_comes_back_with_its_face_boxed_on_the_canvas(page, tmp_path):
    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut()).save(photo)
    page.set_input_files("#photo", photo)
    wait_until(page, "window.maskcls.answers >= 1", 20)
    snapshot = page.evaluate(SNAPSHOT)
    state = snapshot["state"]
    assert state["source"] == "photo" and len(state["drawn"]) == 1
    [drawn] = state["drawn"]
    x1, y1, x2, y2 = drawn["box"]  # canvas pixels: the canvas is the photo's 512x512
    left, top, right, bottom = ASTRONAUT_FACE
    assert left < (x1 + x2) / 2 < right and top < (y1 + y2) / 2 < bottom and 0.5 < (x2 - x1) / (right - left) < 1.2
    assert drawn["label"] in state["metadata"]["classes"]
    assert snapshot["edge"] == rgb(drawn["colour"])  # the box is on the canvas, in its class colour
    assert page.locator("#faces tr").count() == 1 and drawn["label"] in page.locator("#faces").inner_text()
    page.screenshot(path=tmp_path / "upload.png")
    assert page.problems == []


def test_the_camera_path_boxes_the_face_of_the_fake_camera_frame_after_frame(page, clip, tmp_path):
    page.click("#camera")
    wait_until(page, "window.maskcls.source === 'camera' && window.maskcls.answers >= 3", 30)
    snapshot = page.evaluate(SNAPSHOT)
    state = snapshot["state"]
    assert snapshot["canvas"] == [640, 480]
    [drawn] = state["drawn"]
    x1, y1, x2, y2 = drawn["box"]
    scale = FACE_SIDE / 512
    left, top, right, bottom = (side * scale for side in ASTRONAUT_FACE)
    offsets = clip[1]
    page.screenshot(path=tmp_path / "camera.png")
    assert min(offsets) + left < (x1 + x2) / 2 < max(offsets) + right and 40 + top < (y1 + y2) / 2 < 40 + bottom
    assert snapshot["edge"] == rgb(drawn["colour"])
    assert state["faces"][0]["track"] == 0  # the same face followed from frame to frame, its label smoothed
    page.click("#camera")  # stops it
    assert page.evaluate("window.maskcls.source") is None
    assert page.problems == []
