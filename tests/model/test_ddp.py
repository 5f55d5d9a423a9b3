"""DDP on the CPU with gloo: the gradient penalty under DDP, and a real 2-process torchrun training run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from animexpr.model.checkpoint import load_training_state, training_states
from animexpr.model.config import TrainConfig
from animexpr.model.networks import Discriminator
from animexpr.model.train import discriminator_loss

TINY_CLI = {
    "image-size": 32,
    "batch": 4,
    "n-critic": 2,
    "iters": 4,
    "g-conv-dim": 8,
    "g-res-blocks": 1,
    "att-res-blocks": 1,
    "d-conv-dim": 8,
    "d-repeat-num": 4,
    "mapping-dim": 16,
    "style-dim": 8,
    "log-every": 2,
    "sample-every": 2,
    "ckpt-every": 2,
    "decay-start": 1000,
    "device": "cpu",
}
CFG = TrainConfig(data="", image_size=32, d_conv_dim=8, d_repeat_num=4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fixed_batch() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    x_real = torch.rand(8, 3, 32, 32, generator=generator) * 2 - 1
    x_fake = torch.rand(8, 3, 32, 32, generator=generator) * 2 - 1
    labels = torch.randint(0, 4, (8,), generator=generator)
    alpha = torch.rand(8, 1, 1, 1, generator=generator)
    return x_real, x_fake, labels, alpha


def _discriminator() -> Discriminator:
    torch.manual_seed(0)
    return Discriminator(CFG.image_size, 4, CFG.d_conv_dim, CFG.d_repeat_num)


def _ddp_gradients(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        discriminator = _discriminator()
        ddp = DistributedDataParallel(discriminator)
        x_real, x_fake, labels, alpha = (t.chunk(world_size)[rank] for t in _fixed_batch())
        loss, _ = discriminator_loss(ddp, x_real, x_fake, labels, alpha, CFG)
        loss.backward()
        grads = {name: p.grad for name, p in discriminator.named_parameters()}
        torch.save(grads, Path(out) / f"grads-{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_discriminator_gradients_with_penalty_are_the_same_under_ddp(tmp_path: Path) -> None:
    mp.spawn(_ddp_gradients, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    discriminator = _discriminator()
    loss, _ = discriminator_loss(discriminator, *_fixed_batch(), CFG)
    loss.backward()
    per_rank = [torch.load(tmp_path / f"grads-{r}.pt", weights_only=True) for r in range(2)]
    for name, p in discriminator.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(per_rank[0][name], per_rank[1][name], rtol=0, atol=0)
        torch.testing.assert_close(per_rank[0][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_torchrun_trains_with_two_cpu_processes_and_only_rank_zero_writes(
    snapshot_dir: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    tiny = [f"--{name}={value}" for name, value in TINY_CLI.items()] + ["--vgg-random"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "animexpr", "--home", str(home), "train", "--snapshot", str(snapshot_dir), *tiny]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = list((home / "runs").iterdir())
    assert len(runs) == 1
    rows = [json.loads(line) for line in (runs[0] / "stats.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [2, 4]
    state = load_training_state(training_states(runs[0])[-1][1])
    assert state["iteration"] == 4
    assert len(state["rng_by_rank"]) == 2
    assert TrainConfig.from_json(state["config"]).batch == 4  # the global batch, 2 per process
