"""VGG19 feature extractor for the contextual loss, defined here so that torchvision is not needed.

The layer indices match torchvision's `vgg19().features`, so its state dict (`vgg19-dcbb9e9d.pth`) loads
as it is.
Weights are found, in order: an explicit file, $ANIMEXPR_VGG19, the user cache ($ANIMEXPR_CACHE, else
$XDG_CACHE_HOME/animexpr or ~/.cache/animexpr), torch hub's checkpoints folder (where torchvision keeps
its own copy), then (when asked: `train` asks unless --no-vgg-download) a download of the pinned URL into
the user cache, kept only if its sha256 matches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from animexpr.config import user_cache_dir, xdg_cache_home
from animexpr.downloads import DownloadError, PinnedFile, fetch_pinned
from animexpr.errors import AnimexprError
from animexpr.store import sha256_file

log = logging.getLogger(__name__)

VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"
VGG19_SHA256 = "dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44"
VGG19_SIZE = 574_673_361
VGG19_ENV_VARIABLE = "ANIMEXPR_VGG19"
VGG19_DOWNLOAD = PinnedFile(
    what="the ImageNet VGG19 weights of the contextual loss",
    urls=(VGG19_URL,),
    sha256=VGG19_SHA256,
    cache_name=VGG19_FILE,
    size=VGG19_SIZE,
    instead=f"pass --vgg-weights PATH or set {VGG19_ENV_VARIABLE}=PATH",
)

# torchvision's configuration "E"; "M" is a 2x2 max pool.
_VGG19_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip
# Index of each ReLU in `features` (relu4_2 = 22 ends `features[:23]`).
RELU_INDEX = {"relu1_2": 3, "relu2_2": 8, "relu3_2": 13, "relu3_4": 17, "relu4_2": 22, "relu4_4": 26}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsMissingError(AnimexprError):
    pass


def _vgg19_layers(last_index: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for item in _VGG19_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            assert isinstance(item, int)
            # inplace=False: an in-place ReLU would overwrite a tapped conv output.
            layers += [nn.Conv2d(in_channels, item, 3, padding=1), nn.ReLU(inplace=False)]
            in_channels = item
    return nn.Sequential(*layers[: last_index + 1])


class VGG19Features(nn.Module):
    """Frozen VGG19 up to one ReLU layer; takes images in [-1, 1] and normalises them as ImageNet expects."""

    mean: Tensor
    std: Tensor

    def __init__(self, layer: str = "relu4_2") -> None:
        super().__init__()
        if layer not in RELU_INDEX:
            raise ValueError(f"unknown VGG19 layer {layer!r}; known: {', '.join(RELU_INDEX)}")
        self.layer = layer
        self.weights_sha256 = "random"  # or the sha256 of the weights file loaded (recorded in config.json)
        self.features = _vgg19_layers(RELU_INDEX[layer])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        x = ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.features(x)

    def load_torchvision_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load the `features.*` tensors this truncated network has; the classifier is not needed."""
        wanted = {k: v for k, v in state_dict.items() if k.startswith("features.")}
        own = self.state_dict()
        missing = sorted(set(own) - set(wanted))
        if missing:
            raise WeightsMissingError(
                f"the VGG19 weights lack {missing[0]}: not a torchvision vgg19 state dict"
            )
        self.load_state_dict({k: wanted[k] for k in own})


def default_cache_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where the weights are looked for: the user cache (downloads go there), then torch hub's checkpoints."""
    env = os.environ if environ is None else environ
    # torch's own rule, except that an empty variable counts as unset (torch would make the path relative)
    torch_home = (
        Path(env["TORCH_HOME"]).expanduser() if env.get("TORCH_HOME") else xdg_cache_home(env) / "torch"
    )
    return [user_cache_dir(env), torch_home / "hub" / "checkpoints"]


def resolve_vgg19_weights(explicit: str | Path | None = None, download: bool = False) -> Path:
    """Find the torchvision VGG19 weights file; download it (checked) only when `download` is True."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsMissingError(f"VGG19 weights file not found: {path}")
        return path
    if os.environ.get(VGG19_ENV_VARIABLE):
        return resolve_vgg19_weights(os.environ[VGG19_ENV_VARIABLE])
    folders = default_cache_dirs()
    for folder in folders:
        if (folder / VGG19_FILE).is_file():
            return folder / VGG19_FILE
    if not download:
        raise WeightsMissingError(
            "the contextual loss needs ImageNet VGG19 weights: pass --vgg-weights PATH to torchvision's "
            f"{VGG19_FILE}, set {VGG19_ENV_VARIABLE}, or put it in {folders[0]}; train fetches {VGG19_URL} "
            "there (checked by sha256) unless --no-vgg-download is given. --vgg-random trains with random "
            "weights (tests only)."
        )
    try:
        return fetch_pinned(VGG19_DOWNLOAD, folders[0] / VGG19_FILE)
    except DownloadError as exc:
        raise WeightsMissingError(str(exc)) from exc


def load_vgg19_features(
    layer: str = "relu4_2",
    weights: str | Path | None = None,
    random_weights: bool = False,
    download: bool = False,
    verify: bool = True,
) -> VGG19Features:
    """The frozen feature extractor, with ImageNet weights unless `random_weights` (tests, speed runs)."""
    if random_weights:
        log.warning("VGG19 has RANDOM weights: the contextual loss is not the paper's (fine for tests)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same random network every time, so runs stay reproducible
            return VGG19Features(layer)
    model = VGG19Features(layer)
    path = resolve_vgg19_weights(weights, download=download)
    digest = sha256_file(path)
    if verify and path.stat().st_size == VGG19_SIZE and digest != VGG19_SHA256:
        raise WeightsMissingError(f"{path} has the size of {VGG19_FILE} but not its sha256: a damaged copy?")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_torchvision_state_dict(state)
    model.weights_sha256 = digest
    log.info("VGG19 weights from %s", path)
    return model
