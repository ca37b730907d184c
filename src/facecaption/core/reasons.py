"""Rejection reasons, as enums: every record a stage drops carries one of these in its ``reason`` column
(a ``reason`` may add detail after a colon, ``"corrupt_image: unexpected shape (1, 1)"``; its category is the
part before the colon, :func:`category`). The values are the strings written to the parquet, so readers can
compare with the enum members or with plain strings.
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """Base: a reason is its string value (``str(Reason.X) == Reason.X.value``)."""

    def __str__(self) -> str:
        return self.value


class ImageReason(Reason):
    """Why an image could not be decoded (faces stage, :func:`facecaption.faces.decode.decode_image`)."""

    EMPTY = "empty_file"
    NOT_IMAGE = "not_an_image"
    BOMB = "decompression_bomb"
    CORRUPT = "corrupt_image"
    TOO_SMALL = "image_too_small"


class FaceReason(Reason):
    """Why a detected face was dropped (faces stage, ``faces/<shard>.records.parquet``, face rows)."""

    LOW_SCORE = "low_score"
    TOO_SMALL = "too_small"
    TOO_MANY = "too_many_faces"
    BLURRY = "blurry"
    TOO_DARK = "too_dark"
    ALIGN_FAILED = "align_failed"


class ImageOutcome(Reason):
    """Why an image gave no kept face, besides :class:`ImageReason` (faces stage, image rows, ``face = -1``)."""

    NO_FACE = "no_face"
    NO_FACE_KEPT = "no_face_kept"
    DETECT_ERROR = "detect_error"
    MISSING = "missing_from_tar"
    DUPLICATE = "duplicate_key"
    NO_IMAGE = "missing_image"


class ReleaseReason(Reason):
    """Why a release row (source = release: one released face box) gave no kept face, besides the collect status
    of its URL and the image's decode reasons (faces stage, face rows with a ``release_row``)."""

    MALFORMED_BOX = "malformed_box"  # not four finite numbers with x1 > x0 and y1 > y0
    BOX_OUTSIDE = "box_outside_image"  # less than release.min_inside of the box lies inside the image
    IMAGE_CHANGED = "image_changed"  # the downloaded image's size differs from the released size
    NO_FACE_IN_BOX = "no_face_in_box"  # the detector found no face in the box (release.box_only: drop)
    EMPTY_CAPTION = "empty_caption"  # the release row has no face caption (release.empty_caption: drop)


class CollectStatus(Reason):
    """The status of a row of the collect parquet (real sources; ``success`` = the image is in the shard)."""

    SUCCESS = "success"
    INVALID_URL = "invalid_url"
    UNSAFE_SCHEME = "unsafe_scheme"
    OPTED_OUT = "opted_out"
    HTTP_ERROR = "http_error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    TRUNCATED = "truncated"
    TOO_LARGE = "too_large"
    UNSAFE_REDIRECT = "unsafe_redirect"
    DISALLOWED = "disallowed"
    DECODE_ERROR = "decode_error"
    TOO_MANY_PIXELS = "too_many_pixels"
    TOO_SMALL = "too_small"
    BAD_ASPECT_RATIO = "bad_aspect_ratio"
    HASH_MISMATCH = "hash_mismatch"
    NOT_DOWNLOADED = "not_downloaded"


class TrainSkip(Reason):
    """Why a caption-shard sample was skipped by the training loader (counted in ``logs/train``)."""

    MISSING_CAPTION = "missing_caption"
    EMPTY_TEXT = "empty_text"
    BAD_IMAGE = "bad_image"
    CONTAMINATED = "contaminated"  # flagged by the contamination audit (train.exclude_contaminated)


def category(reason: str | None) -> str:
    """The reason's category (the part before ':')."""
    return "" if not reason else str(reason).split(":", 1)[0]


def plain(value):
    """numpy scalars as plain Python values (for messages)."""
    return value.item() if hasattr(value, "item") else value
