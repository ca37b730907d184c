"""Helpers the collect sources share: JSON-safe values for a sample's metadata, the empty truth table of real
sources, address-free error messages, and the collection funnel of a real source's collect parquet."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pyarrow as pa

# `<_io.BytesIO object at 0x7f…>` (PIL's UnidentifiedImageError, any default repr): differs from run to run
_ADDRESS = re.compile(r"\s+at\s+0x[0-9a-fA-F]+")
_LONG_HEX = re.compile(r"0x[0-9a-fA-F]{8,}")  # a bare address (an id(), a pointer), not a short code like 0x0112


def clean_message(message: str | None) -> str | None:
    """``message`` without memory addresses, so that the same failure gives the same bytes on every run:
    ``cannot identify image file <_io.BytesIO object at 0x7f3a…>`` -> ``... <_io.BytesIO object>``."""
    if message is None or (isinstance(message, float) and math.isnan(message)):
        return None
    return _LONG_HEX.sub("0x…", _ADDRESS.sub("", str(message)))


def error_message(exc: BaseException) -> str:
    """``<exception type>: <message>``, address-free (:func:`clean_message`)."""
    return clean_message(f"{type(exc).__name__}: {exc}")


def jsonable(v):
    """``v`` as a JSON-safe value (numpy scalars and arrays, NaN/inf -> None, bytes -> hex, timestamps)."""
    if isinstance(v, np.ndarray):
        return [jsonable(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, (pd.Timestamp,)):
        return v.isoformat()
    if v is pd.NaT or v is pd.NA:
        return None
    return v


def empty_truth() -> pa.Table:
    """The truth table's columns with zero rows (real sources have no ground truth)."""
    from facecaption.synthface.render import DRAWABLE  # noqa: PLC0415

    schema = pa.schema([("key", pa.string()), ("face", pa.int64()), *[(c, pa.float64()) for c in ("x0", "y0", "x1", "y1")],
                        ("landmarks", pa.list_(pa.float64())), ("identity", pa.int64()), ("degrade", pa.string()),
                        ("tiny", pa.bool_()), *[(a, pa.bool_()) for a in DRAWABLE]])
    return schema.empty_table()


def funnel(images: pd.DataFrame) -> dict:
    """URLs → requested → downloaded → decodable → kept, from collect parquet rows (urls or folder source).

    requested: not stopped before the download (invalid URL, unsafe scheme, opt-out); downloaded: a body
    arrived; decodable: it decoded to an image within the limits; kept: written to the shard (after the
    second opt-out check)."""
    status = images["status"].fillna("not_downloaded")
    downloaded = (images["downloaded"].fillna(False).astype(bool) if "downloaded" in images
                  else status == "success")
    stopped = status.isin(["invalid_url", "unsafe_scheme"]) | ((status == "opted_out") & ~downloaded)
    decodable = downloaded & images["width"].notna() & ~status.isin(["decode_error", "too_many_pixels",
                                                                     "too_small", "bad_aspect_ratio"])
    return {"urls": int(len(images)), "requested": int((~stopped).sum()), "downloaded": int(downloaded.sum()),
            "decodable": int(decodable.sum()), "kept": int((status == "success").sum()),
            "opted_out": int((status == "opted_out").sum())}
