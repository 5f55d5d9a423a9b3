"""The expander: accepted, de-duplicated crops plus augmented copies, to an exact total.

What it guarantees:
- Originals plus augmentations reach the target exactly; `--balance proportional` keeps each class's share of
  the originals, `--balance equal` evens the classes out as far as adding images can.
- Each augmented image is a pure function of (crop bytes, recipe version, seed, variant index): its own seed
  comes from a hash of those, not from a stream shared with other images, so worker count and order do not
  matter and two homes produce byte-identical PNGs.
- The plan grows monotonically with the target (divisor-method apportionment, round-robin over a seeded crop
  order), so raising the target only adds images and running it again adds nothing.
- Each image records its source crop, recipe version, seed and what albumentations actually applied.
- A crop is read only after its bytes are checked against its recorded sha256: a corrupt or empty crop file
  is left out, counted (`corrupt_file`) and named in a warning, never augmented.
- One expand per home at a time (`hold_home_lock`): a second is refused with one line.
"""

from __future__ import annotations

import hashlib
import heapq
import importlib
import logging
import os
import random
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from animexpr.config import Settings
from animexpr.curate.dedup import (
    DEFAULT_MAX_DISTANCE,
    UNREADABLE,
    CropFacts,
    DedupSummary,
    eligible_crops,
    imdecode_checked,
    update_duplicates,
)
from animexpr.curate.defaults import BALANCES, DEFAULT_TARGET, Balance
from animexpr.db.models import Augmentation, Expansion
from animexpr.db.session import session_scope
from animexpr.errors import AnimexprError
from animexpr.homelock import hold_home_lock
from animexpr.store import CORRUPT_FILE, CorruptFileError, FileStore, UnsafePathError
from animexpr.workers import default_workers, pool_context

if TYPE_CHECKING:
    from albumentations import Compose

log = logging.getLogger(__name__)

# The paper's dataset: 7,306 cleaned faces expanded to 11,612 images.
RECIPE_VERSION = "face-safe-v1"
_INSERT_BATCH = 256
# Augmented images a worker makes before storing them together (one round of fsyncs).
IMAGES_PER_BATCH = 32

ProgressCallback = Callable[[int, int], None]


class ExpandError(AnimexprError):
    pass


# ---------------------------------------------------------------------------------------------------------
# The recipe


def albumentations() -> ModuleType:
    """albumentations, imported without its update check (a network call on every import otherwise)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    return importlib.import_module("albumentations")


def build_recipe() -> Compose:
    """The face-safe recipe. Changing anything here means a new RECIPE_VERSION.

    - A mirror keeps the expression (the paper's classes have no left/right meaning).
    - A small similarity transform (same scale on both axes, no shear) keeps the face's proportions; the
      border is reflected, not filled black, so the generator never learns black corners.
    - Mild brightness and contrast only: no hue, saturation or colour jitter, because hair and eye colour are
      the character's identity, which the paper's generator must keep.
    """
    A = albumentations()
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                scale=(0.95, 1.05),
                keep_ratio=True,
                translate_percent=(-0.03, 0.03),
                rotate=(-8, 8),
                shear=0,
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_REFLECT_101,
                p=1.0,  # always: no variant may come out identical to its original
            ),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.8),
        ],
        save_applied_params=True,
    )


def recipe_description() -> dict[str, Any]:
    """The recipe as albumentations serialises it, for the record (dataset.json, expansion rows)."""
    return {"version": RECIPE_VERSION, "albumentations": albumentations().to_dict(build_recipe())}


def item_seed(seed: int, crop_sha256: str, variant_index: int) -> int:
    """The seed of one augmented image: depends only on what defines it, never on run order."""
    digest = hashlib.sha256(f"{RECIPE_VERSION}/{seed}/{crop_sha256}/{variant_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: fits a signed 64-bit integer anywhere


def apply_recipe(recipe: Compose, image: np.ndarray, seed: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Augment one image with its own seed; returns the image and the parameters actually applied.

    One generator pair is shared by all transforms of the recipe: `Compose.set_random_seed` would give each
    transform its own generator with the *same* seed, so the flip and the brightness change would draw the
    same numbers and be correlated.
    """
    recipe.set_random_state(np.random.default_rng(seed), random.Random(seed))
    result = recipe(image=image)
    applied = [{"transform": name, **_jsonable(params)} for name, params in result["applied_transforms"]]
    return result["image"], applied


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes; OpenCV's encoder with fixed settings gives the same bytes for the same pixels."""
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()


def decode_crop(data: bytes) -> np.ndarray:
    """A crop file (our own PNG) as a 3-channel array; channel order is kept through to encode_png.

    ValueError, with a short reason, for anything OpenCV cannot decode."""
    return imdecode_checked(data, cv2.IMREAD_COLOR)


# ---------------------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class ClassCounts:
    originals: int
    augmented: int

    @property
    def total(self) -> int:
        return self.originals + self.augmented


@dataclass(frozen=True)
class ExpansionPlan:
    target: int
    balance: Balance
    seed: int
    per_class: dict[str, ClassCounts]
    variants: dict[int, int]  # crop id -> how many augmented copies

    @property
    def total(self) -> int:
        return sum(counts.total for counts in self.per_class.values())

    def jobs(self) -> Iterator[tuple[int, int]]:
        """(crop id, variant index) of every augmented image the plan holds."""
        for crop_id, count in sorted(self.variants.items()):
            for variant_index in range(count):
                yield crop_id, variant_index

    def counts_json(self) -> dict[str, dict[str, int]]:
        return {
            name: {"originals": c.originals, "augmented": c.augmented, "total": c.total}
            for name, c in self.per_class.items()
        }


def apportion(originals: dict[str, int], target: int, balance: Balance) -> dict[str, int]:
    """Augmented images per class so that originals + augmented sum to `target`.

    Images are handed out one at a time, which makes the result grow monotonically with the target:
    - proportional: Webster's divisor method starting from the originals (priority n / (total + 1/2)), so each
      class ends at round(n * target / N) give or take one;
    - equal: to the class with the fewest images; classes that already have more than an equal share keep
      their originals and get nothing.
    Ties go to the class listed first. Classes without any original get nothing.
    """
    total = sum(originals.values())
    if target < total:
        raise ExpandError(
            f"the target {target} is below the {total} de-duplicated accepted crops; augmentation only adds "
            f"images: use --target {total} or more"
        )
    extra = dict.fromkeys(originals, 0)
    if target == total:
        return extra
    order = [name for name in originals if originals[name] > 0]
    if not order:
        raise ExpandError("there is no accepted crop to augment: review some crops first")

    def priority(name: str) -> Fraction | int:
        count = originals[name] + extra[name]
        if balance == "proportional":
            return -Fraction(2 * originals[name], 2 * count + 1)
        return count

    heap = [(priority(name), index, name) for index, name in enumerate(order)]
    heapq.heapify(heap)
    for _ in range(target - total):
        _, index, name = heapq.heappop(heap)
        extra[name] += 1
        heapq.heappush(heap, (priority(name), index, name))
    return extra


def _seeded_order(crops: Sequence[CropFacts], seed: int) -> list[CropFacts]:
    return sorted(crops, key=lambda crop: hashlib.sha256(f"{seed}/{crop.sha256}".encode()).digest())


def round_robin_copies(members: Sequence[CropFacts], copies: int, seed: int) -> dict[int, int]:
    """Crop id -> augmented copies, `copies` in all, handed out round-robin over a seeded crop order.

    Each crop gets base or base + 1 copies, and a larger count only adds copies, never moves them. The order
    depends on the crops' bytes and the seed alone, so a subset of crops (the training side of a snapshot)
    is served in the same relative order as the whole.
    """
    if not members:
        return {}
    base, remainder = divmod(copies, len(members))
    return {
        crop.id: base + (1 if position < remainder else 0)
        for position, crop in enumerate(_seeded_order(members, seed))
    }


def plan_expansion(
    crops: Sequence[CropFacts], class_names: Sequence[str], target: int, balance: Balance, seed: int
) -> ExpansionPlan:
    """How many augmented copies of each crop reach `target`; a pure function of its arguments."""
    if balance not in BALANCES:
        raise ExpandError(f"--balance must be one of {', '.join(BALANCES)}, not {balance!r}")
    by_class: dict[str, list[CropFacts]] = {name: [] for name in class_names}
    for crop in crops:
        by_class[crop.label].append(crop)
    extra = apportion({name: len(members) for name, members in by_class.items()}, target, balance)
    variants: dict[int, int] = {}
    for name, members in by_class.items():
        variants |= round_robin_copies(members, extra[name], seed)
    per_class = {name: ClassCounts(len(by_class[name]), extra[name]) for name in class_names}
    return ExpansionPlan(target=target, balance=balance, seed=seed, per_class=per_class, variants=variants)


# ---------------------------------------------------------------------------------------------------------
# Running it


@dataclass(frozen=True)
class CropJob:
    crop_id: int
    crop_relpath: str
    crop_sha256: str  # recorded when the crop was made: the file is checked against it before use
    variants: tuple[tuple[int, int], ...]  # (variant index, item seed)


@dataclass(frozen=True)
class AugmentedFile:
    crop_id: int
    variant_index: int
    relpath: str
    sha256: str
    params: dict[str, Any]


@dataclass(frozen=True)
class JobResult:
    crop_id: int
    planned: int  # variants the job was asked for
    files: tuple[AugmentedFile, ...] = ()
    error: str | None = None  # the file and what is wrong with it
    reason: str | None = None  # CORRUPT_FILE or UNREADABLE when there is an error
    read_s: float = 0.0  # reading the crop and checking its sha256 (per batch: on the batch's first result)


def run_batch(jobs: Sequence[CropJob], recipe: Compose, store: FileStore) -> list[JobResult]:
    """Make every variant of a few crops (each decoded once), then store all their PNGs together.

    Storing them in one `put_many` shares the fsyncs, which otherwise cost more than making the image.
    A crop file that is corrupt or cannot be read is a result with an error and its reason, not an exception.
    """
    errors: dict[int, tuple[str, str]] = {}  # crop id -> (reason, message)
    blobs: list[tuple[bytes, str]] = []
    made: list[tuple[int, int, dict[str, Any]]] = []  # (crop id, variant index, params) of each blob
    read_s = 0.0
    for job in jobs:
        started = time.perf_counter()
        try:
            data = store.read_verified(job.crop_relpath, job.crop_sha256)
        except (CorruptFileError, UnsafePathError) as exc:
            errors[job.crop_id] = (CORRUPT_FILE, str(exc))
            continue
        finally:
            read_s += time.perf_counter() - started
        try:
            image = decode_crop(data)
        except ValueError as exc:
            errors[job.crop_id] = (UNREADABLE, f"{job.crop_relpath}: {exc}")
            continue
        for variant_index, seed in job.variants:
            augmented, applied = apply_recipe(recipe, image, seed)
            blobs.append((encode_png(augmented), "png"))
            made.append((job.crop_id, variant_index, {"item_seed": seed, "applied": applied}))
    files: dict[int, list[AugmentedFile]] = defaultdict(list)
    for (crop_id, variant_index, params), stored in zip(
        made, store.put_many("augmented", blobs), strict=True
    ):
        files[crop_id].append(AugmentedFile(crop_id, variant_index, stored.relpath, stored.sha256, params))
    results = []
    for position, job in enumerate(jobs):
        reason, error = errors.get(job.crop_id, (None, None))
        batch_read_s = read_s if position == 0 else 0.0
        results.append(
            JobResult(job.crop_id, len(job.variants), tuple(files[job.crop_id]), error, reason, batch_read_s)
        )
    return results


def batches(jobs: Sequence[CropJob], images: int = IMAGES_PER_BATCH) -> list[tuple[CropJob, ...]]:
    """Consecutive jobs grouped into batches of about `images` augmented images."""
    grouped: list[tuple[CropJob, ...]] = []
    current: list[CropJob] = []
    count = 0
    for job in jobs:
        current.append(job)
        count += len(job.variants)
        if count >= images:
            grouped.append(tuple(current))
            current, count = [], 0
    if current:
        grouped.append(tuple(current))
    return grouped


_worker: dict[str, Any] = {}


def _init_worker(home: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's: it stops handing out work
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would only contend
    _worker["recipe"] = build_recipe()
    _worker["store"] = FileStore(Path(home))


def _run_in_worker(batch: tuple[CropJob, ...]) -> list[JobResult]:
    return run_batch(batch, _worker["recipe"], _worker["store"])


def run_jobs(jobs: Sequence[CropJob], store: FileStore, workers: int) -> Iterator[JobResult]:
    """Results in job order, from `workers` processes (or this one when workers is 1)."""
    grouped = batches(jobs)
    if workers <= 1 or len(grouped) < 2:
        recipe = build_recipe()
        for batch in grouped:
            yield from run_batch(batch, recipe, store)
        return
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=pool_context([__name__]),
        initializer=_init_worker,
        initargs=(str(store.home),),
    )
    try:
        for results in pool.map(_run_in_worker, grouped):
            yield from results
    finally:
        # On Ctrl-C, drop the batches not started; files already written are complete (atomic store).
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class ExpandSummary:
    plan: ExpansionPlan
    dedup: DedupSummary
    created: int = 0
    already_there: int = 0
    failed: list[str] = field(default_factory=list)  # one message per crop left out, naming its file
    corrupt: int = 0  # of the failed: crop files that no longer have their recorded sha256
    interrupted: bool = False
    read_s: float = 0.0  # reading crops and checking their sha256, summed over workers

    @property
    def complete(self) -> bool:
        return not self.failed and not self.interrupted


def existing_variants(session: Session, seed: int) -> set[tuple[int, int]]:
    rows = session.execute(
        select(Augmentation.crop_id, Augmentation.variant_index).where(
            Augmentation.recipe_version == RECIPE_VERSION, Augmentation.seed == seed
        )
    )
    return {(crop_id, variant_index) for crop_id, variant_index in rows}


def _missing_jobs(
    plan: ExpansionPlan, crops: Sequence[CropFacts], done: set[tuple[int, int]]
) -> list[CropJob]:
    by_id = {crop.id: crop for crop in crops}
    wanted: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for crop_id, variant_index in plan.jobs():
        if (crop_id, variant_index) not in done:
            seed = item_seed(plan.seed, by_id[crop_id].sha256, variant_index)
            wanted[crop_id].append((variant_index, seed))
    return [
        CropJob(crop_id, by_id[crop_id].file_relpath, by_id[crop_id].sha256, tuple(v))
        for crop_id, v in sorted(wanted.items())
    ]


def _save(engine: Engine, files: list[AugmentedFile], seed: int) -> None:
    """Rows for files that are already complete on disk (the store wrote them atomically)."""
    if not files:
        return
    rows = [
        {
            "crop_id": f.crop_id,
            "sha256": f.sha256,
            "file_relpath": f.relpath,
            "recipe_version": RECIPE_VERSION,
            "seed": seed,
            "variant_index": f.variant_index,
            "params": f.params,
        }
        for f in files
    ]
    with session_scope(engine) as session:
        session.execute(insert(Augmentation), rows)


def _record_expansion(engine: Engine, plan: ExpansionPlan, max_distance: int) -> None:
    """Remember the plan for snapshots; the same plan run again leaves no new row."""
    with session_scope(engine) as session:
        latest = latest_expansion(session)
        same = latest is not None and (
            (latest.target, latest.balance, latest.seed, latest.recipe_version, latest.max_distance)
            == (plan.target, plan.balance, plan.seed, RECIPE_VERSION, max_distance)
            and latest.counts == plan.counts_json()
        )
        if not same:
            session.add(
                Expansion(
                    target=plan.target,
                    balance=plan.balance,
                    seed=plan.seed,
                    recipe_version=RECIPE_VERSION,
                    max_distance=max_distance,
                    counts=plan.counts_json(),
                )
            )


def latest_expansion(session: Session) -> Expansion | None:
    return session.scalars(select(Expansion).order_by(Expansion.id.desc()).limit(1)).first()


def expand(
    engine: Engine,
    store: FileStore,
    settings: Settings,
    target: int = DEFAULT_TARGET,
    balance: Balance = "proportional",
    seed: int = 0,
    workers: int | None = None,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    progress: ProgressCallback | None = None,
) -> ExpandSummary:
    """Bring de-duplication up to date, then make the augmented images the plan still lacks.

    Holds the home's expand lock throughout: a second expand on the same home gets `HomeBusyError`.
    """
    with hold_home_lock(store.home, "expand"):
        return _expand(engine, store, settings, target, balance, seed, workers, max_distance, progress)


def _expand(
    engine: Engine,
    store: FileStore,
    settings: Settings,
    target: int,
    balance: Balance,
    seed: int,
    workers: int | None,
    max_distance: int,
    progress: ProgressCallback | None,
) -> ExpandSummary:
    workers = default_workers() if workers is None else max(1, workers)
    dedup = update_duplicates(engine, store, max_distance, workers=workers)
    with Session(engine) as session:
        crops = eligible_crops(session, settings.class_names)
    plan = plan_expansion(crops, settings.class_names, target, balance, seed)
    summary = _make_missing(engine, store, crops, plan, dedup, workers, progress)
    if summary.complete:
        _record_expansion(engine, plan, max_distance)
    return summary


def make_planned(
    engine: Engine,
    store: FileStore,
    crops: Sequence[CropFacts],
    plan: ExpansionPlan,
    dedup: DedupSummary,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> ExpandSummary:
    """Make the augmented images of a plan made elsewhere (a sized snapshot's) that the store still lacks.

    The images and their rows are exactly those `expand` makes for the same crop, seed and variant index.
    No expansion is recorded: the latest `expand` plan stays what plain snapshots take their images from.
    Holds the home's expand lock, so it never runs beside an `expand`.
    """
    with hold_home_lock(store.home, "expand"):
        workers = default_workers() if workers is None else max(1, workers)
        return _make_missing(engine, store, crops, plan, dedup, workers, progress)


def _make_missing(
    engine: Engine,
    store: FileStore,
    crops: Sequence[CropFacts],
    plan: ExpansionPlan,
    dedup: DedupSummary,
    workers: int,
    progress: ProgressCallback | None,
) -> ExpandSummary:
    with Session(engine) as session:
        done = existing_variants(session, plan.seed)
    jobs = _missing_jobs(plan, crops, done)
    summary = ExpandSummary(plan=plan, dedup=dedup, already_there=sum(plan.variants.values()))
    todo = sum(len(job.variants) for job in jobs)
    summary.already_there -= todo
    log.info("expand: %d augmented images to make, %d already there", todo, summary.already_there)
    pending: list[AugmentedFile] = []
    made = 0
    try:
        for result in run_jobs(jobs, store, workers):
            summary.read_s += result.read_s
            if result.error:
                log.warning("%s: crop %d left out: %s", result.reason, result.crop_id, result.error)
                summary.failed.append(f"{result.reason}: {result.error}")
                summary.corrupt += result.reason == CORRUPT_FILE
            pending.extend(result.files)
            made += result.planned
            if len(pending) >= _INSERT_BATCH:
                pending, finished = [], pending
                _save(engine, finished, plan.seed)
                summary.created += len(finished)
            if progress is not None:
                progress(made, todo)
    except KeyboardInterrupt:
        summary.interrupted = True
        log.warning("interrupted: keeping the augmented images already made; run the command again to finish")
    finally:
        _save(engine, pending, plan.seed)  # rows only for files already complete on disk
        summary.created += len(pending)
    return summary
