"""Robust image decoding: every input ends as an RGB uint8 array or a one-word reason.

A crawl holds truncated downloads, empty files, HTML error pages saved as ``.jpg``, decompression bombs,
CMYK/grayscale/16-bit/palette/alpha images and phone photos whose pixels are stored sideways with an EXIF
orientation tag. :func:`decode_image` turns each into ``(rgb, None)`` or ``(None, reason)`` and never raises.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facecaption.core.imageio import to_rgb
from facecaption.core.reasons import ImageReason, category  # noqa: F401 (category: the reports' grouping)

# the reasons as plain strings, for f-strings (the prefix before ":" is the category counted in reports)
EMPTY, NOT_IMAGE, BOMB, CORRUPT, TOO_SMALL = (r.value for r in ImageReason)


def decode_image(data: bytes | None, max_pixels: int = 50_000_000, min_side: int = 1
                 ) -> tuple[np.ndarray | None, str | None]:
    """Decode image bytes to an upright RGB uint8 array: ``(rgb, None)`` or ``(None, reason)``.

    ``max_pixels`` guards against decompression bombs: the declared size is checked from the header,
    before any pixel is decoded. Images whose shorter side is below ``min_side`` are refused.
    """
    if not data:
        return None, EMPTY
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = max_pixels
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                return None, f"{BOMB}: {w}x{h}"
            im.load()
            try:
                im = ImageOps.exif_transpose(im) or im
            except Exception:  # noqa: BLE001 - a broken EXIF block costs the rotation, not the image
                pass
            rgb = np.asarray(to_rgb(im), dtype=np.uint8)  # any mode, picture kept (facecaption.core.imageio)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return None, f"{BOMB}: {exc}"[:200]
    except UnidentifiedImageError:
        return None, NOT_IMAGE
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, struct.error) as exc:
        return None, f"{CORRUPT}: {type(exc).__name__}: {exc}"[:200]
    except MemoryError:
        return None, f"{BOMB}: out of memory"
    finally:
        Image.MAX_IMAGE_PIXELS = old
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        return None, f"{CORRUPT}: unexpected shape {rgb.shape}"
    if min(rgb.shape[:2]) < min_side:
        return None, f"{TOO_SMALL}: {rgb.shape[1]}x{rgb.shape[0]}"
    return np.ascontiguousarray(rgb), None
