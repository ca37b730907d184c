"""The faces stage: robust decoding, filters, alignment, the shard outputs, the audit on synthface and
real photos that ship inside installed packages."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import run_stage, tiny_config
from PIL import Image

from facecaption.core.align import template
from facecaption.core.shards import ShardWriter, iter_samples, read_parquet, write_parquet
from facecaption.faces import judge_faces
from facecaption.faces.decode import decode_image
from facecaption.faces.detect import CenterFaceDetector, Face

INSIGHTFACE_IMAGES = Path(__import__("insightface").__file__).parent / "data" / "images"


# -- helpers --------------------------------------------------------------------------------------------
def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def face_image(seed: int = 3, size: int = 160) -> np.ndarray:
    """One synthface portrait (one face, well above the size floor)."""
    from facecaption.synthface.render import render_image

    img, faces = render_image(np.random.default_rng(seed), size=size, n_faces=1, face_scale=(0.5, 0.55))
    assert len(faces) == 1
    return img


def group_photo(n: int = 7, tile: int = 128, cols: int = 4) -> np.ndarray:
    """``n`` synthface portraits side by side (rows of ``cols``): a group photo of ``n`` well-separated faces,
    each well above the size and score floors."""
    from facecaption.synthface.render import render_image

    rows = -(-n // cols)
    canvas = np.full((rows * tile, cols * tile, 3), 200, np.uint8)
    for i in range(n):
        img, faces = render_image(np.random.default_rng(100 + i), size=tile, n_faces=1, face_scale=(0.5, 0.55))
        assert len(faces) == 1
        r, c = divmod(i, cols)
        canvas[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = img
    return canvas


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid tiny PNG whose header declares huge dimensions (CRC fixed up)."""
    data = bytearray(encode(Image.new("RGB", (4, 4))))
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr: ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4: ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13: ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def exif_rotated_jpeg(rgb: np.ndarray) -> bytes:
    """Pixels stored sideways with EXIF Orientation 6 ('rotate 90° clockwise to view')."""
    stored = Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def cv2_png16(rgb: np.ndarray) -> bytes:
    """A 48-bit RGB PNG (16 bits per sample) of an 8-bit RGB image."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]).astype(np.uint16) * 257)
    assert ok
    return buf.tobytes()


def bad_inputs(face: np.ndarray) -> dict[str, tuple[bytes, str | None]]:
    """name -> (bytes, expected decode reason category or None if it decodes)."""
    pil = Image.fromarray(face)
    jpeg = encode(pil, "JPEG", quality=90)
    pal = pil.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal_t = pal.copy()
    pal_t.info["transparency"] = 0
    rgba = pil.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.full(face.shape[:2], 255, np.uint8)))
    return {
        "truncated": (jpeg[: len(jpeg) // 2], "corrupt_image"),
        "zero_bytes": (b"", "empty_file"),
        "html": (b"<html><body>404 Not Found</body></html>", "not_an_image"),
        "bomb": (bomb_png(), "decompression_bomb"),
        "one_pixel": (encode(Image.new("RGB", (1, 1), (200, 10, 10))), "image_too_small"),
        "cmyk": (encode(pil.convert("CMYK"), "JPEG", quality=92), None),
        "gray": (encode(pil.convert("L")), None),
        "palette": (encode(pal), None),
        "palette_alpha": (encode(pal_t), None),
        "rgba": (encode(rgba), None),
        "exif_rotated": (exif_rotated_jpeg(face), None),
        "gray16": (encode(Image.fromarray(np.asarray(pil.convert("L")).astype(np.uint16) * 257)), None),
        "rgb48": (cv2_png16(face), None),
    }


def write_collect_shard(shard: str, images: dict, captions: dict | None = None, statuses: dict | None = None) -> None:
    """A collect shard as the collect stage writes it: ``images`` maps name -> RGB array or raw bytes."""
    rows = []
    Path("results/collect").mkdir(parents=True, exist_ok=True)
    with ShardWriter(f"results/collect/{shard}.tar") as w:
        for name, img in images.items():
            key = f"{shard}_{name}"
            data = img if isinstance(img, bytes) else encode(Image.fromarray(img), "JPEG", quality=95)
            status = (statuses or {}).get(name, "success")
            if status == "success":
                w.write({"__key__": key, "jpg": data, "txt": (captions or {}).get(name, f"photo {name}"),
                         "json": {"key": key}})
            rows.append({"key": key, "url": f"file://{name}", "width": 0, "height": 0, "source": "folder",
                         "caption": f"photo {name}", "status": status,
                         "error_message": None if status == "success" else "HTTP 404"})
    write_parquet(pd.DataFrame(rows), f"results/collect/{shard}.parquet")
    write_parquet(pd.DataFrame(columns=["key", "face"]), f"results/collect/{shard}.truth.parquet")


# -- decoding -------------------------------------------------------------------------------------------
def test_decode_every_bad_input_kind():
    face = face_image()
    for name, (data, expect) in bad_inputs(face).items():
        rgb, reason = decode_image(data, max_pixels=50_000_000, min_side=16)
        if expect is None:
            assert reason is None, (name, reason)
            assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, name
            assert rgb.shape[:2] == face.shape[:2], name
        else:
            assert rgb is None and reason.split(":")[0] == expect, (name, reason)


def test_exif_rotation_is_applied():
    face = face_image(size=96)
    face = np.ascontiguousarray(face[:, :80])  # not square, so a missed rotation shows in the shape
    rgb, reason = decode_image(exif_rotated_jpeg(face))
    assert reason is None and rgb.shape == face.shape
    assert np.abs(rgb.astype(int) - face.astype(int)).mean() < 6


def test_alpha_is_composited_on_white():
    rgba = np.zeros((20, 20, 4), np.uint8)  # fully transparent black
    rgb, _ = decode_image(encode(Image.fromarray(rgba, "RGBA")))
    assert (rgb == 255).all()


# -- filters --------------------------------------------------------------------------------------------
def test_judge_faces_reasons():
    fcfg = tiny_config()["faces"] | {"min_size": 40, "max_faces": 2}
    lm = np.zeros((5, 2), np.float32)
    faces = [Face((0, 0, 100, 120), 0.9, lm), Face((0, 0, 30, 40), 0.8, lm), Face((0, 0, 60, 70), 0.7, lm),
             Face((0, 0, 60, 70), 0.6, lm), Face((0, 0, 90, 90), 0.4, lm)]
    assert judge_faces(faces, fcfg) == ["", "too_small", "", "too_many_faces", "low_score"]


def test_judge_faces_without_a_limit():
    fcfg = tiny_config(faces={"max_faces": None})["faces"]
    assert fcfg["max_faces"] is None and tiny_config()["faces"]["max_faces"] == 5  # the embedded default stays
    lm = np.zeros((5, 2), np.float32)
    faces = [Face((0, 0, 100, 100), 0.9 - i / 100, lm) for i in range(12)] + [Face((0, 0, 10, 10), 0.7, lm)]
    assert judge_faces(faces, fcfg) == [""] * 12 + ["too_small"]


def test_decode_sixteen_bit_gray_matches_the_8_bit_original():
    face = face_image()
    gray8 = np.asarray(Image.fromarray(face).convert("L"))
    rgb, reason = decode_image(bad_inputs(face)["gray16"][0])
    assert reason is None and (rgb == gray8[:, :, None]).all()  # 257·v → v exactly; no clip, no stretch
    rgb, reason = decode_image(bad_inputs(face)["rgb48"][0])
    assert reason is None and np.abs(rgb.astype(int) - face.astype(int)).max() <= 1


def test_centerface_batches_match_single_images():
    from facecaption.faces.centerface import CenterFace

    images = [face_image(1, 160), face_image(2, 160), face_image(3, 128)]
    batched = CenterFaceDetector().detect(images, 0.3)
    ref = CenterFace()
    for img, got in zip(images, batched):
        want = ref.detect(img, threshold=0.3)
        assert len(got) == len(want) >= 1
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.box, w.box, atol=1e-3)
            np.testing.assert_allclose(g.landmarks, w.landmarks, atol=1e-3)


# -- the stage on a shard full of bad input ---------------------------------------------------------------
def test_bad_inputs_never_stop_the_shard(workdir):
    face = face_image()
    bad = bad_inputs(face)
    images = {"good_a": face_image(5), **{k: v for k, (v, _) in bad.items()}, "good_b": face_image(6),
              "failed_download": b""}
    write_collect_shard("00000", images, statuses={"failed_download": "error"})
    cfg = tiny_config()
    assert run_stage("faces", cfg, "00000") == 0
    rec = read_parquet("results/faces/00000.records.parquet")
    img = rec[rec.face == -1].set_index("image_key")
    assert len(img) == len(images) and img.index.is_unique
    for name, (_, expect) in bad.items():
        reason = img.loc[f"00000_{name}", "reason"]
        if expect is None:  # odd modes and EXIF rotation decode, and the face is found and kept
            assert img.loc[f"00000_{name}", "status"] == "kept", (name, reason)
        else:
            assert reason.split(":")[0] == expect, (name, reason)
    assert img.loc["00000_failed_download", "reason"].startswith("not_collected: error")
    for name in ("good_a", "good_b"):
        assert img.loc[f"00000_{name}", "status"] == "kept"
    # outputs agree with each other and with the contract
    faces = read_parquet("results/faces/00000.parquet")
    kept = rec[(rec.face >= 0) & (rec.status == "kept")]
    assert sorted(faces.key) == sorted(f"{k}_{f:02d}" for k, f in zip(kept.image_key, kept.face))
    samples = list(iter_samples("results/faces/00000.tar"))
    assert sorted(s["__key__"] for s in samples) == sorted(faces.key)
    meta = json.loads(samples[0]["json"])
    assert set(meta) == {"image_key", "face", "score", "box", "landmarks"} and len(meta["landmarks"]) == 10
    crop = np.asarray(Image.open(io.BytesIO(samples[0]["jpg"])))
    assert crop.shape == (cfg["align"]["size"], cfg["align"]["size"], 3)
    assert {"key", "image_key", "face", "score", "x0", "y0", "x1", "y1", "landmarks", "box_width", "detector",
            "alt_text"} <= set(faces.columns)
    assert faces.set_index("image_key").loc["00000_good_a", "alt_text"] == "photo good_a"


def test_max_faces_null_keeps_every_face_and_a_limit_names_the_rest(workdir):
    """A group photo of 7 faces: max_faces null keeps all 7; max_faces 5 keeps the 5 best and records the
    other 2 as too_many_faces."""
    write_collect_shard("00000", {"group": group_photo(7)})
    kept_by_limit = {}
    for limit in (None, 5):
        assert run_stage("faces", tiny_config(faces={"max_faces": limit}), "00000") == 0
        rec = read_parquet("results/faces/00000.records.parquet")
        faces = read_parquet("results/faces/00000.parquet")
        per_face = rec[rec.face >= 0].sort_values("face")
        assert len(per_face) == 7, per_face  # every detected face has its record
        assert rec[rec.face == -1].status.tolist() == ["kept"]
        assert (per_face.reason.fillna("") == "").eq(per_face.status == "kept").all()  # each drop names its reason
        kept_by_limit[limit] = per_face
        assert len(faces) == (per_face.status == "kept").sum()
        assert len(list(iter_samples("results/faces/00000.tar"))) == len(faces)
    assert (kept_by_limit[None].status == "kept").sum() == 7
    five = kept_by_limit[5]
    assert five.status.tolist() == ["kept"] * 5 + ["dropped"] * 2
    assert five.reason.tolist()[5:] == ["too_many_faces"] * 2
    assert five.score.iloc[:5].min() >= five.score.iloc[5:].max()  # the best scores are kept


def test_max_faces_counts_only_faces_that_pass_every_filter(tmp_path):
    """With max_faces 2, a better face that fails alignment does not use up a place: the third face is
    kept, and every dropped face has its own reason (align_failed, then too_many_faces)."""
    from facecaption.faces import process

    lm = np.array([[25, 30], [45, 30], [35, 40], [28, 50], [42, 50]], np.float32)

    class Group:  # the detector's verdict on one real image, fixed so one face cannot be aligned
        name = "group"

        def detect(self, images, threshold):
            return [[Face((10, 10, 60, 60), 0.95, np.full((5, 2), np.nan, np.float32)),
                     Face((10, 10, 60, 60), 0.9, lm), Face((10, 10, 60, 60), 0.8, lm),
                     Face((10, 10, 60, 60), 0.7, lm)] for _ in images]

    cfg = tiny_config(faces={"max_faces": 2})
    faces, rec = process([{"__key__": "a", "jpg": encode(Image.fromarray(face_image(size=96)))}], cfg["faces"],
                         cfg["align"], Group(), str(tmp_path / "x.tar"))
    per_face = rec[rec.face >= 0].sort_values("face")
    assert per_face.reason.tolist() == ["align_failed", "", "", "too_many_faces"]
    assert list(faces.face) == [1, 2]


def test_quality_floors_drop_with_reasons(workdir):
    write_collect_shard("00000", {"a": face_image(5), "b": face_image(6)})
    cfg = tiny_config(faces={"min_brightness": 254})
    assert run_stage("faces", cfg, "00000") == 0
    rec = read_parquet("results/faces/00000.records.parquet")
    assert set(rec[rec.face >= 0].reason) == {"too_dark"}
    assert set(rec[rec.face == -1].reason) == {"no_face_kept"}
    assert len(read_parquet("results/faces/00000.parquet")) == 0


# -- embedded run: audit against the synthface truth -----------------------------------------------------
def test_synthface_audit_and_report(collected):
    cfg = tiny_config(synthface={"num_shards": 1}, paper={"sections": ["faces"]})
    assert run_stage("faces", cfg, "00000") == 0
    assert run_stage("report_faces", cfg) == 0
    m = json.loads(Path("results/reports/faces/metrics.json").read_text())
    assert m["recall"] >= 0.95 and m["precision"] >= 0.95, m
    assert m["landmark_error_px"] < 5 and m["landmark_nme"] < 0.15
    assert m["truth_faces_below_floor"] >= 1  # tiny faces exist and are recorded as too small
    assert m["face_reasons"].get("too_small", 0) >= 1
    assert m["images"] == cfg["synthface"]["images_per_shard"]
    assert m["images"] >= m["images_with_faces"] >= m["images_kept"] > 0
    t = json.loads(Path("results/reports/faces/tables/faces_funnel.json").read_text())
    assert len(t["quoted_rows"]) == 3 and t["rows"][t["quoted_rows"][0]][1] == 50_000_000
    assert Path("results/reports/faces/figures/funnel.png").stat().st_size > 0
    assert Path("results/reports/faces/figures/aligned_examples.png").exists()
    assert run_stage("paper", cfg) == 0 and Path("paper/build/paper.pdf").stat().st_size > 0


# -- real photos shipped inside insightface ---------------------------------------------------------------
def test_real_photos_are_found_and_aligned(workdir):
    photos = {p.stem: p.read_bytes() for p in sorted(INSIGHTFACE_IMAGES.iterdir())
              if p.suffix in (".jpg", ".png")}
    assert {"t1", "Tom_Hanks_54745", "mask_blue"} <= set(photos)
    write_collect_shard("00000", photos)
    cfg = tiny_config(align={"size": 112, "scale": 0.6})
    assert run_stage("faces", cfg, "00000") == 0
    faces = read_parquet("results/faces/00000.parquet")
    per_image = faces.groupby("image_key").size()
    assert per_image.get("00000_t1", 0) == 5  # six people; max_faces keeps the five best
    assert per_image.get("00000_Tom_Hanks_54745", 0) == 1
    assert not any(k.startswith("00000_mask") for k in per_image.index)  # face-mask textures, no face
    rec = read_parquet("results/faces/00000.records.parquet")
    t1 = rec[(rec.image_key == "00000_t1") & (rec.face >= 0)]
    assert (t1.reason == "too_many_faces").sum() == 1
    # the eyes of each aligned crop land on the template: re-detect them in the crop itself
    tmpl = template(112, 0.6)
    det = CenterFaceDetector()
    errors = []
    for s in iter_samples("results/faces/00000.tar"):
        crop = np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("RGB"))
        found = det.detect([crop], 0.2)[0]
        assert found, s["__key__"]
        eyes = found[0].landmarks[:2]
        errors.append(np.linalg.norm(eyes - tmpl[:2], axis=1) / 112)
        # the template's eyes are 0.19 of the crop apart; a semi-profile face in t1 is the worst at ~0.07
        assert errors[-1].max() < 0.09, (s["__key__"], eyes, tmpl[:2])
    assert len(errors) == 6 and np.mean(errors) < 0.03


def test_paper_overlay_validates():
    import yaml

    from facecaption.core import config as fc_config

    root = Path(__file__).resolve().parents[1]
    cfg = fc_config.load([root / "config.yaml", root / "config/laion-face.yaml"])
    f = cfg["faces"]
    assert f["detector"] == "insightface" and f["min_score"]["insightface"] == 0.98 and f["min_size"] == 128
    assert set(yaml.safe_load((root / "config/laion-face.yaml").read_text())) >= {"faces"}


def test_detector_failure_costs_only_that_image(tmp_path):
    from facecaption.faces import process

    class Flaky:
        name = "flaky"

        def detect(self, images, threshold):
            if any(im.shape[0] == 50 for im in images):
                raise RuntimeError("boom")
            return [[Face((10, 10, 60, 60), 0.9, np.array([[25, 30], [45, 30], [35, 40], [28, 50], [42, 50]],
                                                          np.float32))] for _ in images]

    cfg = tiny_config(faces={"batch_size": 3})
    ok = encode(Image.fromarray(face_image(size=96)))
    samples = [{"__key__": "a", "jpg": ok}, {"__key__": "b", "jpg": encode(Image.new("RGB", (60, 50)))},
               {"__key__": "c", "jpg": ok}]
    faces, rec = process(samples, cfg["faces"], cfg["align"], Flaky(), str(tmp_path / "x.tar"))
    img = rec[rec.face == -1].set_index("image_key")
    assert img.loc["b", "reason"].startswith("detect_error: RuntimeError: boom")
    assert list(faces.image_key) == ["a", "c"]


def test_corrupt_collect_tar_records_the_lost_images(workdir):
    write_collect_shard("00000", {f"i{i}": face_image(i, 96) for i in range(4)})
    data = Path("results/collect/00000.tar").read_bytes()
    Path("results/collect/00000.tar").write_bytes(data[: len(data) // 2])
    assert run_stage("faces", tiny_config(), "00000") == 0
    rec = read_parquet("results/faces/00000.records.parquet")
    img = rec[rec.face == -1].set_index("image_key")
    assert len(img) == 4
    assert (img.reason.str.startswith("missing_from_tar")).sum() >= 1
    assert (img.status == "kept").sum() >= 1


def test_optout_is_honoured_again_when_filtering(collected):
    """An opt-out entry added after the download still removes the image (and its faces) at the faces stage."""
    images = read_parquet("results/collect/00000.parquet")
    blocked = images.url.iloc[0]
    cfg = tiny_config(optout={"entries": [blocked]})
    assert run_stage("faces", cfg, "00000") == 0
    records = read_parquet("results/faces/00000.records.parquet")
    faces = read_parquet("results/faces/00000.parquet")
    key = images.key.iloc[0]
    assert records[(records.image_key == key) & (records.face == -1)].reason.tolist() == ["opted_out"]
    assert key not in set(faces.image_key)
    assert set(records[records.face == -1].image_key) == set(images.key)  # every image has its record
