"""Record what the original animeface 2.0.3 extension finds on the reference images, as test data.

Run it in an environment where that extension works: Python 3.11 with Pillow<12, numpy and animeface 2.0.3
(the wheel's C extension reads Pillow's internal image struct, which Pillow 12 changed). animexpr itself is
not needed there. From the repository root:

    python3.11 -m venv ../animeface-2.0.3-env
    ../animeface-2.0.3-env/bin/pip install 'pillow<12' numpy animeface==2.0.3
    ANIMEXPR_ASSETS=path/to/assets ../animeface-2.0.3-env/bin/python tests/data/record_animeface_reference.py

It writes `tests/data/animeface_reference.json`: for each image its name, size, the sha256 of its RGB pixels
(so that a test on another Pillow can tell a decoder difference from a detector difference) and every face
`animeface.detect` returns (box and likelihood), in the extension's order.

The images (`reference_images`) are built from ANIMEXPR_ASSETS with Pillow decoding and integer numpy only, so
that the tests rebuild the very same pixels under another Pillow and numpy: the illustration grid, six of its
cells, two faces of each character, and faces pasted into busy synthetic scenes at three scales (1/2 by
decimation, 1, 2 by pixel repetition).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

REFERENCE_FILE = Path(__file__).with_name("animeface_reference.json")
GRID_CELL_PX = 512
GRID_CELLS = ((0, 0), (1, 2), (2, 4), (3, 1), (4, 3), (5, 5))  # (row, column) of the 6 x 6 grid
FACES_PER_CHARACTER = 2
SCENE_SEED = 2009


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def rgb_sha256(rgb: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest()


def busy_background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A cluttered picture without faces: coloured blocks, stripes and grain (integer operations only)."""
    block = 48
    coarse = rng.integers(0, 256, (height // block + 1, width // block + 1, 3), dtype=np.uint8)
    scene = np.repeat(np.repeat(coarse, block, axis=0), block, axis=1)[:height, :width].astype(np.int16)
    for _ in range(24):  # thin lines in random colours, like outlines and hair strands
        colour = rng.integers(0, 256, 3, dtype=np.int16)
        position, thickness = int(rng.integers(0, max(height, width))), int(rng.integers(1, 6))
        if rng.integers(0, 2):
            scene[position : position + thickness, :] = colour
        else:
            scene[:, position : position + thickness] = colour
    grain = rng.integers(-24, 25, scene.shape, dtype=np.int16)
    return np.clip(scene + grain, 0, 255).astype(np.uint8)


def scaled_face(face: np.ndarray, scale: str) -> np.ndarray:
    """A face at half size (every second pixel), as is, or at double size (each pixel repeated)."""
    if scale == "half":
        return face[::2, ::2]
    if scale == "double":
        return np.repeat(np.repeat(face, 2, axis=0), 2, axis=1)
    return face


def paste(scene: np.ndarray, face: np.ndarray, x: int, y: int) -> None:
    scene[y : y + face.shape[0], x : x + face.shape[1]] = face


def face_files(assets: Path) -> list[Path]:
    folders = sorted(p for p in (assets / "faces").iterdir() if p.is_dir())
    return [path for folder in folders for path in sorted(folder.glob("*.jpg"))[:FACES_PER_CHARACTER]]


def scenes(faces: list[np.ndarray], seed: int = SCENE_SEED) -> Iterator[tuple[str, np.ndarray]]:
    """Three scenes: one face as is, two faces (half and as is), one face at double size."""
    rng = np.random.default_rng(seed)
    one = busy_background(768, 768, rng)
    paste(one, faces[0], 300, 180)
    yield "scene-one-face", one
    two = busy_background(768, 1024, rng)
    paste(two, scaled_face(faces[2], "half"), 96, 420)
    paste(two, faces[4], 640, 120)
    yield "scene-two-faces", two
    large = busy_background(768, 1024, rng)
    paste(large, scaled_face(faces[6], "double"), 420, 160)
    yield "scene-large-face", large


def reference_images(assets: Path, *, with_grid: bool = True) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB uint8 pixels) of every reference image, in a fixed order."""
    grid = read_rgb(assets / "illustration-grid.jpg")
    if with_grid:
        yield "grid", grid
    for row, column in GRID_CELLS:
        top, left = row * GRID_CELL_PX, column * GRID_CELL_PX
        cell = grid[top : top + GRID_CELL_PX, left : left + GRID_CELL_PX]
        yield f"grid-cell-{row}{column}", np.ascontiguousarray(cell)
    faces = []
    for path in face_files(assets):
        face = read_rgb(path)
        faces.append(face)
        yield f"face-{path.parent.name}-{path.name[:12]}", face
    yield from scenes(faces)


def record(assets: Path) -> dict[str, object]:
    import animeface  # the original extension: works only under Pillow<12
    import PIL

    images = {}
    for name, rgb in reference_images(assets):
        found = animeface.detect(Image.fromarray(rgb))
        images[name] = {
            "height": int(rgb.shape[0]),
            "width": int(rgb.shape[1]),
            "rgb_sha256": rgb_sha256(rgb),
            "faces": [
                {
                    "box": [f.face.pos.x, f.face.pos.y, f.face.pos.width, f.face.pos.height],
                    "likelihood": f.likelihood,
                }
                for f in found
            ],
        }
        print(f"{name}: {len(found)} faces", file=sys.stderr)
    return {
        "made_by": "tests/data/record_animeface_reference.py (animeface.detect, the original extension)",
        "animeface": animeface_version(),
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "images": images,
    }


def animeface_version() -> str:
    from importlib import metadata

    return metadata.version("animeface")


def main() -> int:
    assets = os.environ.get("ANIMEXPR_ASSETS")
    if not assets or not Path(assets).is_dir():
        print("set ANIMEXPR_ASSETS to the assets folder", file=sys.stderr)
        return 2
    reference = record(Path(assets))
    REFERENCE_FILE.write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {REFERENCE_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
