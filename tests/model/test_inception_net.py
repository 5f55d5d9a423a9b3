"""The FID Inception network defined in Python: its weights read from the pinned archive without TorchScript.

The features must be today's: the test that compares them with the TorchScript network runs both on the
same inputs on the CPU (real face crops of ANIMEXPR_ASSETS when set, drawn faces otherwise). The archive
reader refuses any global outside its list and turns a damaged file into a one-line InceptionError.
Tests that need the pinned weights skip without them.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from animexpr.model.inception import FEATURE_DIM, InceptionError, InceptionFeatures
from animexpr.model.inception_net import (
    ArchiveContents,
    ConvBN,
    InceptionV3,
    load_archive_state,
    load_inception_network,
    read_torchscript_archive,
)
from animexpr.testing.faces import EXPRESSIONS, random_identity, render

IMAGES_PER_CHARACTER = 2  # 8 real faces, or 8 drawn ones
ARCHIVE_TENSORS = 376  # 94 convolutions x (weight, beta, mean, var)


def _test_images() -> torch.Tensor:
    """(8, H, W, 3) uint8: two real face crops of each character, or eight drawn faces without the assets."""
    assets = os.environ.get("ANIMEXPR_ASSETS")
    if assets and (Path(assets) / "faces").is_dir():
        characters = sorted(path for path in (Path(assets) / "faces").iterdir() if path.is_dir())
        files = [
            file for folder in characters for file in sorted(folder.glob("*.jpg"))[:IMAGES_PER_CHARACTER]
        ]
        images = [np.asarray(Image.open(file).convert("RGB")) for file in files]
    else:
        images = [render(random_identity(seed), EXPRESSIONS[seed % 4]).image for seed in range(8)]
    return torch.from_numpy(np.stack(images))


def _torchscript_features(weights: Path, inputs: torch.Tensor) -> torch.Tensor:
    """What the features were before: the same file through torch.jit.load, as InceptionFeatures ran it."""
    if not hasattr(torch.jit, "load"):
        pytest.skip("this torch has no TorchScript loader to compare with")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the deprecated TorchScript loader
        scripted = torch.jit.load(str(weights), map_location="cpu").eval()
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        return scripted(inputs)


@pytest.mark.slow
def test_features_equal_the_torchscript_networks_on_faces(inception_weights: Path) -> None:
    extractor = InceptionFeatures(inception_weights, device="cpu", batch_size=8)
    images = _test_images()
    ours = extractor(images)
    theirs = _torchscript_features(inception_weights, extractor.preprocess(images)).numpy()
    assert ours.shape == (len(images), FEATURE_DIM)
    scale = float(np.abs(theirs).max())
    max_difference = float(np.abs(ours - theirs).max())
    assert scale > 0.1  # real activations, not a network left at zero
    assert max_difference <= 1e-4 * scale, (
        f"max |difference| {max_difference:.3g} for features up to {scale:.3g}"
    )


# pool3 features of `_pattern()` through torch.jit.load of the pinned file (torch 2.13, CPU), by index: they
# keep the network checked once TorchScript is gone. Mean 0.319262 over the 2048.
RECORDED_FEATURES = {452: 5.83942, 860: 5.33595, 102: 4.20567, 0: 1.05256, 100: 0.13798, 2047: 0.66274}


def _pattern() -> torch.Tensor:
    """A fixed smooth (1, 3, 299, 299) network input in (-1, 1), computed rather than drawn or decoded."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, 299), torch.linspace(-1, 1, 299), indexing="ij")
    channels = [torch.sin(7 * x + 3 * y), torch.cos(5 * x * y + 2 * y), torch.sin(9 * (x * x + y * y))]
    return (torch.stack(channels) * 0.99)[None]


def test_features_of_a_fixed_pattern_are_the_recorded_ones(inception_weights: Path) -> None:
    with torch.inference_mode():
        features = load_inception_network(inception_weights)(_pattern())[0]
    indices = list(RECORDED_FEATURES)
    torch.testing.assert_close(
        features[indices], torch.tensor(list(RECORDED_FEATURES.values())), rtol=1e-4, atol=1e-4
    )
    assert float(features.mean()) == pytest.approx(0.319262, abs=1e-5)


def test_every_archive_tensor_fills_the_network(inception_weights: Path) -> None:
    contents = read_torchscript_archive(inception_weights)
    assert len(contents.tensors) == ARCHIVE_TENSORS
    assert contents.settings["net.layers.mixed_4.tower.conv_1.padding"] == [0, 3]  # a List[int] attribute
    network = load_inception_network(inception_weights)
    buffers = dict(network.named_buffers())
    assert len(buffers) == ARCHIVE_TENSORS
    assert {buffer.device.type for buffer in buffers.values()} == {"cpu"}
    torch.testing.assert_close(buffers["layers.conv.weight"], contents.tensors["net.layers.conv.weight"])
    assert float(buffers["layers.mixed_10.tower_2_conv.var"].min()) > 0  # variances, not placeholders


def test_the_network_rejects_other_than_three_channels() -> None:
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        InceptionV3()(torch.zeros(1, 1, 299, 299))


# --- the restricted unpickler ---


class _Payload:
    """Pickles as a call of `function(*args)`: what a malicious data.pkl would do."""

    def __init__(self, function: object, *args: object) -> None:
        self.reduced = (function, args)

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.reduced


def _archive(path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """A zip laid out as a TorchScript archive: archive/data.pkl and archive/data/N."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data)
    return path


@pytest.mark.parametrize(
    "function",
    [os.mkdir, torch.save, torch._utils._rebuild_parameter],
    ids=["os", "torch.save", "torch-rebuild"],
)
def test_a_pickle_naming_another_global_is_refused_before_it_runs(tmp_path: Path, function: object) -> None:
    marker = tmp_path / "created-by-the-pickle"
    path = _archive(tmp_path / "evil.pt", pickle.dumps(_Payload(function, str(marker)), protocol=2))
    with pytest.raises(InceptionError, match=r"refused the global \S+") as caught:
        read_torchscript_archive(path)
    assert "\n" not in str(caught.value)
    assert not marker.exists()


def test_a_file_that_is_not_a_zip_gives_one_line(tmp_path: Path) -> None:
    path = tmp_path / "damaged.pt"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(
        InceptionError, match=r"damaged\.pt: not a readable TorchScript archive \(File is not a zip"
    ):
        read_torchscript_archive(path)


@pytest.mark.parametrize(
    ("data_pkl", "expected"),
    [
        (pickle.dumps({"net": 1}, protocol=2)[:-4], "not a readable TorchScript archive"),
        (pickle.dumps({"net": 1}, protocol=2), "data.pkl holds dict, not a TorchScript module"),
    ],
    ids=["truncated-pickle", "not-a-module"],
)
def test_a_damaged_data_pkl_gives_one_line(tmp_path: Path, data_pkl: bytes, expected: str) -> None:
    path = _archive(tmp_path / "damaged.pt", data_pkl)
    with pytest.raises(InceptionError, match=expected) as caught:
        read_torchscript_archive(path)
    assert str(caught.value).startswith(str(path))
    assert "\n" not in str(caught.value)


def test_the_real_archive_damaged_gives_one_line(inception_weights: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(inception_weights.read_bytes()[: 10 << 20])
    with pytest.raises(InceptionError, match="not a readable TorchScript archive"):
        read_torchscript_archive(truncated)
    without_a_storage = tmp_path / "without-data-7.pt"
    with zipfile.ZipFile(inception_weights) as source, zipfile.ZipFile(without_a_storage, "w") as copy:
        for item in source.infolist():
            if not item.filename.endswith("/data/7"):
                copy.writestr(item, source.read(item))
    with pytest.raises(InceptionError, match="no item named 'out_jit_module/data/7'") as caught:
        read_torchscript_archive(without_a_storage)
    assert "\n" not in str(caught.value)


# --- the archive's tensors onto the modules, strictly ---


@pytest.fixture(scope="module")
def network() -> InceptionV3:
    return InceptionV3()


def _contents_for(network: InceptionV3) -> ArchiveContents:
    """What the pinned archive holds for `network`, with random tensors: names, shapes, strides, paddings."""
    generator = torch.Generator().manual_seed(0)
    tensors = {
        f"net.{name}": torch.rand(t.shape, generator=generator) for name, t in network.state_dict().items()
    }
    settings: dict[str, object] = {}
    for name, module in network.named_modules():
        if isinstance(module, ConvBN):
            settings[f"net.{name}.stride"] = module.stride
            height, width = module.padding
            settings[f"net.{name}.padding"] = height if height == width else [height, width]
    return ArchiveContents(tensors, settings)


def test_matching_contents_fill_every_tensor(network: InceptionV3) -> None:
    contents = _contents_for(network)
    load_archive_state(network, contents, "archive.pt")
    for name, tensor in network.state_dict().items():
        assert torch.equal(tensor, contents.tensors[f"net.{name}"])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("drop", r"archive\.pt: the archive lacks layers\.conv\.beta \(1 tensors missing\)"),
        ("extra", r"the archive's layers\.conv\.gamma has no place in the network"),
        (
            "shape",
            r"layers\.conv\.beta is \(31,\) torch\.float32 in the archive, the network expects \(32,\)",
        ),
        (
            "padding",
            r"layers\.mixed_4\.tower\.conv_1\.padding is \(3, 0\) in the archive, \(0, 3\) in the network",
        ),
        ("outside", r"other\.weight is outside `net`"),
    ],
)
def test_contents_that_do_not_fit_give_one_line(network: InceptionV3, change: str, expected: str) -> None:
    contents = _contents_for(network)
    if change == "drop":
        del contents.tensors["net.layers.conv.beta"]
    elif change == "extra":
        contents.tensors["net.layers.conv.gamma"] = torch.ones(32)
    elif change == "shape":
        contents.tensors["net.layers.conv.beta"] = torch.ones(31)
    elif change == "padding":
        contents.settings["net.layers.mixed_4.tower.conv_1.padding"] = [3, 0]
    else:
        contents.tensors["other.weight"] = torch.ones(1)
    with pytest.raises(InceptionError, match=expected) as caught:
        load_archive_state(network, contents, "archive.pt")
    assert "\n" not in str(caught.value)
