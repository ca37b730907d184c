"""Folder source: a folder tree of images (+ optional caption/attribute CSV) packed into collect shards in a
deterministic order; broken files get a status, not a crash; config errors name the key and the path."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from conftest import run_stage, tiny_config
from PIL import Image

from facecaption.collect import folder as F
from facecaption.collect.plan import shard_ids
from facecaption.core.shards import iter_samples, read_parquet


def _img(path: Path, n: int, fmt: str = "JPEG", size=(48, 36), exif_rotate: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, ((n * 40) % 256, (n * 70) % 256, 128))
    kw = {}
    if exif_rotate:
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90° on display
        kw["exif"] = exif
    im.save(path, format=fmt, **kw)


def make_tree(root: Path) -> None:
    _img(root / "b" / "z.jpg", 1)
    _img(root / "b" / "a.JPG", 2)
    _img(root / "a.png", 3, "PNG")
    _img(root / "c" / "d" / "deep.jpeg", 4)
    _img(root / "c" / "rot.jpg", 5, size=(60, 20), exif_rotate=True)
    _img(root / "big.png", 6, "PNG", size=(1200, 1000))
    (root / "c" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    (root / "skip").mkdir()
    _img(root / "skip" / "x.jpg", 7)


CSV = "image,caption,Smiling,Male\nb/z.jpg,a man,1,1\na.JPG,a woman,0,0\ndeep,deep caption,1,0\nunknown.jpg,nobody,0,0\n"


def folder_cfg(root: Path, **over) -> dict:
    (root.parent / "captions.csv").write_text(CSV)
    return tiny_config(source="folder", folder={"root": str(root), "per_shard": 3, "csv": str(root.parent / "captions.csv"),
                                                "exclude": ["skip/**"], "max_pixels": 1_000_000, **over})


def test_folder_source(workdir):
    root = workdir / "photos"
    make_tree(root)
    cfg = folder_cfg(root)
    expected = ["a.png", "b/a.JPG", "b/z.jpg", "big.png", "c/broken.jpg", "c/d/deep.jpeg", "c/rot.jpg"]
    assert F.list_images(cfg["folder"]) == expected
    shards = shard_ids(cfg)
    assert shards == ["00000", "00001", "00002"]
    for sh in shards:
        assert run_stage("collect", cfg, sh) == 0
    table = read_parquet([f"results/collect/{sh}.parquet" for sh in shards])
    assert list(table.path) == expected
    assert list(table.key) == ["00000_00000", "00000_00001", "00000_00002", "00001_00000", "00001_00001",
                               "00001_00002", "00002_00000"]
    status = dict(zip(table.path, table.status))
    assert status["c/broken.jpg"] == "decode_error" and status["big.png"] == "too_many_pixels"
    assert sum(v == "success" for v in status.values()) == 5
    cap = dict(zip(table.path, table.caption))
    assert cap["b/z.jpg"] == "a man" and cap["b/a.JPG"] == "a woman" and cap["c/d/deep.jpeg"] == "deep caption"
    assert cap["a.png"] == ""
    assert table.set_index("path").loc["b/z.jpg", "Smiling"] == 1
    samples = {s["__key__"]: s for sh in shards for s in iter_samples(f"results/collect/{sh}.tar")}
    good = table[table.status == "success"]
    assert sorted(samples) == sorted(good.key)
    for _, row in good.iterrows():
        s = samples[row.key]
        im = Image.open(io.BytesIO(s["jpg"]))
        assert im.format == "JPEG" and im.size == (row.width, row.height)
        meta = json.loads(s["json"])
        assert meta["source"] == "folder" and meta["url"] == f"folder://{row.path}"
        assert s["txt"].decode() == row.caption
    # JPEGs kept byte for byte; the EXIF-rotated one is turned upright
    z = table.set_index("path").loc["b/z.jpg", "key"]
    assert samples[z]["jpg"] == (root / "b/z.jpg").read_bytes()
    assert table.set_index("path").loc["c/rot.jpg", ["width", "height"]].tolist() == [20, 60]
    # deterministic: a second run gives the same bytes
    first = Path("results/collect/00000.tar").read_bytes()
    assert run_stage("collect", cfg, "00000") == 0
    assert Path("results/collect/00000.tar").read_bytes() == first
    # the corpus report's funnel counts files → decodable → kept
    assert run_stage("report_corpus", cfg) == 0
    fun = json.loads(Path("results/reports/corpus/metrics.json").read_text())["collect_funnel"]
    assert fun["urls"] == 7 and fun["downloaded"] == 7 and fun["decodable"] == 5 and fun["kept"] == 5


def test_folder_without_csv_and_optout(workdir):
    root = workdir / "photos"
    make_tree(root)
    cfg = tiny_config(source="folder", folder={"root": str(root), "patterns": ["**/*.jpg"], "per_shard": 100},
                      optout={"entries": ["folder://b/z.jpg"]})
    assert F.list_images(cfg["folder"]) == ["b/a.JPG", "b/z.jpg", "c/broken.jpg", "c/rot.jpg", "skip/x.jpg"]
    assert run_stage("collect", cfg, "00000") == 0
    table = read_parquet("results/collect/00000.parquet")
    assert dict(zip(table.path, table.status))["b/z.jpg"] == "opted_out"
    assert (table.caption == "").all()


def test_folder_config_errors(workdir, capsys):
    cfg = tiny_config(source="folder", folder={"root": str(workdir / "absent")})
    assert run_stage("collect", cfg, "00000") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"config error: folder.root: {workdir / 'absent'} does not exist"
    root = workdir / "photos"
    make_tree(root)
    cfg = folder_cfg(root, key_column="file")
    assert run_stage("collect", cfg, "00000") == 2
    assert "config error: folder.key_column: column 'file' is not in" in capsys.readouterr().err
    cfg = folder_cfg(root, csv=str(workdir / "nope.csv"))
    assert run_stage("collect", cfg, "00000") == 2
    assert f"config error: folder.csv: {workdir / 'nope.csv'} does not exist" in capsys.readouterr().err


def test_glob_and_symlinks(workdir):
    assert F.glob_regex("**/*.jpg").match("a.jpg") and F.glob_regex("**/*.jpg").match("x/y/a.JPG")
    assert not F.glob_regex("*.jpg").match("x/a.jpg")
    root = workdir / "photos"
    _img(root / "in.jpg", 1)
    outside = workdir / "outside"
    _img(outside / "secret.jpg", 2)
    os.symlink(outside, root / "link")
    assert F.list_images({"root": str(root), "patterns": ["**/*.jpg"]}) == ["in.jpg"]


def test_sixteen_bit_gray_png_keeps_its_face(workdir):
    """A 16-bit grayscale PNG of a face becomes the same picture in 8 bits (not an almost white JPEG), and
    the faces stage finds and keeps its face; its 8-bit twin is the control."""
    import numpy as np

    from facecaption.synthface.render import render_image

    rgb, truth = render_image(np.random.default_rng(3), size=160, n_faces=1, face_scale=(0.5, 0.55))
    assert len(truth) == 1
    gray8 = np.asarray(Image.fromarray(rgb).convert("L"))
    root = workdir / "photos"
    root.mkdir()
    Image.fromarray(gray8.astype(np.uint16) * 257).save(root / "face16.png")  # 0..65535
    Image.fromarray(gray8).save(root / "face8.png")
    assert Image.open(root / "face16.png").mode == "I;16"
    cfg = tiny_config(source="folder", folder={"root": str(root), "patterns": ["*.png"], "per_shard": 10})
    assert run_stage("collect", cfg, "00000") == 0
    table = read_parquet("results/collect/00000.parquet").set_index("path")
    assert list(table.status) == ["success", "success"]
    samples = {s["__key__"]: s for s in iter_samples("results/collect/00000.tar")}
    for name in ("face16.png", "face8.png"):
        got = np.asarray(Image.open(io.BytesIO(samples[table.loc[name, "key"]]["jpg"])).convert("L"), np.int32)
        err = np.abs(got - gray8.astype(np.int32))
        assert err.mean() < 1.5 and err.max() <= 24, (name, err.mean(), err.max())  # JPEG q95 only
    assert run_stage("faces", cfg, "00000") == 0
    rec = read_parquet("results/faces/00000.records.parquet")
    img = rec[rec.face == -1].set_index("image_key")
    for name in ("face16.png", "face8.png"):
        assert img.loc[table.loc[name, "key"], "status"] == "kept", (name, img.loc[table.loc[name, "key"], "reason"])
    faces = read_parquet("results/faces/00000.parquet")
    assert sorted(faces.image_key) == sorted(table.key)


def test_unreadable_file_gives_the_same_bytes_twice(workdir, monkeypatch):
    """A folder holding files that do not decode, collected twice into two folders: byte-identical shards, and
    no memory address (PIL's ``<_io.BytesIO object at 0x7f…>``) in the error messages."""
    root = workdir / "photos"
    _img(root / "good.jpg", 1)
    (root / "garbage.jpg").write_bytes(b"this is not an image at all\x00\x01\x02" * 8)
    (root / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    cfg = tiny_config(source="folder", folder={"root": str(root), "per_shard": 10})
    runs, held = [], []
    for name in ("first", "second"):
        run_dir = workdir / name
        run_dir.mkdir()
        monkeypatch.chdir(run_dir)
        held.extend(io.BytesIO() for _ in range(64))  # the heap differs between the runs, as between two jobs
        assert run_stage("collect", cfg, "00000") == 0
        runs.append({ext: (run_dir / f"results/collect/00000.{ext}").read_bytes()
                     for ext in ("tar", "parquet", "truth.parquet")})
    table = read_parquet(workdir / "first/results/collect/00000.parquet").set_index("path")
    assert dict(table.status) == {"garbage.jpg": "decode_error", "good.jpg": "success", "truncated.png": "decode_error"}
    for msg in table.loc[["garbage.jpg", "truncated.png"], "error_message"]:
        assert msg and "0x" not in msg and " at " not in msg, msg
    assert "UnidentifiedImageError: cannot identify image file" in table.loc["garbage.jpg", "error_message"]
    assert runs[0] == runs[1]
