"""Image metrics of one aligned face crop: resolution, sharpness, brightness, contrast, JPEG quality,
BRISQUE and (with local CLIP weights) CLIP-IQA.

* sharpness: variance of the Laplacian of the grey image (higher = sharper);
* brightness / contrast: mean and standard deviation (RMS contrast) of the grey levels, 0–255;
* JPEG quality: estimated from the luminance quantisation table in the file header, by inverting libjpeg's
  quality scaling of the standard (Annex K) table; ``None`` for non-JPEG data;
* BRISQUE (Mittal et al. 2012): the ``brisque`` package's features and the SVM model that ships inside its
  wheel (``brisque/models/svm.txt``), loaded from disk — lower is better, roughly 0–100;
* CLIP-IQA (Wang et al. 2023): softmax over the antonym prompts "Good photo." / "Bad photo." of the CLIP
  image–text similarities (×100), probability of "good" — higher is better.
"""

from __future__ import annotations

import io
import logging

import cv2
import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

# ITU-T T.81 Annex K.1 luminance table, natural (row-major) order, as Pillow reports tables
STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)


def decode(data: bytes) -> tuple[np.ndarray, Image.Image]:
    """Decode image bytes to RGB uint8; raises on unreadable data."""
    im = Image.open(io.BytesIO(data))
    im.load()
    return np.asarray(im.convert("RGB")), im


def jpeg_quality(im: Image.Image) -> float | None:
    """libjpeg quality (1–100) whose scaled standard table is closest to this file's luminance table."""
    tables = getattr(im, "quantization", None)
    if not tables or 0 not in tables:
        return None
    q = np.asarray(tables[0], dtype=np.float64)
    if q.shape != (64,):
        return None
    best, best_err = None, np.inf
    for quality in range(1, 101):
        scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
        cand = np.clip(np.floor((STD_LUMA * scale + 50) / 100), 1, 255)
        err = float(np.abs(cand - q).sum())
        if err < best_err:
            best, best_err = quality, err
    return float(best)


def sharpness(gray: np.ndarray) -> float:
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


class Brisque:
    """The brisque package's scorer with a fix for numpy ≥ 2 (its features are 1-element arrays)."""

    def __init__(self):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from brisque import BRISQUE
            from brisque.models import MODEL_PATH

        class _Fixed(BRISQUE):
            def scale_features(self, features):
                f = np.array([float(np.ravel(np.asarray(x, dtype=np.float64))[0]) for x in features])
                lo = np.array([float(m) for m in self.scale_params["min_"]])
                hi = np.array([float(m) for m in self.scale_params["max_"]])
                return -1 + 2.0 / (hi - lo) * (f - lo)

            def calculate_mscn_coefficients(self, image, kernel_size=6, sigma=7 / 6):
                # the package's formula with OpenCV's filter instead of scipy's convolve2d (same zero
                # padding; the Gaussian kernel is symmetric so correlation = convolution): ~3x faster
                # (BRISQUE uses kernel_size = 7: odd, so both centre the kernel the same way)
                kernel = self.gaussian_kernel2d(kernel_size, sigma=sigma)

                def conv(x):
                    return cv2.filter2D(x, cv2.CV_64F, kernel, borderType=cv2.BORDER_CONSTANT)

                mu = conv(image)
                var = np.sqrt(np.abs(mu ** 2 - conv(image ** 2)))
                return (image - mu) / (var + 1 / 255)

            def score(self, img):
                import skimage.color

                image = self.remove_alpha_channel(img)
                gray = skimage.color.rgb2gray(image)
                feats = self.calculate_brisque_features(gray, kernel_size=7, sigma=7 / 6)
                half = cv2.resize(gray, None, fx=1 / 2, fy=1 / 2, interpolation=cv2.INTER_CUBIC)
                feats = np.concatenate((feats, self.calculate_brisque_features(half, kernel_size=7, sigma=7 / 6)))
                return self.calculate_image_quality_score(feats)

        self.model_path = MODEL_PATH
        self._impl = _Fixed(url=False)  # loads svm.txt + normalize.pickle from the installed package

    def __call__(self, rgb: np.ndarray) -> float:
        with np.errstate(all="ignore"):
            return float(self._impl.score(rgb))


def image_row(data: bytes, brisque: Brisque | None = None) -> dict:
    """All per-image metrics of one crop (raises if the bytes do not decode)."""
    rgb, im = decode(data)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    row = {"width": int(rgb.shape[1]), "height": int(rgb.shape[0]), "sharpness": sharpness(gray),
           "brightness": float(gray.mean()), "contrast": float(gray.std()), "jpeg_quality": jpeg_quality(im),
           "brisque": float("nan")}
    if brisque is not None:
        row["brisque"] = brisque(rgb)
    return row


class ClipScorer:
    """An open_clip model from local weights (never downloaded): CLIP-IQA and image/text embeddings."""

    def __init__(self, weights: str, arch: str, model_config: str | None = None, batch: int = 32):
        import torch

        from facecaption.core import openclip as oc

        if model_config:  # registers an architecture named after the file (stem)
            arch = oc.add_config_file(model_config, arch)
        torch.set_grad_enabled(False)
        self._oc = oc
        self.model, self.preprocess, self.tokenizer = oc.load(weights, arch)
        self.batch = batch
        self._prompts = None

    def encode_images(self, images: list) -> np.ndarray:
        return self._oc.encode_images(self.model, self.preprocess, images, self.batch)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self._oc.encode_texts(self.model, self.tokenizer, texts, self.batch)

    def clip_iqa(self, images: list) -> np.ndarray:
        if self._prompts is None:
            self._prompts = self.encode_texts(["Good photo.", "Bad photo."])
        logits = 100.0 * self.encode_images(images) @ self._prompts.T
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p[:, 0] / p.sum(axis=1)
