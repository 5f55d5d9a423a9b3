"""The in-project VGG19: torchvision's layout, weight resolution, and the refusal to run without weights."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.downloads import OFFLINE_ENV_VARIABLE
from animexpr.model import vgg
from animexpr.model.vgg import (
    VGG19_FILE,
    VGG19Features,
    WeightsMissingError,
    default_cache_dirs,
    load_vgg19_features,
    resolve_vgg19_weights,
)
from test_downloads import FileServer, files_in

# torchvision vgg19().features: the indices of its 16 convolutions
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
CONV_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512)


def torchvision_like_state_dict() -> dict[str, torch.Tensor]:
    """Random tensors with the names and shapes of torchvision's vgg19 state dict (classifier shortened)."""
    state, in_channels = {}, 3
    generator = torch.Generator().manual_seed(5)
    for index, channels in zip(CONV_INDICES, CONV_CHANNELS, strict=True):
        state[f"features.{index}.weight"] = (
            torch.randn(channels, in_channels, 3, 3, generator=generator) * 0.05
        )
        state[f"features.{index}.bias"] = torch.randn(channels, generator=generator) * 0.01
        in_channels = channels
    state["classifier.0.weight"] = torch.zeros(4, 4)
    state["classifier.0.bias"] = torch.zeros(4)
    return state


def test_layers_follow_torchvision_indices() -> None:
    model = VGG19Features("relu4_2")
    assert len(model.features) == 23
    assert isinstance(model.features[22], torch.nn.ReLU)
    assert sorted(model.state_dict()) == sorted(
        f"features.{i}.{kind}" for i in CONV_INDICES[:10] for kind in ("weight", "bias")
    )
    features = model(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert features.shape == (2, 512, 8, 8)
    assert not any(p.requires_grad for p in model.parameters())


def test_weights_load_from_a_torchvision_state_dict_file(tmp_path: Path) -> None:
    state = torchvision_like_state_dict()
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    model = load_vgg19_features("relu3_2", weights=path)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name])
    assert model.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # what config.json records


def test_without_weights_it_stops_with_a_message_saying_what_to_do(
    clean_caches: Path, tmp_path: Path
) -> None:
    with pytest.raises(WeightsMissingError, match="--vgg-weights") as caught:
        load_vgg19_features()
    assert f"put it in {clean_caches}; train fetches {vgg.VGG19_URL} there" in str(caught.value)
    with pytest.raises(WeightsMissingError, match="not found"):
        resolve_vgg19_weights(tmp_path / "nothing.pth")


def test_weights_are_found_through_the_environment_and_the_caches(
    clean_caches: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = tmp_path / "torch" / "hub" / "checkpoints" / VGG19_FILE
    hub.parent.mkdir(parents=True)
    torch.save(torchvision_like_state_dict(), hub)
    assert resolve_vgg19_weights() == hub
    explicit = tmp_path / "elsewhere.pth"
    explicit.write_bytes(hub.read_bytes())
    monkeypatch.setenv("ANIMEXPR_VGG19", str(explicit))
    assert resolve_vgg19_weights() == explicit
    monkeypatch.delenv("ANIMEXPR_VGG19")
    cached = clean_caches / VGG19_FILE  # the user cache is looked at before torch hub's
    cached.parent.mkdir(parents=True)
    cached.write_bytes(hub.read_bytes())
    assert resolve_vgg19_weights() == cached


def test_random_weights_are_reproducible() -> None:
    # Tests run with random VGG19 weights (no ImageNet weights on the test machines); they are at least fixed.
    a = load_vgg19_features("relu3_2", random_weights=True)
    b = load_vgg19_features("relu3_2", random_weights=True)
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name])


@pytest.fixture
def clean_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty caches in tmp_path; the user cache is tmp_path/cache."""
    monkeypatch.setenv("ANIMEXPR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("ANIMEXPR_VGG19", raising=False)
    monkeypatch.delenv(OFFLINE_ENV_VARIABLE, raising=False)
    return tmp_path / "cache"


@pytest.fixture
def weights_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """A server on 127.0.0.1 with a small torchvision-like state dict pinned in place of the real VGG19."""
    buffer = io.BytesIO()
    torch.save(torchvision_like_state_dict(), buffer)
    server = FileServer()
    server.behaviour.body = buffer.getvalue()
    body_sha256 = hashlib.sha256(buffer.getvalue()).hexdigest()
    pinned = replace(vgg.VGG19_DOWNLOAD, urls=(server.url,), sha256=body_sha256)
    monkeypatch.setattr(vgg, "VGG19_DOWNLOAD", pinned)
    yield server
    server.close()


def test_caches_follow_animexpr_cache_and_ignore_empty_variables(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"HOME": str(home), "XDG_CACHE_HOME": "", "TORCH_HOME": ""}
    assert default_cache_dirs(env) == [home / ".cache/animexpr", home / ".cache/torch/hub/checkpoints"]
    env |= {"ANIMEXPR_CACHE": str(tmp_path / "mine"), "TORCH_HOME": str(tmp_path / "torch")}
    assert default_cache_dirs(env) == [tmp_path / "mine", tmp_path / "torch/hub/checkpoints"]


def test_missing_weights_are_downloaded_into_the_user_cache_once(
    clean_caches: Path, weights_server: FileServer
) -> None:
    model = load_vgg19_features("relu3_2", download=True)
    fetched = clean_caches / VGG19_FILE
    assert fetched.read_bytes() == weights_server.behaviour.body
    assert model.weights_sha256 == vgg.VGG19_DOWNLOAD.sha256
    assert resolve_vgg19_weights(download=True) == fetched
    assert weights_server.behaviour.requests == 1  # found in the cache the second time


def test_a_failed_download_says_where_to_put_the_file(clean_caches: Path, weights_server: FileServer) -> None:
    weights_server.behaviour.status = 503
    with pytest.raises(WeightsMissingError) as caught:
        resolve_vgg19_weights(download=True)
    message = str(caught.value)
    assert "HTTP 503" in message
    assert f"put it at {clean_caches / VGG19_FILE}, or pass --vgg-weights PATH" in message
    assert files_in(clean_caches) == []


def test_train_downloads_by_default_and_not_with_no_vgg_download(
    clean_caches: Path,
    snapshot_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(OFFLINE_ENV_VARIABLE, "1")  # the default tries a download: refused, never sent
    command = ["--home", str(tmp_path), "train", "--snapshot", str(snapshot_dir), "--device", "cpu"]
    command += ["--iters", "1", "--run-dir", str(tmp_path / "runs")]
    fetched = CliRunner().invoke(app, command)
    assert fetched.exit_code == 1
    assert f"{OFFLINE_ENV_VARIABLE} forbids downloads" in str(fetched.exception)
    offline = CliRunner().invoke(app, [*command, "--no-vgg-download"])
    assert offline.exit_code == 1
    assert "unless --no-vgg-download is given" in str(offline.exception)
