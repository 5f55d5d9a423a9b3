"""CUDA graphs of the training iteration, and the state cloning that makes capturing them harmless.

On a single GPU the two iteration kinds (a D step; a D step then a G step and the EMA update) are captured
once each, sampling, forward, backward and the fused Adam step included, and replayed from then on: at
batch 16 the kernel-launch overhead is what the eager loop spends most of its time on.

Capturing runs the iteration for real (the warm-up and the captured pass update the networks and the Adam
moments), so everything is cloned before and copied back in place after: the graphs keep the addresses of
these tensors, and a resumed run continues exactly where its checkpoint left it. The learning rate becomes
a device tensor, so that the schedule changes it without a re-capture; `portable_optimizer_state` turns it
back into a float for the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

WARMUP_ITERATIONS = 3  # cuDNN autotuning and the optimisers' state allocation happen before capture

IterationBody = Callable[[bool], None]  # one iteration; the argument says whether G takes a step too
OptimizerState = dict[int, dict[str, Tensor]]


class IterationGraphs:
    """The two iteration kinds captured as CUDA graphs; `modules` and `optimizers` end as they began."""

    def __init__(
        self,
        body: IterationBody,
        device: torch.device,
        modules: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
    ) -> None:
        use_tensor_learning_rates(optimizers.values(), device)
        saved_modules = {name: clone_module_state(m) for name, m in modules.items()}
        saved_optimizers = {name: clone_optimizer_state(opt) for name, opt in optimizers.items()}
        rng = torch.cuda.get_rng_state(device)
        _warm_up(body, device)
        self._graphs = {with_generator: _captured(body, with_generator) for with_generator in (False, True)}
        torch.cuda.synchronize(device)
        # The warm-up and the capture trained for real: put everything back, in place.
        for name, module in modules.items():
            module.load_state_dict(saved_modules[name])  # load_state_dict copies into the existing tensors
        for name, opt in optimizers.items():
            restore_optimizer_state(opt, saved_optimizers[name])
        torch.cuda.set_rng_state(rng, device)

    def replay(self, with_generator: bool) -> None:
        self._graphs[with_generator].replay()


def _warm_up(body: IterationBody, device: torch.device) -> None:
    # On a side stream, as capture requires.
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(WARMUP_ITERATIONS):
            body(True)
    torch.cuda.current_stream(device).wait_stream(stream)


def _captured(body: IterationBody, with_generator: bool) -> torch.cuda.CUDAGraph:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body(with_generator)
    return graph


def use_tensor_learning_rates(optimizers: Iterable[torch.optim.Optimizer], device: torch.device) -> None:
    """Each param group's lr as a device tensor, so that changing it needs no re-capture."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]), device=device)


def set_learning_rate(optimizers: Iterable[torch.optim.Optimizer], value: float) -> None:
    """Every param group's lr, in place where it is a captured device tensor."""
    for opt in optimizers:
        for group in opt.param_groups:
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(value)
            else:
                group["lr"] = value


def portable_optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """`opt.state_dict()` with a float lr where the graphs made it a tensor (a checkpoint loads anywhere)."""
    state = opt.state_dict()
    state["param_groups"] = [
        {k: (float(v) if k == "lr" and isinstance(v, Tensor) else v) for k, v in group.items()}
        for group in state["param_groups"]
    ]
    return state


def clone_module_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def clone_optimizer_state(opt: torch.optim.Optimizer) -> OptimizerState:
    return {
        i: {k: v.clone() for k, v in opt.state[p].items() if isinstance(v, Tensor)}
        for i, p in enumerate(_optimizer_params(opt))
        if p in opt.state
    }


def restore_optimizer_state(opt: torch.optim.Optimizer, saved: OptimizerState) -> None:
    """Copy `saved` into the optimiser's existing state tensors; state the warm-up created is zeroed."""
    for i, p in enumerate(_optimizer_params(opt)):
        for key, value in opt.state.get(p, {}).items():
            if isinstance(value, Tensor):
                if i in saved and key in saved[i]:
                    value.copy_(saved[i][key])
                else:
                    value.zero_()  # state created by the warm-up: a fresh optimiser has none


def _optimizer_params(opt: torch.optim.Optimizer) -> Iterator[Tensor]:
    for group in opt.param_groups:
        yield from group["params"]
