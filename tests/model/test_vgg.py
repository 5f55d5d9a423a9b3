"""The in-project VGG19: torchvision's layout, weight resolution, and the refusal to run without weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from animexpr.model.vgg import (
    VGG19_FILE,
    VGG19Features,
    WeightsMissingError,
    load_vgg19_features,
    resolve_vgg19_weights,
)

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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("ANIMEXPR_VGG19", raising=False)
    with pytest.raises(WeightsMissingError, match="--vgg-weights"):
        load_vgg19_features()
    with pytest.raises(WeightsMissingError, match="not found"):
        resolve_vgg19_weights(tmp_path / "nothing.pth")


def test_weights_are_found_through_the_environment_and_the_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("ANIMEXPR_VGG19", raising=False)
    hub = tmp_path / "torch" / "hub" / "checkpoints" / VGG19_FILE
    hub.parent.mkdir(parents=True)
    torch.save(torchvision_like_state_dict(), hub)
    assert resolve_vgg19_weights() == hub
    explicit = tmp_path / "elsewhere.pth"
    explicit.write_bytes(hub.read_bytes())
    monkeypatch.setenv("ANIMEXPR_VGG19", str(explicit))
    assert resolve_vgg19_weights() == explicit


def test_random_weights_are_reproducible() -> None:
    # Tests run with random VGG19 weights (no ImageNet weights on the test machines); they are at least fixed.
    a = load_vgg19_features("relu3_2", random_weights=True)
    b = load_vgg19_features("relu3_2", random_weights=True)
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name])
