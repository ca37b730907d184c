"""One conversion of any PIL image to 8-bit RGB, shared by the folder source and the faces stage's decoder.

:func:`to_rgb` keeps the picture whatever the mode; Pillow's own ``convert("RGB")`` clips 16/32-bit and
float samples to 0..255 (a 16-bit photo becomes almost white) and drops alpha (transparent pixels become
whatever colour they store, often black). The rules, mode by mode:

* ``RGB``, ``L``, ``1``, ``CMYK``, ``YCbCr``, ``HSV``, ``RGBX``, ``P``: Pillow's conversion (unchanged: an
  8-bit RGB or L JPEG converts to exactly the pixels it did before).
* alpha — ``RGBA``, ``RGBa``, ``LA``, ``PA``, and ``P``/``L``/``RGB``/16-bit gray with a ``transparency``
  entry (PNG tRNS, GIF): composited onto white.
* 16-bit gray (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``; 16-bit PNG, TIFF, PGM): the samples span
  0..65535, so they are divided by 257 (rounded): 65535 → 255, and a 16-bit image made from an 8-bit one
  (v * 257) converts back exactly. The brightness of the photo is kept (a dark photo stays dark); no
  contrast stretch. A file that declares fewer bits (TIFF ``BitsPerSample`` 10/12/14) is scaled by its
  own 2**bits - 1.
* 32-bit integer gray (``I``): Pillow uses this mode for 16-bit PGM/PPM (rescaled by Pillow to 0..65535)
  and some 16/32-bit TIFFs, so samples that all lie in 0..65535 are read as 16-bit (÷ 257, or the
  declared depth when it is below 16 bits, as above); samples outside that range (true 32-bit data,
  negative values) are stretched from the image's own minimum..maximum to 0..255.
* float gray (``F``): values in 0..1 are taken as normalised (× 255), values in 0..255 as 8-bit levels,
  anything else is stretched from its minimum..maximum; NaN and ±inf count as 0.
* 48-bit RGB and 64-bit RGBA PNGs: Pillow 13 opens them as ``RGB``/``RGBA`` keeping the high byte of each
  sample (at most one level below rounding), so they need nothing extra here (alpha: composited on white).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: modes with an alpha band
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
#: high-bit-depth gray modes converted by scaling (see the module doc)
WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _declared_bits(im: Image.Image) -> int | None:
    """Bits per sample the file declares, where it does (TIFF ``BitsPerSample``), else None."""
    tags = getattr(im, "tag_v2", None)
    try:
        bits = tags.get(258) if tags is not None else None
    except Exception:  # noqa: BLE001 (a broken tag costs only the hint)
        return None
    if isinstance(bits, (tuple, list)):
        bits = bits[0] if bits else None
    return int(bits) if isinstance(bits, (int, np.integer)) and 0 < int(bits) <= 32 else None


def _stretch(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)


def wide_gray_to_l(im: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float gray image as 8-bit ``L`` (rules in the module doc)."""
    arr = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        arr = np.where(np.isfinite(arr), arr, 0.0)
        if arr.size and arr.min() >= 0 and arr.max() <= 1:
            arr = arr * 255.0
        elif arr.size and (arr.min() < 0 or arr.max() > 255):
            arr = _stretch(arr)
    elif arr.size and (arr.min() < 0 or arr.max() > 65535):  # mode I beyond 16 bits: its own range
        arr = _stretch(arr)
    else:
        top = 65535.0
        bits = _declared_bits(im)
        if bits is not None and bits < 16 and (not arr.size or arr.max() <= 2 ** bits - 1):
            top = float(2 ** bits - 1)
        arr = arr * (255.0 / top)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")


def _on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image as an 8-bit ``RGB`` image, the picture kept (module doc); transparency on white."""
    if im.mode in WIDE_GRAY_MODES or im.mode.startswith("I;16"):
        gray = wide_gray_to_l(im)
        key = im.info.get("transparency")
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):  # tRNS of a 16-bit gray PNG
            alpha = np.where(np.asarray(im) == key, 0, 255).astype(np.uint8)
            return _on_white(Image.merge("RGBA", (gray, gray, gray, Image.fromarray(alpha, "L"))))
        return gray.convert("RGB")
    if im.mode in ALPHA_MODES or (im.mode in ("P", "L", "RGB") and "transparency" in im.info):
        return _on_white(im.convert("RGBA"))
    return im.convert("RGB")


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """:func:`to_rgb` as a contiguous ``(h, w, 3)`` uint8 array."""
    return np.ascontiguousarray(np.asarray(to_rgb(im), dtype=np.uint8))
