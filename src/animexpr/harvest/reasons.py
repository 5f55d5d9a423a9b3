"""Why a harvested post was not downloaded: short, stable strings stored in `Post.reason`.

A post is recorded once, with state `downloaded`, `skipped` (our policy said no; it never comes back) or
`failed` (we tried and could not; `harvest --retry-failed` tries again). The reasons:

skipped
    - ``bad_metadata``: a field that would name a file or fill a column is malformed: ``md5`` not exactly 32
      lowercase hex digits, ``file_ext`` not a short alphanumeric type name, a file URL that is not http(s),
      or, with ``--variant sample``, a sample URL whose extension is not a supported type. Nothing of such a
      post is fetched or written; its file fields are not stored. A post whose ``id`` is not an integer from 1
      to 2**63-1 cannot be recorded at all: it is only counted (each time a page shows it) and logged.
    - ``deleted``: Danbooru marks the post deleted (``is_deleted``).
    - ``no_file_url``: the post has no ``file_url`` or no ``md5``: banned, taken down, or restricted to higher
      account levels, so its file cannot be fetched.
    - ``unsupported_type``: the file is not a still image we decode (video, ugoira zip, gif, swf, ...).
    - ``too_large``: the file is larger than ``--max-mb`` or has more than 50 megapixels
      (checked from the post's fields, and again while downloading).
    - ``rating``: the rating is outside ``--rating`` (Danbooru filters this already; checked again locally).
    - ``excluded_tag``: the post has an excluded tag (monochrome, comic, sketch, ... and ``--exclude-tag``).
    - ``ambiguous``: the post's tags match more than one class (``--keep-ambiguous`` keeps it instead, in the
      class of the query that found it).

failed
    - ``md5_mismatch``: the downloaded original's md5 differs from the post's md5; nothing was stored.
    - ``not_found``: the file host answered 404 or 410: the download failed for good, at the first answer,
      without retries.
    - ``download_failed``: the file could not be fetched after the retries (5xx, broken connections,
      truncated bodies), or was refused at once by another final answer (other 4xx, an unusable URL).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: `animexpr --help` imports this module, not SQLAlchemy
    from animexpr.db.models import PostState


class HarvestReason(StrEnum):
    BAD_METADATA = "bad_metadata"
    DELETED = "deleted"
    NO_FILE_URL = "no_file_url"
    UNSUPPORTED_TYPE = "unsupported_type"
    TOO_LARGE = "too_large"
    RATING = "rating"
    EXCLUDED_TAG = "excluded_tag"
    AMBIGUOUS = "ambiguous"
    MD5_MISMATCH = "md5_mismatch"
    NOT_FOUND = "not_found"
    DOWNLOAD_FAILED = "download_failed"

    @property
    def state(self) -> PostState:
        """The post state this reason goes with."""
        from animexpr.db.models import PostState

        if self in _FAILURES:
            return PostState.FAILED
        return PostState.SKIPPED


_FAILURES = frozenset({HarvestReason.MD5_MISMATCH, HarvestReason.NOT_FOUND, HarvestReason.DOWNLOAD_FAILED})
