"""The detectors: the cascade as bare OpenCV uses it, where the cascade file comes from.

animeface and the combined detector: test_animeface.py and test_detect_merge.py.
"""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from animexpr.curate.crop import CropSettings, PostCropper, make_detector_spec
from animexpr.curate.detect import (
    CASCADE_ENV,
    CASCADE_SHA256,
    CASCADE_URL,
    Detection,
    DetectorError,
    load_cascade,
    resolve_cascade,
    user_cache_dir,
)
from animexpr.images import decode_image
from animexpr.store import FileStore


@pytest.fixture
def cascade_file(assets_dir: Path) -> Path:
    return assets_dir / "lbpcascade_animeface.xml"


def test_default_detector_finds_the_same_37_boxes_as_bare_opencv(
    assets_dir: Path, cascade_file: Path, tmp_path: Path
) -> None:
    grid = assets_dir / "illustration-grid.jpg"
    # nagadomi's README with minSize 64, as it stands.
    classifier = cv2.CascadeClassifier(str(cascade_file))
    bgr = cv2.imread(str(grid), cv2.IMREAD_COLOR)
    assert bgr is not None
    grey = cv2.equalizeHist(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    bare = classifier.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(64, 64))
    bare_boxes = sorted(tuple(int(v) for v in box) for box in bare)

    spec = make_detector_spec("lbp", min_size=64, cascade=cascade_file)
    cropper = PostCropper(CropSettings(detector=spec), FileStore(tmp_path))
    ours = sorted((d.x, d.y, d.w, d.h) for d in cropper.detect(decode_image(grid).rgb))
    assert len(bare_boxes) == 37
    assert ours == bare_boxes


def test_lbp_score_is_the_number_of_merged_hits(cascade_file: Path, assets_dir: Path, tmp_path: Path) -> None:
    spec = make_detector_spec("lbp", min_size=64, cascade=cascade_file)
    cropper = PostCropper(CropSettings(detector=spec), FileStore(tmp_path))
    found = cropper.detect(decode_image(assets_dir / "illustration-grid.jpg").rgb)
    scores = [d.score for d in found]
    assert all(score is not None and score > spec.min_neighbors for score in scores)
    assert len(set(scores)) > 10  # it tells boxes apart


def test_whole_detector_takes_the_centred_square(tmp_path: Path) -> None:
    spec = make_detector_spec("whole")
    assert spec.cascade_path is None
    cropper = PostCropper(CropSettings(detector=spec), FileStore(tmp_path))
    landscape = np.zeros((200, 300, 3), np.uint8)
    assert cropper.detect(landscape) == [Detection(50, 0, 200, 200)]
    assert cropper.detect(landscape[:, :150]) == [Detection(0, 25, 150, 150)]
    settings = CropSettings(detector=spec, margin=0.25)
    assert settings.effective_margin == 0.0
    assert settings.key_settings()["margin"] == 0.0
    assert settings.effective_min_face == 64  # 128 px crops from at least 64 px pictures


def test_explicit_path_wins_and_is_taken_as_given(tmp_path: Path) -> None:
    custom = tmp_path / "my-cascade.xml"
    custom.write_text("<opencv_storage/>")
    resolved = resolve_cascade(custom, environ={CASCADE_ENV: "/nowhere.xml"}, download=False)
    assert resolved.path == custom
    assert resolved.source == "option"
    assert resolved.sha256 != CASCADE_SHA256


def test_missing_explicit_path_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    with pytest.raises(DetectorError, match="no cascade file at"):
        resolve_cascade(tmp_path / "typo.xml", environ={}, cache_dir=tmp_path, download=False)


def test_environment_variable(tmp_path: Path) -> None:
    custom = tmp_path / "env.xml"
    custom.write_text("x")
    resolved = resolve_cascade(
        environ={CASCADE_ENV: str(custom)}, cache_dir=tmp_path / "cache", download=False
    )
    assert resolved.path == custom
    assert resolved.source == "environment"


def test_user_cache_location_follows_xdg() -> None:
    assert user_cache_dir({"XDG_CACHE_HOME": "/xdg"}) == Path("/xdg/animexpr")
    assert user_cache_dir({"HOME": "/home/someone"}) == Path("/home/someone/.cache/animexpr")


def test_cached_cascade_with_the_pinned_hash_is_used(cascade_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copyfile(cascade_file, cache / "lbpcascade_animeface.xml")
    resolved = resolve_cascade(environ={}, cache_dir=cache, download=False)
    assert resolved.source == "cache"
    assert resolved.sha256 == CASCADE_SHA256


def test_nothing_found_says_what_to_do(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "lbpcascade_animeface.xml").write_text("not the cascade")  # wrong hash: ignored
    with pytest.raises(DetectorError) as caught:
        resolve_cascade(environ={}, cache_dir=cache, download=False)
    message = str(caught.value)
    assert "--cascade" in message
    assert CASCADE_ENV in message
    assert CASCADE_URL in message
    assert CASCADE_SHA256 in message
    assert str(cache) in message


class _OneFileHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[bytes], str]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(body: bytes) -> str:
        handler = type("Handler", (_OneFileHandler,), {"body": body})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/lbpcascade_animeface.xml"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_download_checked_against_the_pin_then_cached(
    cascade_file: Path, tmp_path: Path, serve: Callable[[bytes], str]
) -> None:
    url = serve(cascade_file.read_bytes())
    cache = tmp_path / "cache"
    resolved = resolve_cascade(environ={}, cache_dir=cache, url=url)
    assert resolved.source == "download"
    assert resolved.path == cache / "lbpcascade_animeface.xml"
    assert resolved.path.read_bytes() == cascade_file.read_bytes()
    assert resolve_cascade(environ={}, cache_dir=cache, download=False).source == "cache"
    load_cascade(resolved.path)


def test_download_with_another_hash_is_refused_and_not_cached(
    tmp_path: Path, serve: Callable[[bytes], str]
) -> None:
    url = serve(b"<html>a captive portal</html>")
    cache = tmp_path / "cache"
    with pytest.raises(DetectorError, match="not the pinned one"):
        resolve_cascade(environ={}, cache_dir=cache, url=url)
    assert not (cache / "lbpcascade_animeface.xml").exists()


def test_download_failure_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DetectorError, match=r"downloading .* failed"):
        resolve_cascade(environ={}, cache_dir=tmp_path, url="http://127.0.0.1:9/cascade.xml", timeout_s=2)


def test_a_file_that_is_not_a_cascade(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.xml"
    bogus.write_text("<html/>")
    with pytest.raises(DetectorError, match="not a cascade OpenCV can load"):
        make_detector_spec("lbp", cascade=bogus)


def test_unknown_detector_and_too_small_min_size() -> None:
    with pytest.raises(DetectorError, match="unknown detector"):
        make_detector_spec("yolo")
    with pytest.raises(DetectorError, match="under 24 px"):
        make_detector_spec("lbp", min_size=12)


def test_crop_faces_cuts_every_face_of_an_illustration_like_the_crop_stage(
    cascade_file: Path, assets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from animexpr.curate.crop import crop_faces

    monkeypatch.setenv("ANIMEXPR_CASCADE", str(cascade_file))
    cell = decode_image(assets_dir / "illustration-grid.jpg").rgb[:512, 512:1024]  # one illustration
    faces = crop_faces(cell)
    assert len(faces) == 1, "the second illustration of the grid shows one face"
    assert all(face.shape == (128, 128, 3) and face.dtype == np.uint8 for face in faces)
    assert crop_faces(np.full((300, 300, 3), 255, np.uint8)) == []  # a blank page has no face
