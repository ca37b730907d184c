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


class TrainSkip(Reason):
    """Why a caption-shard sample was skipped by the training loader (counted in ``logs/train``)."""

    MISSING_CAPTION = "missing_caption"
    EMPTY_TEXT = "empty_text"
    BAD_IMAGE = "bad_image"


def category(reason: str | None) -> str:
    """The reason's category (the part before ':')."""
    return "" if not reason else str(reason).split(":", 1)[0]


def plain(value):
    """numpy scalars as plain Python values (for messages)."""
    return value.item() if hasattr(value, "item") else value
