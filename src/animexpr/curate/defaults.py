"""The curate stages' defaults and names that their commands show in `--help`.

Kept in a module that imports nothing heavy, so that the command modules can use them without loading
OpenCV, numpy, SQLAlchemy or starlette (`animexpr --help` must not wait for those); the stages import them
from here too, so each value is written once.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Final, Literal, get_args

# crop
DEFAULT_MARGIN: Final = 0.25
DEFAULT_SIZE: Final = 128
MAX_UPSCALE: Final = 2.0
CASCADE_ENV: Final = "ANIMEXPR_CASCADE"


class DetectorName(StrEnum):
    """The face detectors `crop` and `transform` offer."""

    LBP = "lbp"  # nagadomi's LBP cascade through OpenCV
    ANIMEFACE = "animeface"  # animeface-2009 (optional extra)
    COMBINED = "lbp+animeface"  # both, boxes merged: the default where animeface is installed
    WHOLE = "whole"  # the pictures are face crops already: their centred square


ANIMEFACE_INSTALL_HINT: Final = "pip install 'animexpr[animeface]'"
# No install command here: --help is rich markup, where its [animeface] would read as a style tag.
DETECTOR_HELP: Final = (
    "lbp (OpenCV cascade), animeface (animeface-2009: the optional extra `animeface`), "
    "lbp+animeface (both, boxes merged), or whole (the pictures are face crops already: their centred "
    "square). Default: lbp+animeface where animeface is installed, else lbp."
)


class FacePolicy(StrEnum):
    """What to crop when a post has more than one face (the post's class labels every crop)."""

    SKIP = "skip"  # crop nothing: outcome several_faces
    LARGEST_IF_DOMINANT = "largest-if-dominant"  # the largest face when it dominates, else as skip
    LARGEST = "largest"  # always the largest face
    ALL = "all"  # every face, all with the post's label (the reviewer relabels or rejects)


def default_min_face(size: int, margin: float) -> int:
    """The smallest face box whose crop needs at most 2x upscaling to reach `size`."""
    return math.ceil(size / (MAX_UPSCALE * (1 + 2 * margin)))


# review
DEFAULT_LEASE_SECONDS = 15 * 60
DEFAULT_GRID_SIZE = 200  # the most crops a grid page holds; the window decides how many fit
BULK_ACCEPT_REVIEWER = "bulk-accept"
CSV_IMPORT_REVIEWER = "csv-import"
STATE_FILTER_NAMES = ("pending", "accepted", "rejected", "decided", "any")

# expand, dedup, snapshot
DEFAULT_TARGET = 11_612  # the paper's 7,306 cleaned faces expanded to 11,612 images
DEFAULT_MAX_DISTANCE = 8  # differing bits of the 64-bit perceptual hash
DEFAULT_TEST_FRACTION = 0.1

# How `expand` and `snapshot create --size` share the images out among the classes: proportional keeps each
# class's share of the originals, equal evens the classes out.
Balance = Literal["proportional", "equal"]
BALANCES: tuple[Balance, ...] = get_args(Balance)
