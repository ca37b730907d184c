"""Folders in CelebA's and LFWA's published formats, rendered by synthface (faces with known ground truth).

They let the tests, and a user without the real data, run the code paths of ``labeled.source: celeba``
(``config/celeba.yaml``) and of ``evaluate.datasets`` (``config/lfwa.yaml``) end to end::

    python -m facecaption.synthface.formats celeba data/celeba --identities 200 --images-per-identity 8
    python -m facecaption.synthface.formats lfwa data/lfwa --identities 100

:func:`write_celeba` writes CelebA's "Aligned&Cropped" layout:

* ``img_align_celeba/000001.jpg …``: 178×218 JPEGs. As CelebA's were, every face is rendered in the wild
  (random position, size and roll on a cluttered background) and then aligned by a similarity transform
  that puts the two eye centres at CelebA's mean eye positions (with a pixel of jitter, as CelebA's
  detector-based alignment has), then cropped to 178×218;
* ``list_attr_celeba.txt``: a count line, the 40 attribute names in CelebA's order, then
  ``000001.jpg -1  1 …`` (-1/1, each value right-aligned in a field of two after a space, as the original);
* ``list_eval_partition.txt``: ``000001.jpg 0|1|2`` (train|val|test), split by identity; the images are
  numbered train first, then val, then test, as CelebA's are;
* ``list_landmarks_align_celeba.txt``: a count line, the header ``lefteye_x lefteye_y … rightmouth_y``, then
  the 5 landmarks of every image in the aligned image, rounded to whole pixels (as the original);
* ``identity_CelebA.txt``: ``000001.jpg <identity>`` with identities numbered from 1.

:func:`write_lfwa` writes LFWA's layout as ``config/lfwa.yaml`` reads it: ``lfw/<Person_Name>/
<Person_Name>_0001.jpg`` (250×250 JPEGs, the face roughly centred and *not* aligned, as LFW's), an
attribute list in CelebA's format (``list_attr_lfw.txt``) and a partition file
(``list_eval_partition_lfw.txt``, train/test only by default, split by identity, as LFWA ships it).

Labels are the renderer's truth: the 39 attributes synthface draws (``DRAWABLE``). The 40th,
``Attractive``, is subjective and not drawn, so it is written as -1 for every image: a constant column
that carries no information (a probe on it scores the majority class). Every function returns the truth
per image (file, identity, split, labels, landmarks in the written image as floats), which the files hold
only rounded.

Everything derives from ``seed``: same arguments, byte-identical folders. Writing into a folder that
already holds any of these files is refused (``overwrite=True`` to allow it), so a real copy of CelebA is
never overwritten by a stand-in.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from facecaption.core import rng as rngmod
from facecaption.core.celeba import ATTRIBUTES
from facecaption.synthface.render import render_face, render_image, sample_attributes, sample_identity

__all__ = ["CELEBA_SIZE", "CELEBA_EYES", "LANDMARK_COLUMNS", "NOT_DRAWN", "write_celeba", "write_lfwa"]

CELEBA_SIZE = (178, 218)  # width, height of img_align_celeba/*.jpg
# mean eye centres (image left, image right) in CelebA's aligned images (list_landmarks_align_celeba.txt)
CELEBA_EYES = ((69.0, 111.0), (107.5, 111.0))
LFW_SIZE = 250
LANDMARK_COLUMNS = ("lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
                    "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y")
NOT_DRAWN = "Attractive"  # the one CelebA attribute synthface does not draw: written as -1 everywhere
_EYE_DIST_PER_WIDTH = 0.46  # synthface: eye distance / cheek-to-cheek face width (about; varies by identity)
JPEG_QUALITY = 95

CELEBA_FILES = ("img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt",
                "list_landmarks_align_celeba.txt", "identity_CelebA.txt")
LFWA_FILES = ("lfw", "list_attr_lfw.txt", "list_eval_partition_lfw.txt", "list_landmarks_lfw.txt")

_FIRST = ("Aaron", "Abel", "Ada", "Adele", "Aiko", "Alan", "Alba", "Amir", "Ana", "Anton", "Ayla", "Bela",
          "Boris", "Carla", "Chen", "Dara", "Diego", "Elif", "Emil", "Eva", "Farah", "Felix", "Greta", "Hana",
          "Hugo", "Ines", "Ivan", "Jana", "Jonas", "Kira", "Lars", "Lena", "Luca", "Mara", "Mateo", "Mina",
          "Nils", "Nora", "Omar", "Oscar", "Paula", "Rafael", "Rosa", "Sami", "Sara", "Tariq", "Tomas",
          "Uma", "Vera", "Yusuf")
_LAST = ("Abbott", "Alves", "Baker", "Berg", "Brandt", "Castro", "Costa", "Dahl", "Diaz", "Ekman", "Ferrari",
         "Fischer", "Garcia", "Haas", "Holm", "Ibrahim", "Jansen", "Kato", "Keller", "Kim", "Lang", "Lopez",
         "Maier", "Moreau", "Nagy", "Novak", "Okafor", "Olsen", "Park", "Petrov", "Quinn", "Reyes", "Rossi",
         "Sato", "Schmidt", "Silva", "Singh", "Tanaka", "Torres", "Urban", "Vargas", "Weber", "Wolf", "Yilmaz",
         "Young", "Zhang", "Ziegler", "Moss", "Hale", "Price")


# -- shared pieces ---------------------------------------------------------------------------------------
def _split_identities(n: int, shares: tuple[float, float, float], rng: np.random.Generator) -> list[str]:
    """A split code ("0"/"1"/"2") per identity: whole identities per split, every split with a share > 0
    non-empty."""
    if len(shares) != 3 or any(s < 0 for s in shares) or shares[0] <= 0:
        raise ValueError(f"shares must be (train > 0, val >= 0, test >= 0), got {shares}")
    total = float(sum(shares))
    n_val = max(1, round(n * shares[1] / total)) if shares[1] > 0 else 0
    n_test = max(1, round(n * shares[2] / total)) if shares[2] > 0 else 0
    if n - n_val - n_test < 1:
        raise ValueError(f"{n} identities are too few for a train split beside {n_val} val and {n_test} test")
    codes = ["0"] * (n - n_val - n_test) + ["1"] * n_val + ["2"] * n_test
    return [codes[i] for i in rng.permutation(n)]


def _labels(attributes: dict) -> dict[str, int]:
    """-1/1 for the 40 CelebA attributes from the renderer's truth; the undrawn one is -1."""
    return {a: (1 if attributes.get(a, False) and a != NOT_DRAWN else -1) for a in ATTRIBUTES}


def _attr_lines(names: list[str], labels: list[dict]) -> list[str]:
    lines = [str(len(names)), " ".join(ATTRIBUTES) + " "]  # the original header ends with a space
    for name, lab in zip(names, labels):
        lines.append(name + "".join(f" {lab[a]:>2}" for a in ATTRIBUTES))
    return lines


def _landmark_lines(names: list[str], landmarks: list[np.ndarray]) -> list[str]:
    lines = [str(len(names)), " ".join(LANDMARK_COLUMNS)]
    for name, lm in zip(names, landmarks):
        v = [int(round(float(x))) for x in np.asarray(lm).reshape(-1)]
        lines.append(f"{name:<20}{v[0]:>3}" + "".join(f"{x:>5}" for x in v[1:]))
    return lines


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def _save_jpeg(rgb: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)


def _refuse_existing(folder: Path, names: tuple[str, ...], overwrite: bool) -> None:
    if overwrite:
        return
    present = [n for n in names if (folder / n).exists()]
    if present:
        raise FileExistsError(f"{folder / present[0]}: already exists; refusing to overwrite it with a synthetic "
                              f"stand-in (pick an empty folder, or pass overwrite=True / --overwrite)")


def _eye_similarity(src_eyes: np.ndarray, dst_eyes: np.ndarray) -> np.ndarray:
    """The 2×3 similarity (rotation, uniform scale, shift) mapping two source points exactly onto two
    destination points."""
    p1, p2 = (complex(*p) for p in np.asarray(src_eyes, np.float64))
    q1, q2 = (complex(*q) for q in np.asarray(dst_eyes, np.float64))
    z = (q2 - q1) / (p2 - p1)
    t = q1 - z * p1
    return np.array([[z.real, -z.imag, t.real], [z.imag, z.real, t.imag]])


def _apply(matrix: np.ndarray, points) -> np.ndarray:
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    return pts @ matrix[:, :2].T + matrix[:, 2]


# -- CelebA ----------------------------------------------------------------------------------------------
def render_celeba_image(rng: np.random.Generator, identity: dict, size: tuple[int, int] = CELEBA_SIZE):
    """One CelebA-style aligned image: (RGB uint8 (h, w, 3), attributes, landmarks (5, 2) in the image).

    The face is drawn in the wild (random roll, size and placement on a cluttered background), then a
    similarity transform puts its eye centres on CelebA's mean eye positions (scaled to ``size``, with up to
    about a pixel of jitter) and the image is cropped to ``size`` = (width, height)."""
    w, h = size
    eye_dist = (CELEBA_EYES[1][0] - CELEBA_EYES[0][0]) * w / CELEBA_SIZE[0]
    canvas = int(math.ceil(1.5 * max(w, h)))
    img, _ = render_image(rng, size=canvas, n_faces=0)  # background only
    attrs = sample_attributes(rng, identity)
    fw = eye_dist / _EYE_DIST_PER_WIDTH * float(rng.uniform(0.85, 1.2))
    centre = (canvas / 2 + float(rng.uniform(-0.06, 0.06)) * canvas,
              canvas / 2 + float(rng.uniform(-0.06, 0.06)) * canvas)
    face = render_face(img, centre, fw, float(rng.uniform(-15, 15)), identity, attrs, rng)
    target = np.array(CELEBA_EYES) * np.array([w / CELEBA_SIZE[0], h / CELEBA_SIZE[1]])
    target = target + np.clip(rng.normal(0, 0.7, (2, 2)), -1.5, 1.5)
    matrix = _eye_similarity(np.array(face["landmarks"][:2]), target)
    out = cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    return out, attrs, _apply(matrix, face["landmarks"])


def write_celeba(folder: str | Path, n_identities: int = 40, images_per_identity: int = 4, seed: int = 0,
                 size: tuple[int, int] = CELEBA_SIZE, shares: tuple[float, float, float] = (0.8, 0.1, 0.1),
                 landmarks: bool = True, overwrite: bool = False) -> list[dict]:
    """Write a synthetic CelebA folder in CelebA's published layout (see the module docstring).

    ``n_identities`` people with ``images_per_identity`` images each, split train/val/test by identity in
    ``shares``; ``size`` = (width, height) of the images (CelebA: 178×218); ``landmarks=False`` leaves out
    ``list_landmarks_align_celeba.txt`` (as some copies of CelebA do). ``Attractive`` is not drawn: -1 for
    every image. Returns the truth per image: ``{"file", "identity", "split", "labels" (name → -1/1),
    "landmarks" (5×2 float, in the image)}`` in file order."""
    folder = Path(folder)
    _refuse_existing(folder, CELEBA_FILES, overwrite)
    split_of = _split_identities(n_identities, shares, rngmod.stream(seed, "formats/celeba/partition"))
    # CelebA numbers its images train first, then val, then test; identities interleave within a split
    plan = []
    for code in ("0", "1", "2"):
        people = [i for i in range(n_identities) if split_of[i] == code]
        jobs = [(i, j) for i in people for j in range(images_per_identity)]
        order = rngmod.stream(seed, "formats/celeba/order", code).permutation(len(jobs))
        plan += [(code, *jobs[k]) for k in order]
    images = folder / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    identities = {i: sample_identity(rngmod.stream(seed, "formats/celeba/identity", i)) for i in range(n_identities)}
    truth = []
    for no, (code, i, j) in enumerate(plan, start=1):
        name = f"{no:06d}.jpg"
        rgb, attrs, lms = render_celeba_image(rngmod.stream(seed, "formats/celeba/image", i, j), identities[i], size)
        _save_jpeg(rgb, images / name)
        truth.append({"file": name, "identity": i + 1, "split": code, "labels": _labels(attrs), "landmarks": lms})
    names = [t["file"] for t in truth]
    _write_lines(folder / "list_attr_celeba.txt", _attr_lines(names, [t["labels"] for t in truth]))
    _write_lines(folder / "list_eval_partition.txt", [f"{t['file']} {t['split']}" for t in truth])
    _write_lines(folder / "identity_CelebA.txt", [f"{t['file']} {t['identity']}" for t in truth])
    if landmarks:
        _write_lines(folder / "list_landmarks_align_celeba.txt",
                     _landmark_lines(names, [t["landmarks"] for t in truth]))
    return truth


# -- LFWA ------------------------------------------------------------------------------------------------
def person_names(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct LFW-style names (``First_Last``), in a seeded order."""
    cap = len(_FIRST) * len(_LAST)
    if n > cap * 26:
        raise ValueError(f"at most {cap * 26} distinct names, asked for {n}")
    order = rngmod.stream(seed, "formats/lfwa/names").permutation(cap)
    out = []
    for i in range(n):
        k = int(order[i % cap])
        name = f"{_FIRST[k % len(_FIRST)]}_{_LAST[k // len(_FIRST)]}"
        out.append(name if i < cap else f"{name.split('_')[0]}_{chr(ord('A') + i // cap - 1)}_{name.split('_')[1]}")
    return out


def render_lfw_image(rng: np.random.Generator, identity: dict, size: int = LFW_SIZE):
    """One LFW-style image: the face roughly centred, upright within ±10°, not aligned, on clutter.
    Returns (RGB uint8 (size, size, 3), attributes, landmarks (5, 2))."""
    img, _ = render_image(rng, size=size, n_faces=0)
    attrs = sample_attributes(rng, identity)
    fw = float(rng.uniform(0.36, 0.44)) * size
    centre = (size / 2 + float(rng.uniform(-0.03, 0.03)) * size, size * 0.52 + float(rng.uniform(-0.03, 0.03)) * size)
    face = render_face(img, centre, fw, float(rng.uniform(-10, 10)), identity, attrs, rng)
    return img, attrs, np.asarray(face["landmarks"], np.float64)


def write_lfwa(folder: str | Path, n_identities: int = 30, images_per_identity: int = 3, seed: int = 0,
               size: int = LFW_SIZE, shares: tuple[float, float, float] = (0.5, 0.0, 0.5),
               landmarks: bool = False, overwrite: bool = False) -> list[dict]:
    """Write a synthetic LFWA folder: ``lfw/<Person_Name>/<Person_Name>_0001.jpg`` (``size``² JPEGs),
    ``list_attr_lfw.txt`` (CelebA's attribute format, names in alphabetical order as LFWA's) and
    ``list_eval_partition_lfw.txt`` (``image 0|1|2``; by default train and test only, split by identity,
    as LFWA ships it; the evaluation reader then carves validation identities out of train).
    ``landmarks=True`` also writes ``list_landmarks_lfw.txt`` in CelebA's landmark format (LFWA ships
    none). ``Attractive`` is not drawn: -1 for every image. Returns the truth per image as
    :func:`write_celeba` does (``identity`` is the person's name)."""
    folder = Path(folder)
    _refuse_existing(folder, LFWA_FILES, overwrite)
    split_of = _split_identities(n_identities, shares, rngmod.stream(seed, "formats/lfwa/partition"))
    people = person_names(n_identities, seed)
    truth = []
    for i in range(n_identities):
        identity = sample_identity(rngmod.stream(seed, "formats/lfwa/identity", i))
        for j in range(images_per_identity):
            name = f"{people[i]}_{j + 1:04d}.jpg"
            rgb, attrs, lms = render_lfw_image(rngmod.stream(seed, "formats/lfwa/image", i, j), identity, size)
            _save_jpeg(rgb, folder / "lfw" / people[i] / name)
            truth.append({"file": name, "identity": people[i], "split": split_of[i], "labels": _labels(attrs),
                          "landmarks": lms})
    truth.sort(key=lambda t: t["file"])
    names = [t["file"] for t in truth]
    _write_lines(folder / "list_attr_lfw.txt", _attr_lines(names, [t["labels"] for t in truth]))
    _write_lines(folder / "list_eval_partition_lfw.txt", [f"{t['file']} {t['split']}" for t in truth])
    if landmarks:
        _write_lines(folder / "list_landmarks_lfw.txt", _landmark_lines(names, [t["landmarks"] for t in truth]))
    return truth


# -- command line ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m facecaption.synthface.formats",
        description="Write a synthetic CelebA or LFWA folder in the published layout (rendered by synthface), "
                    "e.g. to dry-run config/celeba.yaml (data/celeba) or config/lfwa.yaml (data/lfwa) without "
                    "the real data. Attribute labels are the renderer's truth; Attractive is not drawn (-1).")
    ap.add_argument("format", choices=["celeba", "lfwa"])
    ap.add_argument("out", help="folder to write (must not hold these files already)")
    ap.add_argument("--identities", type=int, default=None, help="people (default: celeba 40, lfwa 30)")
    ap.add_argument("--images-per-identity", type=int, default=None, help="(default: celeba 4, lfwa 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-landmarks", action="store_true",
                    help="celeba: leave out list_landmarks_align_celeba.txt (crops then fall back to a centre crop)")
    ap.add_argument("--landmarks", action="store_true", help="lfwa: also write list_landmarks_lfw.txt")
    ap.add_argument("--overwrite", action="store_true", help="replace the files of an earlier stand-in")
    args = ap.parse_args(argv)
    try:
        if args.format == "celeba":
            truth = write_celeba(args.out, args.identities or 40, args.images_per_identity or 4, args.seed,
                                 landmarks=not args.no_landmarks, overwrite=args.overwrite)
        else:
            truth = write_lfwa(args.out, args.identities or 30, args.images_per_identity or 3, args.seed,
                               landmarks=args.landmarks, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as exc:
        sys.stderr.write(f"formats: {exc}\n")
        return 2
    counts = {s: sum(t["split"] == s for t in truth) for s in ("0", "1", "2")}
    print(f"{args.out}: synthetic {args.format} folder, {len(truth)} images "
          f"(train {counts['0']}, val {counts['1']}, test {counts['2']}); labels from the renderer, "
          f"{NOT_DRAWN} = -1 everywhere")
    return 0


if __name__ == "__main__":
    sys.exit(main())
