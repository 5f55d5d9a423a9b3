"""What goes into a snapshot, decided before any file is read: the train/test split and, for a snapshot of a
given size, how many images of each class and how many augmented copies of each training crop.

The split comes first and the expansion second, so that the size asked for is the size made: the test side
holds originals only, so its crops get no copies, and the copies that reach the size all go to training
crops. The per-class totals follow the balance over the whole snapshot (`apportion`, as `expand` does), so a
snapshot of size N has the class counts `expand --target N` plans, whatever the test fraction.

Everything here is a pure function of the crops, the seeds and the settings: the same inputs give the same
plan, and so the same manifest.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from animexpr.curate.dedup import CropFacts
from animexpr.curate.defaults import BALANCES, Balance
from animexpr.curate.expand import ClassCounts, ExpansionPlan, apportion, round_robin_copies
from animexpr.errors import AnimexprError


class SnapshotError(AnimexprError):
    pass


# ---------------------------------------------------------------------------------------------------------
# Split


def _seeded_key(seed: int, key: int) -> bytes:
    return hashlib.sha256(f"{seed}/{key}".encode()).digest()


def assign_splits(
    crops: Sequence[CropFacts],
    group_of: dict[int, int],
    class_names: Sequence[str],
    test_fraction: float,
    seed: int,
) -> dict[int, str]:
    """Crop id -> "train" or "test", whole groups at a time, stratified by class.

    A group counts for its most common label. In each class, groups are taken in a seeded order until the
    test side holds round(test_fraction x the class's crops); a class with two groups or more gets at least
    one test group when the fraction is above zero, and always keeps one group for training.
    """
    if not 0 <= test_fraction < 1:
        raise SnapshotError(f"--test-fraction must be at least 0 and below 1, not {test_fraction}")
    members: dict[int, list[CropFacts]] = defaultdict(list)
    for crop in crops:
        members[group_of[crop.id]].append(crop)
    class_index = {name: index for index, name in enumerate(class_names)}
    strata: dict[str, list[int]] = defaultdict(list)
    for key, group in members.items():
        labels = Counter(crop.label for crop in group)
        strata[min(labels, key=lambda name: (-labels[name], class_index[name]))].append(key)
    split = {crop.id: "train" for crop in crops}
    for keys in strata.values():
        keys.sort(key=lambda key: _seeded_key(seed, key))
        wanted = math.floor(test_fraction * sum(len(members[key]) for key in keys) + 0.5)
        if test_fraction > 0 and len(keys) >= 2:
            wanted = max(wanted, 1)
        taken = 0
        for key in keys[:-1]:
            if taken >= wanted:
                break
            for crop in members[key]:
                split[crop.id] = "test"
            taken += len(members[key])
    return split


# ---------------------------------------------------------------------------------------------------------
# Size


@dataclass(frozen=True)
class SnapshotSize:
    """A snapshot of exactly `size` images: what `snapshot create --size` asks for."""

    size: int
    balance: Balance = "proportional"
    augment_seed: int = 0  # the seed of the augmented copies (`expand --seed`), not of the split


@dataclass(frozen=True)
class SideCounts:
    train_original: int
    train_augmented: int
    test_original: int

    @property
    def total(self) -> int:
        return self.train_original + self.train_augmented + self.test_original


@dataclass(frozen=True)
class SizedPlan:
    request: SnapshotSize
    per_class: dict[str, SideCounts]
    copies: dict[int, int]  # training crop id -> augmented copies (variant indexes 0 .. copies - 1)

    @property
    def total(self) -> int:
        return sum(counts.total for counts in self.per_class.values())

    def expansion_plan(self) -> ExpansionPlan:
        """The same plan in the expander's terms, to make the copies the store still lacks."""
        per_class = {
            name: ClassCounts(counts.train_original + counts.test_original, counts.train_augmented)
            for name, counts in self.per_class.items()
        }
        return ExpansionPlan(
            target=self.request.size,
            balance=self.request.balance,
            seed=self.request.augment_seed,
            per_class=per_class,
            variants=dict(self.copies),
        )


def plan_sized_snapshot(
    crops: Sequence[CropFacts], split: dict[int, str], class_names: Sequence[str], request: SnapshotSize
) -> SizedPlan:
    """Per-class counts and copies per training crop for a snapshot of exactly `request.size` images.

    Every original is kept (a snapshot never drops an accepted crop to fit a size); each class's total is
    its share of the size by the balance, and the augmented images that reach it are copies of the class's
    training crops, spread round-robin so that a larger size only adds copies.
    """
    if request.balance not in BALANCES:
        raise SnapshotError(f"--balance must be one of {', '.join(BALANCES)}, not {request.balance!r}")
    originals: dict[str, list[CropFacts]] = {name: [] for name in class_names}
    for crop in crops:
        originals[crop.label].append(crop)
    test_count = sum(1 for crop in crops if split[crop.id] == "test")
    if request.size < len(crops):
        raise SnapshotError(
            f"--size {request.size} is below the {len(crops)} de-duplicated accepted crops "
            f"({len(crops) - test_count} training, {test_count} test); a snapshot keeps every original and "
            f"augmentation only adds images: use --size {len(crops)} or more"
        )
    counts = {name: len(members) for name, members in originals.items()}
    extra = apportion(counts, request.size, request.balance)
    per_class: dict[str, SideCounts] = {}
    copies: dict[int, int] = {}
    for name, members in originals.items():
        training = [crop for crop in members if split[crop.id] == "train"]
        if extra[name] and not training:
            raise SnapshotError(
                f"class {name!r} needs {extra[name]} augmented images but all its {len(members)} crops are "
                "on the test side (they share posts or pictures with test crops of other classes): use "
                "another --seed or a smaller --test-fraction"
            )
        copies |= round_robin_copies(training, extra[name], request.augment_seed)
        per_class[name] = SideCounts(len(training), extra[name], len(members) - len(training))
    return SizedPlan(request=request, per_class=per_class, copies=copies)
