"""The run around a trainer: its inputs, its folder, what rank 0 writes into it, resuming it and stopping it.

- `config_for_run`, `training_data`, `log_run_start`: the settings, the batches and fixed samples, and the
  line that says what trains.

- `plan_run` decides, without writing anything, which run folder a `train` call continues (--resume: auto,
  a run folder or a state file) and with which settings; `record_run` then creates the folder or rewrites
  its config.json. Between the two the caller loads what may still fail (the VGG19 weights), so that a
  failed start leaves no run folder behind.
- `RunWriter`: rank 0's outputs (stats.jsonl, sample grids, training curves, checkpoints).
- `load_checked_state`, `capture_rng`/`restore_rng`: a resumed run continues exactly, on every rank.
- `check_ranks_agree`: under DDP, a check before saving that every rank holds the same networks.
- `StopRequest`: the first Ctrl-C stops after the iteration, with a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from animexpr.errors import AnimexprError
from animexpr.model import checkpoint as ckpt
from animexpr.model.config import TrainConfig
from animexpr.model.curves import TrainingCurves
from animexpr.model.data import (
    FaceBatches,
    Snapshot,
    decode_records,
    fits_on_device,
    fixed_sample_indices,
    to_model_input,
)
from animexpr.model.distributed import gather_objects
from animexpr.model.grid import grid_labels, save_png, translation_grid
from animexpr.model.run_files import CHECKPOINT_DIR, SAMPLES_DIR, STATS_FILE, run_dirs, sample_name

if TYPE_CHECKING:
    from animexpr.model.train import RunTrainer

log = logging.getLogger(__name__)


class StopRequest:
    """First Ctrl-C: finish the iteration, write a checkpoint, stop. Second Ctrl-C: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopRequest:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
            self._previous = None
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this iteration and writing a checkpoint (Ctrl-C again to stop at once)")

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ---------------------------------------------------------------------- the run's inputs


def config_for_run(data: Path, **overrides: Any) -> TrainConfig:
    """A TrainConfig for a snapshot folder: the variant's defaults, then any fields overridden."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise AnimexprError(f"unknown training setting {sorted(unknown)[0]!r}")
    return TrainConfig.for_variant(str(data.resolve()), **overrides)


def training_data(
    snapshot: Snapshot, cfg: TrainConfig, device: torch.device
) -> tuple[FaceBatches, tuple[Tensor, Tensor]]:
    """The training batches (on the device when they fit) and the fixed inputs and labels of the samples."""
    train_records = snapshot.split("train")
    images, labels = decode_records(snapshot, train_records, cfg.image_size)
    storage = device if fits_on_device(images.numel(), device) else torch.device("cpu")
    num_classes = len(snapshot.classes)
    batches = FaceBatches(images, labels, num_classes, device, cfg.balanced, cfg.channels_last, storage)
    fixed_records = snapshot.split("test") or train_records
    fixed_images, fixed_labels = decode_records(snapshot, fixed_records, cfg.image_size)
    picks = fixed_sample_indices(fixed_labels, cfg.sample_count, num_classes)
    fixed_inputs = to_model_input(fixed_images[picks], channels_last=False).to(device)
    return batches, (fixed_inputs, torch.as_tensor(fixed_labels[picks], dtype=torch.long, device=device))


def log_run_start(trainer: RunTrainer, batches: FaceBatches) -> None:
    """One line: what trains on what, its size and how it executes."""
    cfg = trainer.cfg
    counts = ", ".join(f"{k} {v:,}" for k, v in trainer.parameter_counts().items())
    if cfg.is_baseline:
        execution = (
            ", eager (no CUDA graphs for the baselines), no EMA (the generator file holds the trained G)"
        )
    else:
        execution = ", CUDA graphs" if trainer.use_graphs else ""
    log.info(
        "%s: %d training images, %d classes, parameters %s, device %s, %s%s",
        cfg.variant,
        len(batches),
        batches.num_classes,
        counts,
        trainer.device,
        cfg.precision,
        execution,
    )


# ---------------------------------------------------------------------- which run, with which settings


@dataclass(frozen=True)
class RunPlan:
    """Where a `train` call writes and what it resumes from; nothing of it is on disk yet."""

    run_dir: Path | None  # None: a new numbered folder
    cfg: TrainConfig  # the effective settings: a resumed run's saved ones, with the runtime fields given now
    state_file: Path | None  # the training state to resume from
    saved: TrainConfig | None = None  # a resumed run's config.json as it was


def plan_run(cfg: TrainConfig, runs_root: Path, resume: str | None) -> RunPlan:
    """Decide the run folder, the effective config and the state file to resume from (rank 0 only).

    A run without a checkpoint has learned nothing that was kept: resuming it starts it again from
    iteration 0 in the same folder, with the settings given now.
    """
    run_dir, state_file = resume_target(cfg, runs_root, resume)
    if run_dir is None:
        return RunPlan(None, cfg, None)
    saved_values = ckpt.read_run_config(run_dir)  # a folder without config.json is no run
    if state_file is None:
        states = ckpt.training_states(run_dir)
        if not states:
            if not same_data_and_variant(saved_values, cfg):
                raise AnimexprError(
                    f"{run_dir}: a run of {saved_values.get('variant')} on {saved_values.get('data')} "
                    "without a checkpoint; start a new run instead"
                )
            log.info("%s has no checkpoint yet: starting it again from iteration 0", run_dir)
            return RunPlan(run_dir, cfg, None)
        state_file = states[-1][1]
    saved = TrainConfig.from_dict(saved_values)
    ignored = saved.learning_differences(cfg)
    if ignored:
        log.warning("resuming %s with its saved settings; ignoring changed %s", run_dir, ", ".join(ignored))
    return RunPlan(run_dir, saved.with_runtime(cfg), state_file, saved)


def record_run(plan: RunPlan, cfg: TrainConfig, runs_root: Path, description: str) -> Path:
    """The planned run folder, created (a new run) or with `cfg` as its config.json (a resumed one)."""
    if plan.run_dir is None:
        return ckpt.new_run_dir(runs_root, description, cfg.to_json())
    ckpt.write_run_config(plan.run_dir, cfg.to_json())
    return plan.run_dir


def resume_target(cfg: TrainConfig, runs_root: Path, resume: str | None) -> tuple[Path | None, Path | None]:
    """The run folder named by --resume (None: a new run) and the state file it names, if it names one."""
    if resume is None:
        return None, None
    if resume == "auto":
        return newest_run_of(runs_root, cfg), None
    path = Path(resume)
    if path.is_file():
        if path.parent.name != CHECKPOINT_DIR:
            raise AnimexprError(f"--resume {resume}: not in the {CHECKPOINT_DIR}/ folder of a run")
        return path.parent.parent, path
    if path.is_dir():
        return path, None
    raise AnimexprError(f"--resume {resume}: neither 'auto', a run folder nor a state file")


def newest_run_of(runs_root: Path, cfg: TrainConfig) -> Path | None:
    """The newest run folder of this snapshot and variant, with or without a checkpoint."""
    for run_dir in reversed(run_dirs(runs_root)):
        try:
            saved = ckpt.read_run_config(run_dir)
        except ckpt.CheckpointError:
            continue
        if same_data_and_variant(saved, cfg):
            return run_dir
    return None


def same_data_and_variant(saved: dict[str, Any], cfg: TrainConfig) -> bool:
    same_data = Path(str(saved.get("data", ""))).resolve() == Path(cfg.data).resolve()
    return same_data and saved.get("variant") == cfg.variant


# ---------------------------------------------------------------------- what rank 0 writes


class RunWriter:
    """Rank 0's outputs: stats.jsonl, sample grids, training curves and checkpoints."""

    def __init__(
        self,
        run_dir: Path,
        trainer: RunTrainer,
        fixed: tuple[Tensor, Tensor],
        manifest_sha256: str,
        classes: list[str],
    ):
        self.run_dir = run_dir
        self.trainer = trainer
        self.fixed_inputs, self.fixed_labels = fixed
        self.manifest_sha256 = manifest_sha256
        self.classes = classes
        self.last_state: Path | None = None
        self.last_generator: Path | None = None
        self.curves = TrainingCurves(run_dir, run_dir / STATS_FILE, trainer.iteration)

    def append_stats(self, record: dict[str, Any]) -> None:
        with (self.run_dir / STATS_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.curves.add(record)

    def translate_fixed(self, use_ema: bool = True) -> tuple[list[Tensor], list[Tensor] | None]:
        """The fixed sample inputs translated to every class, and the masks."""
        return self.trainer.translate(self.fixed_inputs, self.fixed_labels, use_ema=use_ema)

    def save_samples(self) -> Path:
        outputs, masks = self.translate_fixed()
        path = self.run_dir / SAMPLES_DIR / sample_name(self.trainer.iteration)
        save_png(translation_grid(self.fixed_inputs, outputs, masks, grid_labels(self.classes)), path)
        self.curves.draw()
        return path

    def close(self) -> None:
        self.curves.close()

    def last_good_state(self) -> Path | None:
        """The newest training state of the run: this process's last one, else an earlier process's."""
        if self.last_state is not None:
            return self.last_state
        states = ckpt.training_states(self.run_dir)
        return states[-1][1] if states else None

    def save_checkpoint(self, rng_by_rank: list[Any]) -> None:
        trainer = self.trainer
        state = trainer.state_dict()
        state["rng_by_rank"] = rng_by_rank
        state["manifest_sha256"] = self.manifest_sha256
        state["classes"] = self.classes
        self.last_state = ckpt.state_path(self.run_dir, trainer.iteration)
        ckpt.save_training_state(self.last_state, state)
        self.last_generator = ckpt.generator_path(self.run_dir, trainer.iteration)
        metadata = {
            "config": trainer.cfg.to_json(),
            "classes": json.dumps(self.classes),
            "iteration": str(trainer.iteration),
            "format": "animexpr-generator-1",
        }
        ckpt.save_generator(self.last_generator, trainer.generator_state(), metadata)
        ckpt.prune_checkpoints(self.run_dir, trainer.cfg.keep_ckpts)
        log.info("checkpoint %s", self.last_state)


# ---------------------------------------------------------------------- resuming exactly, on every rank


def capture_rng(device: torch.device) -> dict[str, Tensor]:
    """The torch RNG states a training state holds (CPU, and the device's on CUDA)."""
    rng = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng(rng: dict[str, Tensor], device: torch.device) -> None:
    if "cpu" in rng:
        torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)


def load_checked_state(trainer: RunTrainer, state_file: Path, manifest_sha256: str, data: str) -> None:
    """Load a training state of the same snapshot into `trainer`, and this rank's RNG state."""
    state = ckpt.load_training_state(state_file)
    if state.get("manifest_sha256") != manifest_sha256:
        raise AnimexprError(f"{state_file} was trained on another snapshot than {data}")
    try:
        trainer.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise ckpt.unusable(state_file, "does not fit the networks of its run's config.json", exc) from exc
    _restore_rank_rng(state, trainer)


def _restore_rank_rng(state: dict[str, Any], trainer: RunTrainer) -> None:
    # The state's own "rng" is rank 0's; under DDP each rank takes back its own (with as many ranks as saved).
    by_rank = state.get("rng_by_rank") or []
    if trainer.info.world_size == len(by_rank) and trainer.info.world_size > 1:
        restore_rng(by_rank[trainer.info.rank], trainer.device)


def check_ranks_agree(trainer: RunTrainer) -> None:
    """Under DDP every rank holds the same networks (the same all-reduced updates): check before saving."""
    if not trainer.info.enabled:
        return
    with torch.no_grad():
        checksum = [float(sum(p.double().sum() for p in m.parameters())) for m in trainer.synced_modules()]
    sums = gather_objects(checksum, trainer.info)
    if any(s != sums[0] for s in sums):
        raise AnimexprError(f"DDP ranks hold different networks (parameter sums {sums}); not saving")
