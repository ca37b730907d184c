"""Procedural face renderer with known ground truth (numpy + OpenCV only).

A face is described in *face units*: the origin is the midpoint between the eyes, X grows to the image
right, Y grows downwards, and one unit is half the cheek-to-cheek face width.  The head spans
Y in [-R, R] with R = head height / width in [1.35, 1.55].  Every face is rendered upright into a small
local patch (a premultiplied RGBA float image) at an internal resolution of at most ``_MAX_A`` pixels per
unit, from a height map: base head ellipsoid, eye sockets, brow ridge, nose, cheekbones, lips, chin →
normals → diffuse + ambient light, darkened creases and a small specular highlight.  Albedo carries skin
tone, darker sockets, lips, brows, eyes, stubble and make-up.  Hair, ears, neck, beard, hat, glasses and
earrings are separate layers.  The patch is then scaled / rotated (roll) into the canvas with a single
``cv2.warpAffine``; torso, clothes, necktie and necklace are drawn directly on the canvas.

Ground truth per face: ``box`` is the axis-aligned box of the (rolled) face outline from the upper
forehead (Y = -0.85, about the hairline) to the chin, 0.95 × the cheek-to-cheek width, i.e. a tight,
WIDER-FACE-like box (calibrated against CenterFace's own boxes: mean IoU ≈ 0.86); ``landmarks`` are the
drawn eye centres (image left first), nose tip and mouth corners.

API: ``DRAWABLE`` (the 39 CelebA attributes drawn; "Attractive" is not), ``sample_identity``,
``sample_attributes``, ``render_face``, ``render_image``, ``render_aligned``.

Every random choice comes from the ``numpy.random.Generator`` passed in: same seed → same pixels.
No global random state, no file I/O.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from facecaption.core.celeba import ATTRIBUTES, GROUPS  # noqa: F401  (GROUPS re-exported for callers)

__all__ = ["DRAWABLE", "DEGRADATIONS", "sample_identity", "sample_attributes", "render_face", "render_image",
           "render_aligned"]

# "Attractive" is subjective and not drawn; every other CelebA attribute is controlled.
DRAWABLE: tuple[str, ...] = tuple(a for a in ATTRIBUTES if a != "Attractive")

DEGRADATIONS: tuple[str, ...] = ("blur", "noise", "jpeg", "lowlight", "lowres")

_MAX_A = 40.0  # max internal pixels per face unit (half face width)
_BOX_TOP = -0.85  # top of the ground-truth face box, in face units (upper forehead)
_BOX_SIDE = 0.95  # box half width as a share of the head outline (cheek to cheek)

# skin palette from pale to darkest (linear-ish RGB, 0..1)
_SKIN = np.array([
    [0.97, 0.86, 0.79], [0.93, 0.76, 0.65], [0.86, 0.66, 0.52], [0.76, 0.55, 0.40],
    [0.62, 0.42, 0.29], [0.47, 0.31, 0.21], [0.34, 0.22, 0.15], [0.25, 0.16, 0.11],
], dtype=np.float32)

_HAIR = {
    "black": (0.09, 0.075, 0.07), "brown": (0.36, 0.23, 0.13), "blond": (0.82, 0.66, 0.40),
    "gray": (0.66, 0.65, 0.63), "red": (0.55, 0.22, 0.10), "darkbrown": (0.20, 0.13, 0.08),
}
_EYES = [(0.30, 0.18, 0.09), (0.18, 0.10, 0.05), (0.25, 0.42, 0.60), (0.30, 0.45, 0.30),
         (0.45, 0.38, 0.22), (0.38, 0.48, 0.55)]


# ------------------------------------------------------------------------------------------------
# identities and attributes
# ------------------------------------------------------------------------------------------------
def sample_identity(rng: np.random.Generator) -> dict:
    """Persistent traits of one person (shape, colouring, hair, beard style, …)."""
    male = bool(rng.random() < 0.42)
    young = bool(rng.random() < 0.77)
    pale = bool(rng.random() < 0.06)
    tone = float(rng.uniform(0.0, 0.6)) if pale else float(rng.beta(1.3, 1.6) * (len(_SKIN) - 1))
    if pale:
        tone *= 0.35
    i = min(int(tone), len(_SKIN) - 2)
    skin = _SKIN[i] * (1 - (tone - i)) + _SKIN[i + 1] * (tone - i)
    skin = np.clip(skin * rng.uniform(0.96, 1.04, 3), 0, 1)
    shape = rng.choice(["oval", "round", "square", "long"], p=[0.32, 0.25, 0.23, 0.20])
    chubby = bool(rng.random() < (0.08 if young else 0.16))
    old_gray = (not young) and rng.random() < 0.35
    if old_gray:
        hair = "gray"
    else:
        dark = tone > 3.5
        p = [0.20, 0.28, 0.26, 0.0, 0.06, 0.20] if not dark else [0.58, 0.14, 0.03, 0.0, 0.01, 0.24]
        hair = str(rng.choice(["black", "brown", "blond", "gray", "red", "darkbrown"], p=p))
    bald = bool(male and rng.random() < (0.06 if young else 0.30))
    receding = bool(male and not bald and rng.random() < (0.10 if young else 0.40)) or \
        bool((not male) and rng.random() < 0.02)
    if male:
        length = str(rng.choice(["short", "medium", "long"], p=[0.75, 0.18, 0.07]))
    else:
        length = str(rng.choice(["short", "medium", "long"], p=[0.08, 0.30, 0.62]))
    texture = str(rng.choice(["straight", "wavy", "plain"], p=[0.27, 0.40, 0.33]))
    beard = "none"
    if male:
        beard = str(rng.choice(["none", "stubble", "mustache", "goatee", "full", "sideburns"],
                               p=[0.40, 0.22, 0.07, 0.10, 0.13, 0.08]))
    return {
        "id": int(rng.integers(0, 2**62)),
        "male": male, "young": young, "pale": pale,
        "skin": [float(c) for c in skin], "skin_tone": tone,
        "shape": str(shape), "ratio": float(rng.uniform(1.36, 1.54)),
        "chubby": chubby, "double_chin": bool((chubby or not young) and rng.random() < 0.35),
        "big_nose": bool(rng.random() < (0.32 if male else 0.14)),
        "pointy_nose": bool(rng.random() < 0.30),
        "high_cheekbones": bool(rng.random() < 0.45),
        "big_lips": bool(rng.random() < 0.24),
        "narrow_eyes": bool(rng.random() < 0.11),
        "arched": bool(rng.random() < (0.05 if male else 0.45)),
        "bushy": bool(rng.random() < (0.28 if male else 0.05)),
        "bags": bool(rng.random() < (0.12 if young else 0.45)),
        "hair": hair, "hair_len": length, "hair_texture": texture, "bald": bald, "receding": receding,
        "bangs": bool((not bald) and rng.random() < (0.05 if male else 0.25)),
        "hair_volume": float(rng.uniform(0.06, 0.22)), "parting": float(rng.uniform(-0.4, 0.4)),
        "beard": beard,
        "glasses_wearer": bool(rng.random() < 0.09),
        "eye_color": [float(c) for c in _EYES[int(rng.integers(len(_EYES)))]] if tone < 3.5
        else [float(c) for c in _EYES[int(rng.integers(2))]],
        "eye_sep": float(rng.uniform(0.43, 0.48)), "eye_w": float(rng.uniform(0.185, 0.205)),
        "nose_len": float(rng.uniform(-0.03, 0.03)), "mouth_w": float(rng.uniform(0.30, 0.36)),
        "brow_y": float(rng.uniform(-0.27, -0.23)),
        "lip_tint": [float(c) for c in rng.uniform([0.82, 0.52, 0.52], [0.92, 0.66, 0.64])],
        "clothes": [float(c) for c in rng.uniform(0.05, 0.9, 3)],
    }


def sample_attributes(rng: np.random.Generator, identity: dict) -> dict[str, bool]:
    """One boolean per DRAWABLE attribute, consistent with the identity and with each other."""
    m, young = identity["male"], identity["young"]
    a: dict[str, bool] = {}
    a["Male"], a["Young"] = m, young
    a["Pale_Skin"] = identity["pale"]
    bald = identity["bald"]
    a["Bald"] = bald
    hair = identity["hair"]
    a["Black_Hair"] = (not bald) and hair == "black"
    a["Brown_Hair"] = (not bald) and hair == "brown"
    a["Blond_Hair"] = (not bald) and hair == "blond"
    a["Gray_Hair"] = (not bald) and hair == "gray"
    a["Receding_Hairline"] = (not bald) and identity["receding"]
    a["Wearing_Hat"] = bool(rng.random() < 0.05)
    a["Bangs"] = (not bald) and (not a["Receding_Hairline"]) and (identity["bangs"] or rng.random() < 0.03)
    tex = identity["hair_texture"]
    a["Straight_Hair"] = (not bald) and tex == "straight"
    a["Wavy_Hair"] = (not bald) and tex == "wavy"
    beard = identity["beard"]
    if m and beard == "none" and rng.random() < 0.10:
        beard = "stubble"
    if m and beard != "none" and rng.random() < 0.08:
        beard = "none"  # shaved today
    a["5_o_Clock_Shadow"] = beard == "stubble"
    a["Mustache"] = beard in ("mustache", "full")
    a["Goatee"] = beard in ("goatee", "full")
    a["Sideburns"] = beard in ("sideburns", "full") and not bald
    a["No_Beard"] = not (a["5_o_Clock_Shadow"] or a["Mustache"] or a["Goatee"] or a["Sideburns"])
    a["Smiling"] = bool(rng.random() < 0.48)
    a["Mouth_Slightly_Open"] = bool(rng.random() < (0.70 if a["Smiling"] else 0.26))
    a["Eyeglasses"] = bool(rng.random() < (0.55 if identity["glasses_wearer"] else 0.015))
    a["Heavy_Makeup"] = (not m) and bool(rng.random() < 0.66)
    a["Wearing_Lipstick"] = (not m) and bool(rng.random() < (0.97 if a["Heavy_Makeup"] else 0.45))
    a["Rosy_Cheeks"] = bool(rng.random() < (0.03 if m else (0.14 if a["Heavy_Makeup"] else 0.06)))
    a["Wearing_Earrings"] = bool(rng.random() < (0.02 if m else 0.33))
    a["Wearing_Necklace"] = bool(rng.random() < (0.02 if m else 0.20))
    a["Wearing_Necktie"] = m and bool(rng.random() < 0.16)
    a["Narrow_Eyes"] = identity["narrow_eyes"]
    a["Big_Nose"] = identity["big_nose"]
    a["Pointy_Nose"] = identity["pointy_nose"] and not identity["big_nose"]
    a["Big_Lips"] = identity["big_lips"]
    a["Bushy_Eyebrows"] = identity["bushy"]
    a["Arched_Eyebrows"] = identity["arched"] and not identity["bushy"]
    a["Chubby"] = identity["chubby"]
    a["Double_Chin"] = identity["double_chin"]
    a["High_Cheekbones"] = identity["high_cheekbones"] and not identity["chubby"]
    a["Oval_Face"] = identity["shape"] == "oval" and not identity["chubby"]
    a["Bags_Under_Eyes"] = identity["bags"]
    a["Blurry"] = bool(rng.random() < 0.05)
    return {k: bool(a[k]) for k in DRAWABLE}


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
def _g(X, Y, cx, cy, sx, sy):
    """Anisotropic Gaussian bump."""
    return np.exp(-0.5 * (((X - cx) / sx) ** 2 + ((Y - cy) / sy) ** 2))


def _mix(col, c, m):
    """col = col * (1 - m) + c * m, in place; m is (H, W) or scalar, c (3,) or (H, W, 3)."""
    m = m[..., None] if np.ndim(m) == 2 else m
    col += (np.asarray(c, dtype=np.float32) - col) * m
    return col


class _Layer:
    """Premultiplied RGBA accumulation buffer for the face patch; ``over`` composites into a window."""

    def __init__(self, h, w):
        self.rgb = np.zeros((h, w, 3), np.float32)
        self.a = np.zeros((h, w), np.float32)

    def over(self, color, alpha, win):
        rs, cs = win
        alpha = np.clip(alpha, 0, 1).astype(np.float32)
        h, w = self.a[rs, cs].shape
        alpha = np.broadcast_to(alpha, (h, w))
        col = color if np.ndim(color) == 3 else np.asarray(color, np.float32)[None, None, :]
        rgb = self.rgb[rs, cs]
        rgb *= (1 - alpha)[..., None]
        rgb += col * alpha[..., None]
        a = self.a[rs, cs]
        a *= 1 - alpha
        a += alpha


def _geometry(identity: dict, attrs: dict) -> dict:
    """Feature positions and sizes in face units."""
    R = identity["ratio"]
    shape = identity["shape"]
    p, taper = {"oval": (2.0, 0.30), "round": (2.4, 0.18), "square": (3.2, 0.30),
                "long": (2.2, 0.30)}[shape]
    if shape == "round":
        R = min(R, 1.42)
    if shape == "long":
        R = max(R, 1.46)
    if attrs.get("Chubby"):
        p, taper = 2.6, 0.12
    if attrs.get("Oval_Face"):
        p, taper = 2.0, 0.32
    smile = attrs.get("Smiling", False)
    opened = attrs.get("Mouth_Slightly_Open", False)
    big_nose, pointy = attrs.get("Big_Nose", False), attrs.get("Pointy_Nose", False)
    ny = 0.50 + identity["nose_len"] + (0.05 if big_nose else 0.0)
    g = dict(
        R=R, p=p, taper=taper,
        ex=identity["eye_sep"], ey=0.0, ew=identity["eye_w"],
        hu=0.40 * (0.62 if attrs.get("Narrow_Eyes") else 1.0) * (0.9 if smile else 1.0),
        hl=0.27 * (0.6 if attrs.get("Narrow_Eyes") else 1.0) * (0.8 if smile else 1.0),
        by=identity["brow_y"], ny=ny, nw=1.35 if big_nose else (0.82 if pointy else 1.0),
        nh=0.30 * (1.25 if big_nose else 1.0) * (1.15 if pointy else 1.0),
        my=ny + 0.34, mw=identity["mouth_w"] * (1.18 if smile else 1.0),
        tu=0.060 * (1.5 if attrs.get("Big_Lips") else 1.0),
        tl=0.080 * (1.45 if attrs.get("Big_Lips") else 1.0),
        gap=(0.075 if smile else 0.05) if opened else 0.0, smile=0.07 if smile else 0.0,
        chub=1.0 if attrs.get("Chubby") else 0.0,
    )
    return g


_PALE = np.array([0.98, 0.89, 0.84], np.float32)


def _skin_colour(identity: dict, attrs: dict) -> np.ndarray:
    """Skin albedo: the identity's tone, pushed to very pale when Pale_Skin is set (and away from it
    when an identity sampled as pale is drawn with Pale_Skin false)."""
    skin = np.asarray(identity["skin"], np.float32)
    if attrs.get("Pale_Skin"):
        return (0.3 * skin + 0.7 * _PALE).astype(np.float32)
    if identity.get("pale"):
        return (skin * np.array([0.93, 0.85, 0.80], np.float32)).astype(np.float32)
    return skin


def _hair_name(identity: dict, attrs: dict) -> str:
    """Hair colour drawn: the attribute's colour when one is set, else a colour no attribute names."""
    for attr, name in (("Black_Hair", "black"), ("Blond_Hair", "blond"), ("Brown_Hair", "brown"),
                       ("Gray_Hair", "gray")):
        if attrs.get(attr):
            return name
    own = identity["hair"]
    if own in ("red", "darkbrown"):
        return own
    return "darkbrown" if own in ("black", "brown", "gray") else "red"


def _half_width(Y, g):
    """Half width of the head outline at height Y (vectorised)."""
    R, p, taper = g["R"], g["p"], g["taper"]
    tu = np.clip(-Y / R, 0, 1)
    td = np.clip(Y / R, 0, 1)
    fu = (1 - tu ** 2.3) ** (1 / 2.3)
    fd = (1 - td ** p) ** (1 / p) * (1 - taper * td ** 2)
    if g.get("chub"):
        fd = fd * (1 + 0.36 * g["chub"] * td * (1 - td))  # full lower cheeks
    return np.where(Y < 0, fu, fd)


# ------------------------------------------------------------------------------------------------
# the face patch
# ------------------------------------------------------------------------------------------------
class _Patch:
    """Pixel grid of the upright face patch: ``A`` pixels per face unit, face origin at pixel (ox, oy).

    Coordinates are kept as broadcasting 1-D grids (X is (1, w), Y is (h, 1)) and every layer is
    computed only inside its own window of the patch, which keeps the cost low."""

    def __init__(self, R, A):
        x_min, x_max = -1.75, 1.75
        y_min, y_max = -(R + 0.5), 2.7
        self.A = A
        self.pw = int(math.ceil((x_max - x_min) * A)) + 2
        self.ph = int(math.ceil((y_max - y_min) * A)) + 2
        self.ox, self.oy = -x_min * A, -y_min * A
        self.xs = (np.arange(self.pw, dtype=np.float32) - self.ox) / A
        self.ys = (np.arange(self.ph, dtype=np.float32) - self.oy) / A

    def win(self, x0, x1, y0, y1):
        """The window covering [x0, x1] × [y0, y1] (face units): ((rows, cols) slices, X, Y, |X|)."""
        A, ox, oy, pw, ph = self.A, self.ox, self.oy, self.pw, self.ph
        c0, c1 = max(0, int(ox + x0 * A)), min(pw, int(math.ceil(ox + x1 * A)) + 1)
        r0, r1 = max(0, int(oy + y0 * A)), min(ph, int(math.ceil(oy + y1 * A)) + 1)
        rs, cs = slice(r0, r1), slice(c0, c1)
        X = self.xs[cs][None, :]
        Y = self.ys[rs][:, None]
        return (rs, cs), X, Y, np.abs(X)

    def soft(self, d):
        """Anti-aliased edge: 0 → 1 across one pixel around d = 0 (d in face units)."""
        return np.clip(d * self.A + 0.5, 0, 1)

    @staticmethod
    def fuzzy(d, w=0.035):
        """Soft edge: 0 → 1 across ``w`` face units around d = 0 (hair and beard borders)."""
        return np.clip(d / w + 0.5, 0, 1)


class _Hair:
    """One face's hair: colour, style (bald, wavy, straight, length, volume), strand texture, lit colour and
    outline.  Creating it draws the four strand phases from ``rng`` (the patch's first random draw)."""

    def __init__(self, identity, attrs, g, light, P, rng):
        self.name = _hair_name(identity, attrs)
        self.col = np.asarray(_HAIR[self.name], np.float32)
        self.ph4 = ph4 = rng.uniform(0, 2 * np.pi, 4)
        self.P, self.g, self.R = P, g, g["R"]
        self.light_dir = light["dir"]
        self.parting = identity["parting"]
        self.bald = attrs.get("Bald", False)
        self.wavy = attrs.get("Wavy_Hair", False)
        self.straight = attrs.get("Straight_Hair", False)
        self.length = identity["hair_len"]
        self.vol = identity["hair_volume"] * (1.3 if self.wavy else 1.0)
        self.y_end = {"short": 0.05, "medium": 1.05, "long": 2.35}[self.length]
        self.x_max = 1.0 + self.vol + 0.12 * 2.4 + 0.06
        k1, k2, k3 = (60, 97, 151) if self.straight else (45, 77, 120)
        self.th_tab = th_tab = np.linspace(-np.pi, np.pi, 4096, dtype=np.float32)
        self.str_tab = (0.5 * np.sin(k1 * th_tab + ph4[1]) + 0.3 * np.sin(k2 * th_tab + ph4[2])
                        + 0.2 * np.sin(k3 * th_tab + ph4[3])).astype(np.float32)

    def tex(self, X, Y):
        """Strand pattern flowing down from the crown, in [-1, 1] (a function of the angle seen from
        a point above the head, looked up in a table)."""
        R = self.R
        theta = np.arctan2(X - self.parting * 0.3, Y + R + 0.8)
        if self.wavy:
            rho = np.sqrt(X ** 2 + (Y + R + 0.8) ** 2)
            theta = theta + 0.09 * np.sin(rho * 11 + self.ph4[0])
        return np.interp(theta, self.th_tab, self.str_tab).astype(np.float32)

    def rgb(self, X, Y):
        """Lit hair colour (diffuse on the hair volume, strand texture, sheen band, clumps).
        Returns (rgb, strands, diffuse)."""
        R, vol, hair_col = self.R, self.vol, self.col
        lx, ly, lz = self.light_dir
        strands = self.tex(X, Y)
        nhx = X / (1.0 + vol)
        nhy = (Y + 0.2) / (R + vol)
        nhz = np.sqrt(np.clip(1 - nhx ** 2 - nhy ** 2, 0.05, 1))
        hdiff = np.clip(nhx * lx + nhy * ly + nhz * lz, 0, 1)
        sheen = np.exp(-(((Y + 0.55 * R) / 0.16) ** 2)) * (0.5 + 0.5 * strands) * (0.6 if self.straight else 0.35)
        clump = 0.92 + 0.08 * np.sin(np.arctan2(X, Y + R + 0.8) * 9 + self.ph4[0])
        rgb = hair_col[None, None, :] * ((0.30 + 0.70 * hdiff) * (0.78 + 0.26 * strands) * clump)[..., None]
        rgb += (sheen * 0.25)[..., None] * (hair_col + 0.25)[None, None, :]
        return rgb, strands, hdiff

    def outline(self, X, Y, AX, strands=0.0):
        """Side half width of the hair and its mask (top, sides and cut length, ragged by the strand ends).
        Returns (half_width, mask)."""
        R, vol, soft = self.R, self.vol, self.P.soft
        fh = _half_width(np.minimum(Y, 0) * R / (R + vol), self.g) * (1 + vol)
        if self.wavy:
            fh = fh + 0.04 * np.sin(Y * 14 + self.ph4[0])
        fh_side = np.where(Y > 0, (1.0 + vol) + 0.12 * np.clip(Y, 0, None) * (self.length == "long"), fh)
        fray = 0.025 * strands  # strand ends make the outline ragged
        return fh_side, (soft(fh_side - AX + fray) * soft(Y + R + vol + fray)
                         * soft(self.y_end - Y + 0.03 * np.sin(X * 20) + 2 * fray))


class _FaceWin:
    """The face window of the patch: its grids X, Y and AX = |X|, the head outline's half width ``f`` per row
    and the anti-aliased head mask ``head_in``."""

    def __init__(self, P, g):
        R = g["R"]
        self.win, self.X, self.Y, self.AX = P.win(-1.14, 1.14, -R - 0.04, R + 0.1)
        self.shape = (self.Y.shape[0], self.X.shape[1])
        self.f = _half_width(self.Y, g).astype(np.float32)
        self.head_in = P.soft(self.f - self.AX) * (self.Y > -R - 0.02) * (self.Y < R + 0.02)


# ---------------- layers behind the face -------------------------------------------------------------
def _draw_back_hair(lay, P, attrs, hair):
    """Hair behind the head, or a fringe at the sides of an old bald head.  Returns the back hair's
    (window, colour, strands), which the front hair is cut from, or None when bald."""
    R, vol, hx_max = hair.R, hair.vol, hair.x_max
    if not hair.bald:
        hair_win = P.win(-hx_max, hx_max, -R - vol - 0.05, max(hair.y_end, 0.2) + 0.08)
        w_, X, Y, AX = hair_win
        hair_all, hair_str, _ = hair.rgb(X, Y)
        _, out = hair.outline(X, Y, AX, hair_str)
        lay.over(hair_all * 0.85, out, w_)
        return hair_win, hair_all, hair_str
    if not attrs.get("Young", True):
        soft = P.soft
        w_, X, Y, AX = P.win(-hx_max, hx_max, -0.6, 0.2)
        rgb, _, _ = hair.rgb(X, Y)
        fh_side, _ = hair.outline(X, Y, AX)
        fringe = soft(fh_side - AX) * soft(AX - 0.75) * soft(0.15 - Y) * soft(Y + 0.55)
        lay.over(rgb, fringe * 0.9, w_)
    return None


def _draw_neck(lay, P, g, attrs, skin, light):
    """The neck (wider for men and chubby faces), darker under the chin and rounded at the sides."""
    R, soft = g["R"], P.soft
    lx = light["dir"][0]
    nwid = (0.50 if attrs.get("Male") else 0.42) + (0.08 if attrs.get("Chubby") else 0.0)
    neck_end = R + 0.5
    w_, X, Y, AX = P.win(-nwid - 0.05, nwid + 0.05, 0.5, neck_end + 0.1)
    neck_m = soft(nwid - AX) * soft(Y - 0.5) * P.fuzzy(neck_end - Y, 0.1)
    neck_shade = (0.55 + 0.25 * np.clip((Y - R) / 0.5, 0, 1)
                  + 0.15 * np.sqrt(np.clip(1 - (X / nwid) ** 2, 0, 1))) * (0.9 + 0.1 * (X * lx / nwid))
    lay.over(skin[None, None, :] * neck_shade[..., None], neck_m, w_)


def _draw_ears(lay, P, skin, light, ex_ear):
    """Both ears (drawn when short hair or baldness leaves them visible), with a darker inner ear."""
    lx = light["dir"][0]
    w_, X, Y, AX = P.win(-ex_ear - 0.2, ex_ear + 0.2, -0.15, 0.5)
    ear_d = ((AX - ex_ear) / 0.13) ** 2 + ((Y - 0.17) / 0.26) ** 2
    ear_m = P.soft((1 - ear_d) * 0.12) * (AX > ex_ear - 0.1)
    ear_inner = _g(AX, Y, ex_ear + 0.02, 0.15, 0.05, 0.13)
    ear_col = skin[None, None, :] * ((0.78 - 0.3 * ear_inner) * (0.9 + 0.1 * X * lx))[..., None]
    lay.over(ear_col, ear_m, w_)


def _draw_double_chin(lay, P, g, skin):
    """Double chin: a soft, shaded fold peeking out below the chin."""
    R = g["R"]
    w_, X, Y, AX = P.win(-0.7, 0.7, R - 0.4, R + 0.3)
    dcy = R - 0.04
    e = (X / 0.46) ** 2 + ((Y - dcy) / 0.19) ** 2
    dc_m = P.soft((1 - e) * 0.12)
    dc_shade = (0.62 + 0.25 * np.sqrt(np.clip(1 - e, 0, 1))) * (1 - 0.3 * np.exp(-0.5 * ((Y - dcy - 0.12) / 0.03) ** 2))
    lay.over(skin[None, None, :] * dc_shade[..., None], dc_m, w_)


# ---------------- the face: relief, shading, albedo and its parts ------------------------------------
def _height_map(F, g, attrs):
    """Face relief (face units): head ellipsoid, eye sockets and eyeballs, brow ridge, glabella, nose bridge,
    tip and wings, cheekbones, chubby cheeks, lips, chin and eye bags."""
    X, Y, AX, f = F.X, F.Y, F.AX, F.f
    R = g["R"]
    ex, ey = g["ex"], g["ey"]
    ny, nw, nh = g["ny"], g["nw"], g["nh"]
    my, mw = g["my"], g["mw"]
    r2 = np.clip(1 - (X / np.maximum(f, 1e-3)) ** 2, 0, 1)
    z = 0.85 * np.sqrt(r2) ** 0.9 * (np.sqrt(np.clip(1 - (Y / (R * 1.04)) ** 2, 0, 1)) ** 0.6)
    z = z - 0.22 * _g(AX, Y, ex, ey - 0.02, 0.24, 0.15)  # eye sockets
    z += 0.07 * _g(AX, Y, ex, ey, 0.15, 0.09)  # eyeball under the lids
    z += 0.11 * _g(AX, Y, ex - 0.02, g["by"] + 0.01, 0.30, 0.07)  # brow ridge
    z += 0.06 * _g(X, Y, 0, g["by"] + 0.04, 0.12, 0.12)  # glabella
    t = np.clip((Y + 0.12) / (ny + 0.12), 0, 1)
    tip_fall = np.exp(-0.5 * (np.clip(Y - ny, 0, None) / 0.05) ** 2)
    z += nh * (0.2 + 0.8 * t ** 1.6) * tip_fall * np.exp(-0.5 * (X / (0.08 * nw)) ** 2)  # bridge
    z += 0.10 * _g(X, Y, 0, ny, 0.09 * nw, 0.07)  # tip
    z += 0.06 * _g(AX, Y, 0.13 * nw, ny + 0.04, 0.07 * nw, 0.06)  # wings
    hc = 0.13 if attrs.get("High_Cheekbones") else 0.07
    z += hc * _g(AX, Y, 0.55, 0.26, 0.22, 0.13)
    if attrs.get("Chubby"):
        z += 0.10 * _g(AX, Y, 0.50, 0.60, 0.28, 0.25)
    z += 0.05 * _g(X, Y, 0, my - 0.04, mw * 0.75, 0.045)  # upper lip
    z += 0.06 * _g(X, Y, 0, my + g["tl"] * 0.6, mw * 0.6, 0.05)  # lower lip
    z += 0.07 * _g(X, Y, 0, R - 0.20, 0.22, 0.12)  # chin
    if attrs.get("Bags_Under_Eyes"):
        z += 0.03 * _g(AX, Y, ex, ey + 0.17, 0.15, 0.035)
    return z.astype(np.float32)


def _shading(z, A, light):
    """Shading from the height map's normals: diffuse + ambient, darkened in creases (Laplacian), and a
    small specular highlight.  Returns (shade, spec)."""
    lx, ly, lz = light["dir"]
    amb = light["amb"]
    zp = z * A
    gx = cv2.Sobel(zp, cv2.CV_32F, 1, 0, ksize=3) * 0.125
    gy = cv2.Sobel(zp, cv2.CV_32F, 0, 1, ksize=3) * 0.125
    inv = 1.0 / np.sqrt(gx * gx + gy * gy + 1)
    shade = amb + (1 - amb) * np.clip((-gx * lx - gy * ly + lz) * inv, 0, 1)
    lap = cv2.Laplacian(z, cv2.CV_32F, ksize=3) * (A * A * 0.25)
    shade *= 1 - np.clip(lap * 0.03, 0, 0.35)
    hx, hy, hz = lx, ly, lz + 1.0
    hn = math.sqrt(hx * hx + hy * hy + hz * hz)
    ndh = np.clip((-gx * hx - gy * hy + hz) * (inv / hn), 0, 1)
    spec = light["spec"] * ndh ** 28
    return shade, spec


def _skin_albedo(F, g, attrs, skin, light, rng):
    """Skin albedo ``alb`` and the multiplicative darkening ``dark`` (applied once, when the face is
    composed): skin texture (the patch's second random draw, when the light asks for texture), darker eye
    sockets, shadow under the nose, nostrils, nasolabial folds and eye bags.  Returns (alb, dark)."""
    X, Y, AX = F.X, F.Y, F.AX
    fh_, fw_ = F.shape
    ex, ey = g["ex"], g["ey"]
    ny, nw = g["ny"], g["nw"]
    my, mw = g["my"], g["mw"]
    alb = np.empty((fh_, fw_, 3), np.float32)
    alb[:] = skin
    dark = np.ones((fh_, fw_), np.float32)
    if light["tex"] > 0:
        tex = cv2.resize(rng.standard_normal((max(2, fh_ // 4), max(2, fw_ // 4))).astype(np.float32),
                         (fw_, fh_), interpolation=cv2.INTER_LINEAR)
        dark *= 1 + light["tex"] * tex
    dark *= 1 - 0.20 * _g(AX, Y, ex, ey - 0.03, 0.26, 0.17)  # darker sockets
    dark *= 1 - 0.10 * _g(X, Y, 0, ny + 0.09, 0.20, 0.04)  # under the nose
    dark *= 1 - 0.75 * _g(AX, Y, 0.065 * nw, ny + 0.07, 0.034 * nw, 0.02)  # nostrils
    # nasolabial folds
    fx0, fy0, fx1, fy1 = 0.17 * nw, ny + 0.03, mw + 0.06, my + 0.06
    tt = np.clip(((AX - fx0) * (fx1 - fx0) + (Y - fy0) * (fy1 - fy0)) / ((fx1 - fx0) ** 2 + (fy1 - fy0) ** 2), 0, 1)
    dd = np.hypot(AX - fx0 - tt * (fx1 - fx0), Y - fy0 - tt * (fy1 - fy0))
    fold_k = 0.10 + (0.10 if g["smile"] else 0) + (0.08 if not attrs.get("Young", True) else 0)
    dark *= 1 - fold_k * np.exp(-0.5 * (dd / 0.02) ** 2) * (1 - tt * 0.5)
    if attrs.get("Bags_Under_Eyes"):
        dark *= 1 - 0.22 * _g(AX, Y, ex, ey + 0.15, 0.15, 0.03)
    return alb, dark


def _age_lines(F, P, g, dark):
    """Wrinkles of an old face: forehead lines, crow's feet, under-eye lines and jowls / marionette lines."""
    X, Y, AX, soft = F.X, F.Y, F.AX, P.soft
    ex, ey, ew = g["ex"], g["ey"], g["ew"]
    my, mw = g["my"], g["mw"]
    for yy in (-0.52, -0.62, -0.72):  # forehead lines
        dark *= 1 - 0.10 * np.exp(-0.5 * ((Y - yy - 0.03 * X ** 2) / 0.012) ** 2) * soft(0.6 - AX)
    for k_ in (-0.35, 0.0, 0.35):  # crow's feet at the outer eye corners
        ang = (AX - ex - 1.15 * ew) * k_ - (Y - ey) * 1.0
        dark *= 1 - 0.16 * np.exp(-0.5 * (ang / 0.012) ** 2) * _g(AX, Y, ex + 1.35 * ew, ey, 0.06, 0.08)
    dark *= 1 - 0.14 * np.exp(-0.5 * ((Y - ey - 0.20 - 0.08 * ((AX - ex) / 0.2) ** 2) / 0.012) ** 2) \
        * soft(ex + 0.2 - AX) * soft(AX - ex + 0.2)  # under-eye line
    dark *= 1 - 0.12 * _g(AX, Y, mw + 0.08, my + 0.22, 0.06, 0.12)  # jowls / marionette lines


def _cheeks_and_chin(F, P, g, attrs, alb, dark):
    """Shadow under high cheekbones, the double chin's crease, and rosy cheeks or make-up blush."""
    X, Y, AX = F.X, F.Y, F.AX
    R = g["R"]
    if attrs.get("High_Cheekbones"):
        dark *= 1 - 0.10 * _g(AX, Y, 0.62, 0.50, 0.16, 0.07)
    if attrs.get("Double_Chin"):
        dark *= 1 - 0.25 * np.exp(-0.5 * ((Y - (R - 0.05) + 0.25 * X ** 2) / 0.02) ** 2) * P.soft(0.45 - AX)
    if attrs.get("Rosy_Cheeks"):
        _mix(alb, (0.86, 0.36, 0.38), 0.35 * _g(AX, Y, 0.52, 0.38, 0.18, 0.13))
    elif attrs.get("Heavy_Makeup"):
        _mix(alb, (0.85, 0.45, 0.45), 0.20 * _g(AX, Y, 0.55, 0.35, 0.18, 0.13))


def _stubble(F, g, hair, alb, rng):
    """5 o'clock shadow: a grainy tint low on the cheeks and above the lip (the patch's last random draw)."""
    X, Y, AX = F.X, F.Y, F.AX
    fh_, fw_ = F.shape
    beard_low = np.clip((Y - (0.56 + 0.22 * np.clip(1 - AX, 0, 1))) / 0.12, 0, 1)  # starts low on the cheeks
    stub = np.clip(beard_low + 0.9 * _g(X, Y, 0, g["my"] - 0.1, 0.3, 0.05) * (Y > g["ny"] + 0.08), 0, 1)
    stub_tex = 0.55 + 0.45 * rng.random((fh_, fw_), dtype=np.float32)
    _mix(alb, hair.col * 0.6 + 0.04, stub * 0.38 * stub_tex)


def _mouth(F, P, g, identity, attrs, skin, alb, dark):
    """Lips (lipstick or the identity's lip tint; the upper lip darker), mouth line and corners, and an
    open mouth with teeth.  Returns (lip_m, up_top, cline): lip mask, top of the upper lip, mouth line."""
    Y, AX, soft = F.Y, F.AX, P.soft
    my, mw = g["my"], g["mw"]
    u = np.clip(AX / mw, 0, 1.5)
    q_m = np.clip(1 - u ** 2, 0, 1)
    cline = my - g["smile"] * (u ** 2) + 0.012 * (u < 1)
    gap = g["gap"] * np.sqrt(q_m)
    bow = 0.015 * np.exp(-0.5 * ((AX - 0.08) / 0.05) ** 2)
    up_top = cline - gap / 2 - g["tu"] * q_m ** 0.5 - bow
    lo_bot = cline + gap / 2 + g["tl"] * q_m ** 0.7
    in_x = soft(mw - AX)
    lip_m = soft(Y - up_top) * soft(lo_bot - Y) * in_x
    if attrs.get("Wearing_Lipstick"):
        c = identity["clothes"]
        lipc = np.array([0.62 + 0.2 * c[0], 0.08 + 0.15 * c[1], 0.14 + 0.15 * c[2]], np.float32)
    else:
        lipc = skin * np.asarray(identity["lip_tint"], np.float32) * 0.9
    lip_shade = 1 - 0.25 * soft(cline - Y) * soft(Y - up_top)  # the upper lip faces down: darker
    _mix(alb, lipc[None, None, :] * lip_shade[..., None], lip_m * 0.92)
    dark *= 1 - 0.6 * np.exp(-0.5 * ((Y - cline) / 0.011) ** 2) * soft(mw + 0.01 - AX)  # mouth line
    dark *= 1 - 0.35 * _g(AX, Y, mw, cline, 0.025, 0.02)  # corners
    if g["gap"] > 0:
        open_m = soft(Y - (cline - gap / 2)) * soft((cline + gap / 2) - Y) * in_x
        teeth_m = open_m * soft(cline + 0.25 * gap - Y) * soft(0.85 * mw - AX)
        _mix(alb, (0.22, 0.07, 0.07), open_m)
        _mix(alb, (0.90, 0.88, 0.82), teeth_m * (0.95 if g["smile"] else 0.7))
    return lip_m, up_top, cline


def _eyes(F, P, g, identity, light, alb):
    """Eyeballs seen through an almond opening: greyish sclera, iris (turned by the gaze), pupil and the upper
    lid's shadow.  Returns (lids, open_e, catch): lids = (ux, uy, q, up_lid, lo_lid) in eye units for
    ``_eyelids``, the opening's mask and the catch-light."""
    X, Y, AX, soft = F.X, F.Y, F.AX, P.soft
    ex, ey, ew = g["ex"], g["ey"], g["ew"]
    gaze = light["gaze"]
    ux = (AX - ex) / ew
    uy = (Y - ey) / ew
    q = np.clip(1 - ux ** 2, 0, 1)
    up_lid = -g["hu"] * q ** 0.75 + 0.05 * ux * q
    lo_lid = g["hl"] * q ** 0.9
    open_e = soft((uy - up_lid) * ew) * soft((lo_lid - uy) * ew)
    icx = ex + gaze[0] * np.sign(X) * 0.12 * ew
    ri = 0.43 * ew
    icy = ey + gaze[1] * 0.1 * ew + 0.01
    rr = np.hypot(AX - icx, Y - icy) / ri
    iris_m = soft((1 - rr) * ri)
    eye_col = np.asarray(identity["eye_color"], np.float32)
    e_rgb = np.empty_like(alb)
    e_rgb[:] = np.array([0.76, 0.74, 0.72], np.float32)
    e_rgb *= (1 - 0.25 * np.clip(np.abs(ux) - 0.3, 0, 1))[..., None]
    iris_tex = (0.75 + 0.35 * rr) * (1 - 0.5 * np.clip((rr - 0.82) / 0.18, 0, 1))
    _mix(e_rgb, eye_col[None, None, :] * iris_tex[..., None], iris_m)
    _mix(e_rgb, (0.02, 0.02, 0.02), soft((0.42 - rr) * ri))
    e_rgb *= (1 - 0.35 * np.clip(1 - (uy - up_lid) / 0.3, 0, 1))[..., None]  # lid shadow
    _mix(alb, e_rgb, open_e)
    catch = _g(AX, Y, icx - 0.25 * ri, icy - 0.3 * ri, 0.06 * ew, 0.06 * ew) * open_e
    return (ux, uy, q, up_lid, lo_lid), open_e, catch


def _eyelids(F, P, g, identity, attrs, alb, dark, lids, open_e):
    """Lash line (thicker and winged with Heavy_Makeup), lid crease, lower-lid line and, with Heavy_Makeup,
    eye shadow on the lids."""
    soft = P.soft
    ew = g["ew"]
    ux, uy, q, up_lid, lo_lid = lids
    mk = attrs.get("Heavy_Makeup", False)
    d_up = uy - up_lid
    lash_w = 0.11 if mk else 0.075
    lash = np.exp(-0.5 * (d_up / lash_w) ** 2) * soft((1.08 - np.abs(ux)) * ew) * (1 + 0.4 * np.clip(ux, 0, 1))
    if mk:
        lash = lash + (np.exp(-0.5 * ((uy + 0.12 * (ux - 1) + 0.05) / 0.06) ** 2) * soft((ux - 0.95) * ew)
                       * soft((1.35 - ux) * ew))
    dark *= 1 - 0.88 * np.clip(lash, 0, 1)
    inside_x = soft((1.0 - np.abs(ux)) * ew)
    dark *= 1 - 0.22 * np.exp(-0.5 * ((uy - (up_lid - 0.32 * q ** 0.6 - 0.05)) / 0.07) ** 2) * inside_x
    dark *= 1 - 0.25 * np.exp(-0.5 * ((uy - lo_lid - 0.03) / 0.05) ** 2) * inside_x
    if mk:
        c = identity["clothes"]
        shadow_col = np.asarray([0.35 + 0.3 * c[2], 0.25, 0.3 + 0.3 * c[0]], np.float32)
        lidm = np.clip(-d_up / 0.45, 0, 1) * soft((d_up + 0.6) * ew) * soft((1.05 - np.abs(ux)) * ew)
        _mix(alb, shadow_col, 0.5 * lidm * (1 - open_e))


def _eyebrows(F, P, g, attrs, hair, alb):
    """Eyebrows: arched or gently curved, thin or bushy (with a hair texture), coloured after the hair."""
    X, Y, AX, soft = F.X, F.Y, F.AX, P.soft
    hair_col = hair.col
    b0, b1 = 0.14, 0.78
    tb = np.clip((AX - b0) / (b1 - b0), 0, 1)
    arched = attrs.get("Arched_Eyebrows", False)
    bushy = attrs.get("Bushy_Eyebrows", False)
    amp = 0.09 if arched else 0.045
    peak = 0.62 if arched else 0.5
    prof = np.where(tb < peak, np.sin(tb / peak * np.pi / 2),
                    np.clip(np.cos((tb - peak) / (1 - peak) * np.pi / 2), 0, 1) ** 1.5)
    ybc = g["by"] - amp * prof + 0.03 * (1 - tb)
    th = (0.058 if bushy else (0.030 if arched else 0.037)) * (1.15 - 0.55 * tb)
    brow_m = soft(th - np.abs(Y - ybc)) * soft(AX - b0) * soft(b1 - AX)
    brow_col = hair_col if hair.name == "black" else hair_col * 0.55 + 0.02
    if attrs.get("Blond_Hair") or attrs.get("Gray_Hair"):
        brow_col = hair_col * 0.5
    btex = (0.8 + 0.2 * np.sin(X * 150 + Y * 40)) if bushy else 1.0
    _mix(alb, brow_col, brow_m * (0.92 if bushy else 0.8) * btex)


def _compose_face(lay, F, alb, dark, shade, spec, open_e, catch):
    """Light the face: darkened albedo × shading + specular (none on the eyes, which are also shaded less),
    plus the eyes' catch-light; composited inside the head outline."""
    alb *= dark[..., None]
    col = alb * shade[..., None] + (spec * F.head_in * (1 - open_e))[..., None]
    col = col * (1 - 0.35 * open_e)[..., None] + alb * (0.30 * open_e)[..., None]  # eyes less shaded
    col += (0.7 * catch)[..., None]
    lay.over(col, F.head_in, F.win)


def _draw_beard(lay, F, P, g, attrs, hair, shade, lips):
    """Goatee or full beard, mustache and sideburns: fuzzy-edged masks (kept off the lips) drawn with a
    strand texture, shaded like the face."""
    X, Y, AX, f = F.X, F.Y, F.AX, F.f
    soft, fuzzy = P.soft, P.fuzzy
    R = g["R"]
    ny, my, mw = g["ny"], g["my"], g["mw"]
    lip_m, up_top, cline = lips
    beard_m = np.zeros(F.shape, np.float32)
    if attrs.get("Goatee"):
        if attrs.get("Mustache") and attrs.get("Sideburns"):  # full beard
            full_low = np.clip((Y - (0.64 + 0.20 * np.clip(1 - AX, 0, 1))) / 0.14, 0, 1)  # low on the cheeks
            reg = full_low * fuzzy(f + 0.03 - AX) * (0.55 + 0.45 * np.clip((Y - my) / 0.3, 0, 1))
        else:
            gy0 = my + g["tl"] + 0.0
            gcy, gry = (gy0 + R) / 2 + 0.02, (R - gy0) / 2 + 0.05
            reg = fuzzy(1 - np.sqrt((X / 0.30) ** 2 + ((Y - gcy) / gry) ** 2), 0.12) * fuzzy(f + 0.03 - AX)
            reg = np.maximum(reg, fuzzy(0.05 - np.abs(AX - mw - 0.02)) * fuzzy(Y - my) * fuzzy(gy0 + 0.1 - Y))
        beard_m = np.maximum(beard_m, reg * fuzzy(R + 0.05 - Y) * (1 - lip_m))
    if attrs.get("Mustache"):
        mtop = ny + 0.10
        must = fuzzy(Y - mtop - 0.02 * (AX / mw) ** 2, 0.025) * soft(up_top - 0.005 - Y) * fuzzy(mw + 0.05 - AX)
        must = np.maximum(must, fuzzy(Y - mtop) * fuzzy(cline + 0.05 - Y) * fuzzy(0.035 - np.abs(AX - mw - 0.02)))
        beard_m = np.maximum(beard_m, must)
    if attrs.get("Sideburns"):
        sb = fuzzy(AX - (f - 0.15)) * soft(f + 0.02 - AX) * fuzzy(Y + 0.3) * fuzzy(0.45 - Y)
        beard_m = np.maximum(beard_m, sb)
    if beard_m.any():
        strands = hair.tex(X, Y + 0.3 * X)
        bcol = (hair.col * 0.85 + 0.02)[None, None, :] * (shade * (0.82 + 0.25 * strands))[..., None]
        lay.over(bcol, beard_m * 0.93 * (0.85 + 0.15 * strands), F.win)


def _draw_face(lay, P, identity, attrs, g, skin, hair, light, rng):
    """The face inside the head outline: relief and shading, skin, age lines, cheeks, stubble, mouth, eyes,
    eyebrows, then the beard on top."""
    F = _FaceWin(P, g)
    z = _height_map(F, g, attrs)
    shade, spec = _shading(z, P.A, light)
    alb, dark = _skin_albedo(F, g, attrs, skin, light, rng)
    if not attrs.get("Young", True):
        _age_lines(F, P, g, dark)
    _cheeks_and_chin(F, P, g, attrs, alb, dark)
    if attrs.get("5_o_Clock_Shadow"):
        _stubble(F, g, hair, alb, rng)
    lips = _mouth(F, P, g, identity, attrs, skin, alb, dark)
    lids, open_e, catch = _eyes(F, P, g, identity, light, alb)
    _eyelids(F, P, g, identity, attrs, alb, dark, lids, open_e)
    _eyebrows(F, P, g, attrs, hair, alb)
    _compose_face(lay, F, alb, dark, shade, spec, open_e, catch)
    _draw_beard(lay, F, P, g, attrs, hair, shade, lips)


# ---------------- layers in front of the face --------------------------------------------------------
def _draw_front_hair(lay, P, g, identity, attrs, hair, back):
    """Hair over the forehead and temples, cut from the back hair: bangs, a receding (M-shaped) hairline or
    a plain parted one, plus the locks falling beside the cheeks."""
    soft = P.soft
    R, vol, hx_max = hair.R, hair.vol, hair.x_max
    hair_win, hair_all, hair_str = back
    w_, X, Y, AX = P.win(-hx_max, hx_max, -R - vol - 0.05, min(hair.y_end, 0.2) + 0.06)
    (hrs, hcs), (rs, cs) = hair_win[0], w_
    sub = (slice(rs.start - hrs.start, rs.stop - hrs.start), slice(cs.start - hcs.start, cs.stop - hcs.start))
    fray = hair_str[sub]
    fh_side, hair_out = hair.outline(X, Y, AX, fray)
    f = _half_width(Y, g)
    if attrs.get("Bangs"):
        hl = -0.36 + 0.025 * np.sin(X * 23 + hair.ph4[2]) + 0.15 * X ** 2
    elif attrs.get("Receding_Hairline"):
        hl = -1.0 + 0.25 * X ** 2 - 0.22 * np.exp(-0.5 * ((AX - 0.45) / 0.15) ** 2)  # M-shaped
    else:
        hl = -0.82 + 0.30 * X ** 2 + 0.05 * np.abs(X - identity["parting"] * 0.5)
    front = soft(hl - Y + 0.03 * fray) * soft(fh_side - AX + 0.025 * fray) * soft(Y + R + vol)
    front = np.maximum(front, soft(AX - 0.80) * soft(0.20 - Y) * hair_out * soft(AX - f + 0.06))
    lay.over(hair_all[sub], front, w_)


def _draw_hat(lay, P, g, light):
    """A hat: a lit dome over the head with a darker band at its rim."""
    soft = P.soft
    R = g["R"]
    lx, ly, lz = light["dir"]
    w_, X, Y, AX = P.win(-1.3, 1.3, -R - 0.35, -0.3)
    hat_col = np.asarray(light["hat"], np.float32)
    hline = -0.60 + 0.08 * X ** 2
    hat_w = _half_width(np.minimum(Y, 0) * R / (R + 0.18), g) * 1.14
    dome = soft(hline - Y) * soft(hat_w - AX) * soft(Y + R + 0.25)
    band = soft(hline + 0.02 - Y) * soft(Y - (hline - 0.14)) * soft(1.18 - AX)
    nhx, nhy = X / 1.15, (Y + 0.2) / (R + 0.2)
    nhz = np.sqrt(np.clip(1 - nhx ** 2 - nhy ** 2, 0.05, 1))
    hshade = 0.35 + 0.65 * np.clip(nhx * lx + nhy * ly + nhz * lz, 0, 1)
    hat_rgb = hat_col[None, None, :] * hshade[..., None]
    lay.over(hat_rgb, dome, w_)
    lay.over(hat_rgb * 0.7, band, w_)


def _draw_glasses(lay, P, g, light):
    """Eyeglasses: see-through (or dark sunglass) lenses, frame, bridge and temples."""
    soft = P.soft
    lx, ly = light["dir"][:2]
    ex, ey = g["ex"], g["ey"]
    w_, X, Y, AX = P.win(-1.14, 1.14, -0.4, 0.4)
    f = _half_width(Y, g)
    gcol = np.asarray(light["glasses_col"], np.float32)
    rx, ry = 0.30, (0.23 if light["sun"] else 0.20)
    gcy = ey + 0.02
    se = (np.abs((AX - ex) / rx) ** 3.0 + np.abs((Y - gcy) / ry) ** 3.0) ** (1 / 3.0)
    thick = light["glasses_th"]
    lens = soft((1 - se) * ry)
    frame = soft((1 + thick / ry - se) * ry) * (1 - lens)
    rs, cs = w_
    if light["sun"]:
        lay.rgb[rs, cs] *= (1 - 0.55 * lens)[..., None]
        lay.rgb[rs, cs] += (0.04 * lens)[..., None] * gcol
    else:
        lay.over(np.full(3, 0.9, np.float32), lens * 0.06, w_)
    bridge = soft(thick * 0.6 - np.abs(Y - gcy + 0.06)) * soft(ex - rx + 0.01 - AX)
    temple = soft(thick * 0.6 - np.abs(Y - gcy + 0.08)) * soft(AX - ex - rx + 0.02) * soft(f + 0.06 - AX)
    gshade = 0.8 + 0.2 * np.clip(X * lx - (Y - gcy) * ly, -1, 1)
    lay.over(gcol[None, None, :] * gshade[..., None], np.clip(frame + bridge + temple, 0, 1), w_)


def _draw_earrings(lay, P, light, ex_ear):
    """Earrings on both lobes: hoops or studs, lit from the light's side."""
    lx, ly = light["dir"][:2]
    w_, X, Y, AX = P.win(-ex_ear - 0.25, ex_ear + 0.25, 0.3, 0.7)
    ecol = np.asarray(light["ear_col"], np.float32)
    elx, ely = ex_ear - 0.02, 0.44
    if light["hoop"]:
        em = P.soft(0.028 - np.abs(np.hypot(AX - elx, Y - ely - 0.11) - 0.10))
    else:
        em = P.soft(0.06 - np.hypot(AX - elx, Y - ely - 0.03))
    eshade = 0.7 + 0.5 * np.clip(-(X - np.sign(X) * elx) * lx * 8 - (Y - ely) * ly * 8, -0.4, 0.6)
    lay.over(ecol[None, None, :] * eshade[..., None], em, w_)


def _render_patch(identity, attrs, g, A, rng, light):
    """Render the upright head into a premultiplied RGBA patch. Returns (layer, origin_px).

    Layers, back to front: back hair, neck, ears, double chin, face (with beard), front hair, hat,
    glasses, earrings.  Random draws, in order: hair strand phases, then skin texture and stubble grain
    (each only when drawn)."""
    P = _Patch(g["R"], A)
    lay = _Layer(P.ph, P.pw)
    skin = _skin_colour(identity, attrs)
    hair = _Hair(identity, attrs, g, light, P, rng)
    back = _draw_back_hair(lay, P, attrs, hair)
    _draw_neck(lay, P, g, attrs, skin, light)
    ex_ear = float(_half_width(np.float32(0.15), g)) + 0.02
    if hair.length == "short" or hair.bald:
        _draw_ears(lay, P, skin, light, ex_ear)
    if attrs.get("Double_Chin"):
        _draw_double_chin(lay, P, g, skin)
    _draw_face(lay, P, identity, attrs, g, skin, hair, light, rng)
    if not hair.bald:
        _draw_front_hair(lay, P, g, identity, attrs, hair, back)
    if attrs.get("Wearing_Hat"):
        _draw_hat(lay, P, g, light)
    if attrs.get("Eyeglasses"):
        _draw_glasses(lay, P, g, light)
    if attrs.get("Wearing_Earrings"):
        _draw_earrings(lay, P, light, ex_ear)
    return lay, (P.ox, P.oy)


# ------------------------------------------------------------------------------------------------
# placing a face on the canvas
# ------------------------------------------------------------------------------------------------
def _to_canvas(pts, origin, a, roll):
    """Face units → canvas pixels: origin + a * Rot(roll) @ pts."""
    c, s = math.cos(roll), math.sin(roll)
    pts = np.asarray(pts, np.float64)
    x = origin[0] + a * (c * pts[..., 0] - s * pts[..., 1])
    y = origin[1] + a * (s * pts[..., 0] + c * pts[..., 1])
    return np.stack([x, y], -1)


def _face_outline(g):
    ys = np.linspace(_BOX_TOP, g["R"], 24)
    hw = _half_width(ys, g) * _BOX_SIDE
    return np.concatenate([np.stack([-hw, ys], 1), np.stack([hw, ys], 1)])


def _sample_light(rng):
    lx, ly = rng.uniform(-0.55, 0.55), rng.uniform(-0.65, -0.05)
    n = math.sqrt(lx * lx + ly * ly + 1)
    sun = bool(rng.random() < 0.25)
    return {
        "dir": (lx / n, ly / n, 1 / n), "amb": float(rng.uniform(0.28, 0.45)),
        "spec": float(rng.uniform(0.04, 0.16)), "tex": float(rng.uniform(0.0, 0.05)),
        "gaze": (float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))),
        "hat": [float(v) for v in rng.uniform(0.05, 0.85, 3)],
        "sun": sun,
        "glasses_col": [float(v) for v in (rng.uniform(0.02, 0.12, 3) if rng.random() < 0.7 else rng.uniform(0.1, 0.6, 3))],
        "glasses_th": float(rng.uniform(0.022, 0.042)),
        "ear_col": [0.85, 0.70, 0.30] if rng.random() < 0.6 else [0.80, 0.80, 0.82],
        "hoop": bool(rng.random() < 0.5),
        "neckline": str(rng.choice(["v", "round", "high"])),
        "shirt": [float(v) for v in rng.uniform(0.75, 0.97, 3)],
        "tie": [float(v) for v in rng.uniform(0.05, 0.7, 3)],
        "chain": [0.85, 0.72, 0.35] if rng.random() < 0.6 else [0.82, 0.82, 0.85],
    }


def _draw_torso(canvas, origin, a, roll, g, identity, attrs, light, part, shift=4):
    """Shoulders and clothes (``part="under"``, drawn before the head) or necktie, collar and necklace
    (``part="over"``, drawn after it): anti-aliased polygons directly on the canvas."""
    sc = 1 << shift
    R = g["R"]
    male = attrs.get("Male", False)
    sh = 2.0 if male else 1.75
    top = R + 0.42
    cloth = np.asarray(identity["clothes"], np.float32)
    skin = _skin_colour(identity, attrs)
    nl = light["neckline"] if not attrs.get("Wearing_Necktie") else "v"
    vb = {"v": top + 0.75, "round": top + 0.35, "high": top + 0.08}[nl]
    nwid = (0.50 if male else 0.42) + (0.08 if attrs.get("Chubby") else 0.0)

    def poly(pts, color):
        p = _to_canvas(np.asarray(pts, np.float64), origin, a, roll)
        p = np.round(p * sc).astype(np.int32)
        cv2.fillPoly(canvas, [p], tuple(int(v) for v in np.clip(np.asarray(color) * 255, 0, 255)),
                     lineType=cv2.LINE_AA, shift=shift)

    if part == "under":
        poly([(-nwid, top - 0.2), (nwid, top - 0.2), (nwid * 0.9, vb + 0.05), (-nwid * 0.9, vb + 0.05)],
             skin * 0.8)
        body = [(-nwid - 0.05, top), (-nwid - 0.4, top + 0.12), (-sh + 0.2, top + 0.30), (-sh, top + 0.7),
                (-sh - 0.2, 12.0), (sh + 0.2, 12.0), (sh, top + 0.7), (sh - 0.2, top + 0.30),
                (nwid + 0.4, top + 0.12), (nwid + 0.05, top)]
        if nl == "v":
            body += [(0.0, vb)]
        else:
            body += [(nwid * 0.6, (top + vb) / 2 + 0.03), (0.0, vb), (-nwid * 0.6, (top + vb) / 2 + 0.03)]
        poly(body, cloth * 0.9)
        sgn = 1.0 if light["dir"][0] >= 0 else -1.0  # the lit half of the chest
        poly([(0, vb), (0, 12.0), ((sh + 0.2) * sgn, 12.0), (sh * sgn, top + 0.7), ((sh - 0.2) * sgn, top + 0.30),
              ((nwid + 0.4) * sgn, top + 0.12), ((nwid + 0.05) * sgn, top)], np.clip(cloth * 1.05, 0, 1))
        return
    if attrs.get("Wearing_Necktie"):
        shirt = np.asarray(light["shirt"], np.float32)
        poly([(-nwid - 0.02, top - 0.1), (nwid + 0.02, top - 0.1), (0.0, vb)], shirt)
        poly([(-nwid - 0.02, top - 0.12), (0.0, top + 0.25), (-0.25, top + 0.35)], shirt * 0.92)
        poly([(nwid + 0.02, top - 0.12), (0.0, top + 0.25), (0.25, top + 0.35)], shirt * 0.92)
        tie = np.asarray(light["tie"], np.float32)
        poly([(-0.10, top + 0.02), (0.10, top + 0.02), (0.07, top + 0.18), (-0.07, top + 0.18)], tie * 0.8)
        poly([(-0.07, top + 0.18), (0.07, top + 0.18), (0.17, top + 1.3), (0.0, top + 1.45),
              (-0.17, top + 1.3)], tie)
    if attrs.get("Wearing_Necklace"):
        chain = np.asarray(light["chain"], np.float32)
        xs = np.linspace(-nwid * 0.95, nwid * 0.95, 17)
        ys = top - 0.12 + 0.30 * (1 - (xs / nwid) ** 2)
        p = _to_canvas(np.stack([xs, ys], 1), origin, a, roll)
        th = max(1, int(round(a * 0.035)))
        cv2.polylines(canvas, [np.round(p * sc).astype(np.int32)], False,
                      tuple(int(v) for v in chain * 255), th, cv2.LINE_AA, shift)
        pc = _to_canvas(np.array([[0.0, top + 0.26]]), origin, a, roll)[0]
        cv2.circle(canvas, tuple(int(v) for v in np.round(pc * sc)), max(1, int(round(a * 0.07 * sc))),
                   tuple(int(v) for v in chain * 220), -1, cv2.LINE_AA, shift)


def _crop_patch(lay, ox, oy):
    """Crop the patch to its painted part (plus a 2 px margin) as premultiplied RGBA with colour in 0..255.
    Returns (rgba, (ox, oy)) with the face origin moved along with the crop."""
    ph, pw = lay.a.shape
    rows = np.flatnonzero(lay.a.max(1) > 0)
    cols = np.flatnonzero(lay.a.max(0) > 0)
    r0, r1 = max(0, rows[0] - 2), min(ph, rows[-1] + 3)
    c0, c1 = max(0, cols[0] - 2), min(pw, cols[-1] + 3)
    rgba = np.empty((r1 - r0, c1 - c0, 4), np.float32)
    rgba[..., :3] = lay.rgb[r0:r1, c0:c1] * 255
    rgba[..., 3] = lay.a[r0:r1, c0:c1]
    return rgba, (ox - c0, oy - r0)


def _paste_patch(canvas, rgba, M, blur_sigma):
    """Warp the premultiplied patch by M (patch → canvas pixels) with one ``cv2.warpAffine`` over its
    footprint only, and composite it onto ``canvas`` in place; with ``blur_sigma`` > 0 the face and its
    edge are blurred into the background (Blurry)."""
    Hc, Wc = canvas.shape[:2]
    ph, pw = rgba.shape[:2]
    corners = np.array([[0, 0], [pw, 0], [0, ph], [pw, ph]], np.float64)
    cc = corners @ M[:, :2].T + M[:, 2]
    pad = int(math.ceil(3 * blur_sigma)) + 2
    x0 = max(0, int(math.floor(cc[:, 0].min())) - pad)
    y0 = max(0, int(math.floor(cc[:, 1].min())) - pad)
    x1 = min(Wc, int(math.ceil(cc[:, 0].max())) + pad)
    y1 = min(Hc, int(math.ceil(cc[:, 1].max())) + pad)
    if x1 > x0 and y1 > y0:
        M2 = M.copy()
        M2[:, 2] -= (x0, y0)
        warped = cv2.warpAffine(rgba, M2, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
        region = canvas[y0:y1, x0:x1].astype(np.float32)
        alpha = warped[..., 3:]
        if blur_sigma > 0:
            sharp = region * (1 - alpha) + warped[..., :3]
            blurred = cv2.GaussianBlur(sharp, (0, 0), blur_sigma)
            alpha = cv2.GaussianBlur(warped[..., 3], (0, 0), blur_sigma * 2)[..., None]
            region *= 1 - alpha
            region += blurred * alpha
        else:
            region *= 1 - alpha
            region += warped[..., :3]
        canvas[y0:y1, x0:x1] = cv2.convertScaleAbs(region)


def render_face(canvas: np.ndarray, center, face_width: float, roll_deg: float, identity: dict,
                attributes: dict, rng: np.random.Generator) -> dict:
    """Draw one face (with hair, neck and shoulders) into ``canvas`` (H, W, 3 uint8 RGB) in place.

    ``center`` is the centre of the face box, ``face_width`` the cheek-to-cheek width in pixels.
    Returns {"box": (x0, y0, x1, y1), "landmarks": [[x, y] * 5]} with the box clipped to the canvas and the
    landmarks in the order left eye (image left), right eye, nose tip, mouth left, mouth right.
    """
    Hc, Wc = canvas.shape[:2]
    g = _geometry(identity, attributes)
    light = _sample_light(rng)
    a = face_width / 2.0
    roll = math.radians(roll_deg)
    box_mid = (_BOX_TOP + g["R"]) / 2
    origin = _to_canvas(np.array([0.0, -box_mid]), np.asarray(center, np.float64), a, roll)

    _draw_torso(canvas, origin, a, roll, g, identity, attributes, light, "under")

    # internal resolution: supersample small faces, cap large ones
    A = float(min(max(a, min(2 * a, 14.0)), _MAX_A))
    lay, (ox, oy) = _render_patch(identity, attributes, g, A, rng, light)
    k = a / A
    rgba, (ox, oy) = _crop_patch(lay, ox, oy)
    if k < 0.9:  # supersampled: low-pass before shrinking
        rgba = cv2.GaussianBlur(rgba, (0, 0), 0.45 / k)
    blur_sigma = 0.0
    if attributes.get("Blurry"):
        blur_sigma = float(rng.uniform(1.2, 2.2)) * max(1.0, a / 60)
    # affine map patch → canvas (scale, roll, translation) in one warp
    c, s_ = math.cos(roll), math.sin(roll)
    M = np.array([[k * c, -k * s_, 0.0], [k * s_, k * c, 0.0]])
    M[:, 2] = origin - M[:, :2] @ np.array([ox, oy])
    _paste_patch(canvas, rgba, M, blur_sigma)

    _draw_torso(canvas, origin, a, roll, g, identity, attributes, light, "over")
    pts = _to_canvas(_face_outline(g), origin, a, roll)
    bx0, by0 = pts.min(0)
    bx1, by1 = pts.max(0)
    box = (float(np.clip(bx0, 0, Wc)), float(np.clip(by0, 0, Hc)), float(np.clip(bx1, 0, Wc)),
           float(np.clip(by1, 0, Hc)))
    cl = g["my"] - g["smile"] + 0.012
    lm_face = np.array([[-g["ex"], g["ey"]], [g["ex"], g["ey"]], [0.0, g["ny"]],
                        [-g["mw"], cl], [g["mw"], cl]])
    lms = _to_canvas(lm_face, origin, a, roll)
    return {"box": box, "landmarks": [[float(x), float(y)] for x, y in lms]}


# ------------------------------------------------------------------------------------------------
# backgrounds, degradations, full images
# ------------------------------------------------------------------------------------------------
def _background(rng, h, w):
    c1, c2 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    ang = rng.uniform(0, 2 * np.pi)
    n = 17  # a linear gradient survives bilinear upsampling from a coarse grid
    xx = np.linspace(-0.5, 0.5, n, dtype=np.float32)[None, :]
    t = np.clip(xx * math.cos(ang) + xx.T * math.sin(ang) + 0.5, 0, 1)[..., None]
    small = ((c1[None, None, :] * (1 - t) + c2[None, None, :] * t) * 255).astype(np.float32)
    img = cv2.convertScaleAbs(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR))
    s = max(h, w)
    for _ in range(int(rng.integers(2, 10))):
        kind = rng.integers(5)
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = int(rng.integers(-s // 8, w)), int(rng.integers(-s // 8, h))
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(s // 16, s // 2)), y + int(rng.integers(s // 16, s // 2))),
                          col, -1)
        elif kind == 1:
            cv2.circle(img, (x, y), int(rng.integers(s // 40 + 1, s // 5)), col, -1, cv2.LINE_AA)
        elif kind == 2:
            cv2.line(img, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), col,
                     int(rng.integers(1, max(2, s // 40))), cv2.LINE_AA)
        elif kind == 3:
            pts = rng.integers(-s // 8, s, (int(rng.integers(3, 6)), 2)).astype(np.int32)
            cv2.fillPoly(img, [pts], col, cv2.LINE_AA)
        else:  # stripes
            step = int(rng.integers(max(3, s // 40), max(4, s // 8)))
            x0 = int(rng.integers(0, w))
            for xs in range(x0, min(w, x0 + s // 2), step * 2):
                cv2.rectangle(img, (xs, 0), (xs + step, h), col, -1)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.8, 3.0)))
    if rng.random() < 0.5:
        nz = rng.standard_normal((max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
        nz = cv2.resize(nz * float(rng.uniform(4, 14)), (w, h), interpolation=cv2.INTER_CUBIC)
        img = cv2.convertScaleAbs(cv2.add(img.astype(np.float32), nz))
    return img


def _degrade(img, kind, rng):
    h, w = img.shape[:2]
    if kind == "blur":
        return cv2.GaussianBlur(img, (0, 0), float(rng.uniform(1.2, 2.5)) * max(1.0, w / 256))
    if kind == "noise":
        n = rng.standard_normal(img.shape).astype(np.float32) * float(rng.uniform(6, 18))
        return np.clip(img.astype(np.float32) + n, 0, 255).astype(np.uint8)
    if kind == "jpeg":
        q = int(rng.integers(12, 35))
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()
    if kind == "lowlight":
        gain = float(rng.uniform(0.25, 0.45))
        f = (img.astype(np.float32) / 255) ** 1.3 * gain * 255
        f += rng.standard_normal(img.shape).astype(np.float32) * float(rng.uniform(2, 5))
        return np.clip(f, 0, 255).astype(np.uint8)
    if kind == "lowres":
        fct = float(rng.uniform(2.5, 4.0))
        small = cv2.resize(img, (max(8, int(w / fct)), max(8, int(h / fct))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    raise ValueError(f"unknown degradation {kind!r}")


def _overlap(b, boxes, frac=0.15):
    for o in boxes:
        ix = max(0.0, min(b[2], o[2]) - max(b[0], o[0]))
        iy = max(0.0, min(b[3], o[3]) - max(b[1], o[1]))
        if ix * iy > frac * min((b[2] - b[0]) * (b[3] - b[1]), (o[2] - o[0]) * (o[3] - o[1])):
            return True
    return False


def render_image(rng: np.random.Generator, *, size: int = 256, n_faces=1, face_scale=(0.35, 0.6),
                 degrade: str | None = None, identities=None, roll_range: float = 12.0):
    """A full RGB image with ``n_faces`` faces (int, or (lo, hi) inclusive range) on a cluttered background.

    Returns (image uint8 (size, size, 3), faces) where every face is a dict with "box", "landmarks",
    "attributes" and "identity_id".  ``identities`` (optional) is a sequence of identity dicts used in order.
    Faces that cannot be placed without large overlap are dropped (so len(faces) may be < n_faces).
    ``degrade`` is one of DEGRADATIONS (applied to the whole image; "blur"/"lowres" mark faces Blurry).
    """
    h = w = int(size)
    if not isinstance(n_faces, (int, np.integer)):
        n_faces = int(rng.integers(n_faces[0], n_faces[1] + 1))
    img = _background(rng, h, w)
    plans, boxes = [], []
    for i in range(int(n_faces)):
        ident = identities[i] if identities is not None and i < len(identities) else sample_identity(rng)
        attrs = sample_attributes(rng, ident)
        if degrade in ("blur", "lowres"):
            attrs["Blurry"] = True
        elif degrade is not None:
            attrs["Blurry"] = False
        for _try in range(25):
            fw = float(rng.uniform(face_scale[0], face_scale[1])) * w
            R = ident["ratio"]
            bh = fw * (R - _BOX_TOP) / 2
            cx = float(rng.uniform(0.55 * fw, w - 0.55 * fw)) if w > 1.1 * fw else w / 2
            cy = float(rng.uniform(0.55 * bh + 0.15 * fw, h - 0.55 * bh)) if h > 1.1 * bh + 0.15 * fw else h / 2
            # generous footprint: hair above, a little to the sides
            fp = (cx - 0.75 * fw, cy - 0.5 * bh - 0.35 * fw, cx + 0.75 * fw, cy + 0.5 * bh + 0.1 * fw)
            if not _overlap(fp, boxes):
                boxes.append(fp)
                plans.append((cy, cx, fw, ident, attrs))
                break
    plans.sort(key=lambda p: p[0])  # top to bottom: lower heads drawn over higher torsos
    faces = []
    for cy, cx, fw, ident, attrs in plans:
        roll = float(rng.uniform(-roll_range, roll_range))
        out = render_face(img, (cx, cy), fw, roll, ident, attrs, rng)
        faces.append({"box": out["box"], "landmarks": out["landmarks"], "attributes": attrs,
                      "identity_id": ident.get("id")})
    if degrade is not None:
        img = _degrade(img, degrade, rng)
    return img, faces


def render_aligned(rng: np.random.Generator, identity: dict, attributes: dict, size: int = 112):
    """A face centred and upright at a canonical position (face width = 0.62 * size) on a plain,
    softly graded background, for the labelled training split.  Returns (image, face dict)."""
    c1 = rng.uniform(0.2, 0.9, 3)
    t = np.linspace(0.9, 1.1, size, dtype=np.float32)[:, None, None]
    img = np.clip(c1[None, None, :] * t * 255, 0, 255).astype(np.uint8).repeat(size, 1)
    out = render_face(img, (size / 2, size * 0.52), 0.62 * size, 0.0, identity, attributes, rng)
    return img, {"box": out["box"], "landmarks": out["landmarks"], "attributes": dict(attributes),
                 "identity_id": identity.get("id")}
