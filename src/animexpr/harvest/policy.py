"""What to search for and which posts to keep: pure functions over Danbooru's post JSON.

Anonymous and basic Danbooru accounts may search for two real tags; the queries spend them on the class tag
and `solo`, and put the rating into a free metatag. Everything else (excluded tags, other classes' tags, file
type and size) is decided here, locally, so that each refusal is recorded with its reason.

The post JSON comes from a server we do not control, and some of its fields become file names and database
values. They are checked here, before anything else reads them (`usable_post_id`, `metadata_problem`):
- `id`: an int (not a bool, float or string) from 1 to MAX_POST_ID; otherwise the post cannot be recorded.
- `md5`: absent, null or "" (a banned post: `no_file_url`), else exactly 32 lowercase hex digits.
- `file_ext`: a type name of 1 to 10 letters or digits, required when the post has a file. A well-formed type
  we do not decode (mp4, zip, swf, toml) stays `unsupported_type`; anything else (`../x`, "", 7) is bad.
- `file_url`, and with `--variant sample` a `large_file_url` other than the original: http(s) URLs; the
  sample URL's extension must be one of SUPPORTED_FILE_TYPES, since it becomes the stored file's extension.
A post failing any of these is skipped as `bad_metadata` and none of its file fields is stored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from animexpr.config import ClassSpec
from animexpr.errors import ConfigError, shown
from animexpr.harvest.reasons import HarvestReason
from animexpr.store import FILE_EXTENSIONS, MD5_PATTERN

# Faces in these are rarely usable for an expression dataset: no colour, panels, several views of one person.
DEFAULT_EXCLUDED_TAGS = (
    "monochrome",
    "greyscale",
    "comic",
    "4koma",
    "2koma",
    "sketch",
    "lineart",
    "spot_color",
    "multiple_views",
)
# Still images the cropper can decode, all of them extensions the store accepts; gif is left out because most
# are animated.
SUPPORTED_FILE_TYPES = frozenset(FILE_EXTENSIONS) - {"gif"}
# What a file type looks like in Danbooru's JSON (jpg, png, mp4, zip, swf, ...), known to us or not.
_FILE_TYPE_PATTERN = re.compile(r"[a-z0-9]{1,10}")
RATINGS = ("g", "s", "q", "e")
SOLO_TAG = "solo"

Variant = Literal["original", "sample"]


@dataclass(frozen=True)
class HarvestOptions:
    """The knobs of one harvest; `per_class`: how many downloaded posts each class should have in store."""

    per_class: int = 1000
    ratings: tuple[str, ...] = ("g", "s")  # empty: every rating
    variant: Variant = "original"
    excluded_tags: frozenset[str] = field(default_factory=lambda: frozenset(DEFAULT_EXCLUDED_TAGS))
    keep_ambiguous: bool = False
    max_file_bytes: int = 30 * 1024 * 1024
    max_pixels: int = 50_000_000
    downloads: int = 4
    retry_failed: bool = False


@dataclass(frozen=True)
class QueryPlan:
    """One Danbooru search and the class whose posts it finds; the query text keys the persisted cursor."""

    class_name: str
    tag: str
    text: str


@dataclass(frozen=True)
class Verdict:
    """Keep the post (reason None) or skip it with a reason and a one-line detail."""

    reason: HarvestReason | None = None
    detail: str | None = None

    @property
    def keep(self) -> bool:
        return self.reason is None


def parse_ratings(text: str) -> tuple[str, ...]:
    """`g,s` -> ("g", "s"); `all` or empty -> () meaning no rating filter."""
    if text.strip().lower() in ("", "all"):
        return ()
    ratings = tuple(dict.fromkeys(part.strip().lower()[:1] for part in text.split(",") if part.strip()))
    unknown = [rating for rating in ratings if rating not in RATINGS]
    if unknown:
        raise ConfigError(f"--rating: unknown rating {unknown[0]!r}; use letters of g,s,q,e or 'all'")
    return ratings


def build_queries(classes: Iterable[ClassSpec], ratings: tuple[str, ...]) -> list[QueryPlan]:
    """One query per class tag: `<tag> solo [rating:g,s]` (two real tags and a free metatag)."""
    plans: list[QueryPlan] = []
    owner: dict[str, str] = {}
    for spec in classes:
        for tag in spec.tags:
            if tag in owner and owner[tag] != spec.name:
                raise ConfigError(f"classes: tag {tag!r} belongs to both {owner[tag]!r} and {spec.name!r}")
            owner[tag] = spec.name
            terms = [tag] if tag == SOLO_TAG else [tag, SOLO_TAG]
            if ratings:
                terms.append("rating:" + ",".join(ratings))
            plans.append(QueryPlan(spec.name, tag, " ".join(terms)))
    return plans


def post_tags(post: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(str(post.get("tag_string") or "").split())


def matching_classes(tags: frozenset[str], classes: Iterable[ClassSpec]) -> list[str]:
    return [spec.name for spec in classes if tags.intersection(spec.tags)]


def usable_post_id(post: object) -> int | None:
    """The post's id when it can key a row: an int from 1 to MAX_POST_ID (bool, float, str are not ids)."""
    from animexpr.db.models import MAX_POST_ID  # here: `animexpr --help` imports this module, not SQLAlchemy

    if not isinstance(post, Mapping):
        return None
    value = post.get("id")
    if type(value) is not int or not 1 <= value <= MAX_POST_ID:
        return None
    return value


def usable_ids(page: Iterable[object]) -> list[int]:
    return [post_id for post in page if (post_id := usable_post_id(post)) is not None]


def metadata_problem(post: Mapping[str, Any], variant: Variant) -> str | None:
    """What makes a field that would reach a path or a column unusable (see the module docstring), or None."""
    md5, file_url, file_ext = post.get("md5"), post.get("file_url"), post.get("file_ext")
    if _given(md5) and not (isinstance(md5, str) and MD5_PATTERN.fullmatch(md5)):
        return f"md5 {shown(md5)} is not 32 lowercase hex digits"
    if _given(file_url) and not is_http_url(file_url):
        return f"file_url {shown(file_url)} is not an http(s) URL"
    has_file = _given(md5) and _given(file_url)
    if (has_file or file_ext is not None) and not is_file_type(file_ext):
        return f"file_ext {shown(file_ext)} is not a file type"
    if variant == "sample" and has_file:
        return _sample_url_problem(post)
    return None


def _sample_url_problem(post: Mapping[str, Any]) -> str | None:
    sample_url = post.get("large_file_url")
    if not _given(sample_url) or sample_url == post.get("file_url"):
        return None  # the original itself is fetched
    if not is_http_url(sample_url):
        return f"large_file_url {shown(sample_url)} is not an http(s) URL"
    ext = url_ext(str(sample_url)).lower()
    if ext not in SUPPORTED_FILE_TYPES:
        allowed = ", ".join(sorted(SUPPORTED_FILE_TYPES))
        return f"the sample URL's extension {shown(ext)} is not one of {allowed}"
    return None


def _given(value: object) -> bool:
    return value is not None and value != ""


def is_file_type(value: object) -> bool:
    return isinstance(value, str) and _FILE_TYPE_PATTERN.fullmatch(value.lower()) is not None


def is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # a malformed IPv6 host, for one
        return False


def judge_post(
    post: Mapping[str, Any], plan: QueryPlan, classes: Iterable[ClassSpec], options: HarvestOptions
) -> Verdict:
    """Decide whether to download `post`, found by `plan`; `classes` are all configured classes.

    The post's id must be usable (`usable_post_id`); every other field is checked here.
    """
    problem = metadata_problem(post, options.variant)
    if problem is not None:
        return Verdict(HarvestReason.BAD_METADATA, problem)
    if post.get("is_deleted"):
        return Verdict(HarvestReason.DELETED)
    if not post.get("file_url") or not post.get("md5"):
        missing = "file_url" if not post.get("file_url") else "md5"
        banned = " (banned)" if post.get("is_banned") else ""
        return Verdict(HarvestReason.NO_FILE_URL, f"no {missing} in the post{banned}")
    file_ext = str(post.get("file_ext") or "").lower()
    if file_ext not in SUPPORTED_FILE_TYPES:
        return Verdict(HarvestReason.UNSUPPORTED_TYPE, f"file type {file_ext or 'unknown'}")
    size_problem = _size_problem(post, options)
    if size_problem:
        return Verdict(HarvestReason.TOO_LARGE, size_problem)
    rating = post.get("rating")
    if options.ratings and rating not in options.ratings:
        return Verdict(HarvestReason.RATING, f"rating {rating}")
    tags = post_tags(post)
    excluded = sorted(tags & options.excluded_tags)
    if excluded:
        return Verdict(HarvestReason.EXCLUDED_TAG, "tagged " + ", ".join(excluded))
    matches = matching_classes(tags, classes)
    if len(matches) > 1 and not options.keep_ambiguous:
        return Verdict(HarvestReason.AMBIGUOUS, "matches classes " + ", ".join(matches))
    return Verdict()


def _size_problem(post: Mapping[str, Any], options: HarvestOptions) -> str | None:
    file_size = post.get("file_size")
    if isinstance(file_size, int) and file_size > options.max_file_bytes and options.variant == "original":
        return f"{file_size / 1e6:.1f} MB > {options.max_file_bytes / 1e6:.1f} MB"
    width, height = post.get("image_width"), post.get("image_height")
    has_sample = options.variant == "sample" and bool(post.get("large_file_url"))
    if (
        isinstance(width, int)
        and isinstance(height, int)
        and width * height > options.max_pixels
        and not has_sample
    ):
        return f"{width}x{height} pixels > {options.max_pixels / 1e6:.0f} megapixels"
    return None


@dataclass(frozen=True)
class FileChoice:
    """Which file of a post to fetch and how to check it."""

    url: str
    ext: str
    check_md5: bool  # only an original's bytes have the post's md5


def choose_file(post: Mapping[str, Any], variant: Variant) -> FileChoice:
    original = str(post["file_url"])
    url = original
    if variant == "sample" and post.get("large_file_url"):
        url = str(post["large_file_url"])
    is_original = url == original
    ext = str(post.get("file_ext") or "") if is_original else url_ext(url)
    return FileChoice(url=url, ext=ext.lower() or "jpg", check_md5=is_original)


def url_ext(url: str) -> str:
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1] if "." in name else ""
