"""facecaption.core.imageio.to_rgb: every PIL mode becomes 8-bit RGB with the picture kept — 16-bit, 32-bit and
float gray scaled (not clipped to white), transparency composited onto white, 48/64-bit PNGs, CMYK,
bilevel — checked on real encoded files where a format carries the mode, through the faces stage's
decoder too."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from facecaption.core.imageio import to_rgb, to_rgb_array
from facecaption.faces.decode import decode_image


def reference() -> np.ndarray:
    """A synthface portrait (RGB uint8) with its full 0..255 range of gray levels and more."""
    from facecaption.synthface.render import render_image

    img, faces = render_image(np.random.default_rng(7), size=96, n_faces=1, face_scale=(0.5, 0.55))
    assert len(faces) == 1
    return img


def gray_of(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


def reopen(im: Image.Image, fmt: str = "PNG", **kw) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    return out


def cv2_png(arr: np.ndarray) -> Image.Image:
    """A PNG written by OpenCV (16 bits per sample for uint16 input; BGR(A) channel order)."""
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    out = Image.open(io.BytesIO(buf.tobytes()))
    out.load()
    return out


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


def as_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _cases():
    """name -> (PIL image in that mode, the RGB uint8 it must convert to, tolerance in gray levels)."""
    rgb = reference()
    g8 = gray_of(rgb)
    g16 = g8.astype(np.uint16) * 257  # the 16-bit image of the 8-bit one: 0..65535
    white = np.full_like(rgb, 255)
    half = np.zeros(g8.shape, np.uint8)
    half[:, : g8.shape[1] // 2] = 255  # left half opaque, right half transparent
    on_white = np.where(half[:, :, None] == 255, rgb, white)
    pil = Image.fromarray(rgb)
    pal = pil.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal_t = pal.copy()
    idx = np.asarray(pal)
    pal_t.info["transparency"] = int(idx[0, 0])
    pal_rgb = np.asarray(pal.convert("RGB"))
    pal_t_expect = np.where((idx == idx[0, 0])[:, :, None], white, pal_rgb)
    bilevel = pil.convert("1")
    l_key = int(g8[0, 0])
    rgb_key = tuple(int(v) for v in rgb[0, 0])
    cases = {
        "RGB": (pil, rgb, 0),
        "L": (Image.fromarray(g8), as_rgb(g8), 0),
        "1": (reopen(bilevel), as_rgb(np.asarray(bilevel.convert("L"))), 0),
        "P": (reopen(pal), pal_rgb, 0),
        "P+transparency": (reopen(pal_t), pal_t_expect, 0),
        "L+transparency": (reopen(Image.fromarray(g8), transparency=l_key),
                           np.where((g8 == l_key)[:, :, None], white, as_rgb(g8)), 0),
        "RGB+transparency": (reopen(pil, transparency=rgb_key),
                             np.where((rgb == rgb_key).all(2)[:, :, None], white, rgb), 0),
        "RGBA": (reopen(Image.fromarray(np.dstack([rgb, half]), "RGBA")), on_white, 0),
        "LA": (reopen(Image.fromarray(np.dstack([g8, half]), "LA")),
               np.where(half[:, :, None] == 255, as_rgb(g8), white), 0),
        "PA": (Image.fromarray(np.dstack([rgb, half]), "RGBA").convert("PA"), None, 0),
        "CMYK": (reopen(pil.convert("CMYK"), "JPEG", quality=95), rgb, 12),
        "I;16 (16-bit PNG)": (reopen(Image.fromarray(g16)), as_rgb(g8), 0),
        "I;16 (16-bit TIFF)": (reopen(Image.fromarray(g16), "TIFF"), as_rgb(g8), 0),
        "I;16B": (Image.frombytes("I;16B", g16.shape[::-1], g16.astype(">u2").tobytes()), as_rgb(g8), 0),
        "I;16L": (Image.frombytes("I;16L", g16.shape[::-1], g16.astype("<u2").tobytes()), as_rgb(g8), 0),
        "I;16+transparency": (reopen(Image.fromarray(g16), transparency=int(g16[0, 0])),
                              np.where((g8 == g8[0, 0])[:, :, None], white, as_rgb(g8)), 0),
        "I (16-bit PGM)": (reopen(Image.fromarray(g16), "PPM"), as_rgb(g8), 0),
        "I (32-bit values)": (Image.fromarray(g8.astype(np.int32) * 2**22 - 2**29), None, 1),
        "F (0..1)": (Image.fromarray(g8.astype(np.float32) / 255), as_rgb(g8), 0),
        "F (0..255)": (Image.fromarray(g8.astype(np.float32)), as_rgb(g8), 0),
        "F (other range)": (Image.fromarray(g8.astype(np.float32) * 1000 - 7), None, 1),
        "RGB 48-bit PNG": (cv2_png(rgb[:, :, ::-1].astype(np.uint16) * 257), rgb, 0),
        "RGBA 64-bit PNG": (cv2_png(np.dstack([rgb[:, :, ::-1], half]).astype(np.uint16) * 257), on_white, 0),
    }
    stretched = np.rint((g8 - float(g8.min())) * 255.0 / (float(g8.max()) - float(g8.min())))
    for name in ("I (32-bit values)", "F (other range)"):  # beyond 16 bits / odd floats: min..max → 0..255
        im, _, tol = cases[name]
        cases[name] = (im, as_rgb(stretched.astype(np.uint8)), tol)
    im, _, tol = cases["PA"]
    cases["PA"] = (im, np.where(half[:, :, None] == 255, np.asarray(im.convert("RGB")), white), tol)
    return cases


CASES = _cases()


@pytest.mark.parametrize("name", list(CASES))
def test_every_mode_keeps_the_picture(name):
    im, expect, tol = CASES[name]
    if name.startswith(("I;16", "I ", "F ")):  # the mode under test really is the wide one
        assert im.mode.startswith(name.split(" ")[0].split("+")[0]), im.mode
    out = to_rgb(im)
    assert out.mode == "RGB" and out.size == im.size
    arr = to_rgb_array(im)
    assert arr.dtype == np.uint8 and arr.shape == (im.size[1], im.size[0], 3) and arr.flags.c_contiguous
    assert diff(arr, expect) <= tol, (name, diff(arr, expect))


def test_sixteen_bit_is_scaled_by_its_bit_depth_not_clipped_nor_stretched():
    """65535 → 255 and 257·v → v: a dark 16-bit photo stays dark (no contrast stretch), a bright one is
    not clipped to white (Pillow's own convert("RGB") would make nearly every pixel 255)."""
    dark = np.array([[0, 257, 2570, 12850]], np.uint16)  # 0, 1, 10, 50 in 8 bits
    assert to_rgb_array(reopen(Image.fromarray(dark)))[0, :, 0].tolist() == [0, 1, 10, 50]
    bright = np.array([[65535, 32896, 257 * 200]], np.uint16)
    assert to_rgb_array(reopen(Image.fromarray(bright)))[0, :, 0].tolist() == [255, 128, 200]
    assert np.asarray(Image.fromarray(bright).convert("RGB"))[0, :, 0].tolist() == [255, 255, 255]


def test_faces_decoder_uses_the_shared_conversion():
    """decode_image (the faces stage) gives the same pixels as to_rgb for every encoded case."""
    for name, (im, expect, tol) in CASES.items():
        fmt = "TIFF" if im.mode in ("I", "F", "I;16B", "I;16L", "PA") else "JPEG" if im.mode == "CMYK" else "PNG"
        buf = io.BytesIO()
        im.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        rgb, reason = decode_image(buf.getvalue())
        assert reason is None, (name, reason)
        assert diff(rgb, to_rgb_array(Image.open(io.BytesIO(buf.getvalue())))) == 0, name
        if fmt != "JPEG":  # re-encoding a JPEG adds its own error; compared with to_rgb above
            assert diff(rgb, expect) <= max(tol, 1), (name, diff(rgb, expect))
