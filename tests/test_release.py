"""The release source: a FaceCaption-15M-style parquet (one row per face: URL, box, alt-text, face caption) over
synthface images served on 127.0.0.1, with duplicate URLs holding several faces, a dead link, boxes outside the
image, an image replaced by another of a different size, empty captions, malformed boxes, an opted-out URL and a
box with no face in it. Every release row gets one outcome, every good face is kept once, each URL is fetched
once; a missing column stops before any job with one line."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_stage, tiny_config

from facecaption.collect.plan import shard_ids
from facecaption.collect.release import url_shard
from facecaption.core.config import SourceError
from facecaption.core.reasons import category
from facecaption.core.shards import encode_jpeg, iter_samples, read_parquet
from facecaption.synthface.render import render_image, sample_identity


def render(n: int, n_faces: int, size: int = 256) -> tuple[bytes, list[tuple[float, ...]]]:
    rng = np.random.default_rng(7000 + n)
    ids = [sample_identity(np.random.default_rng(9000 + 10 * n + j)) for j in range(n_faces)]
    scale = (0.42, 0.5) if n_faces == 1 else (0.28, 0.34)
    img, faces = render_image(rng, size=size, n_faces=n_faces, face_scale=scale, identities=ids, roll_range=5.0)
    return encode_jpeg(img, 92), [tuple(float(v) for v in f["box"]) for f in faces]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.hits[self.path] += 1
        body = self.server.files.get(self.path)
        code, ctype = (200, "image/jpeg") if body is not None else (404, "text/plain")
        body = body if body is not None else b"not found"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits: Counter = Counter()
        self.files: dict[str, bytes] = {}

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_port}{path}"


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _away(face, size=256, side=56):
    """A box in the corner farthest from ``face``: background only."""
    cx, cy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
    x0 = 4.0 if cx > size / 2 else size - side - 4.0
    y0 = 4.0 if cy > size / 2 else size - side - 4.0
    return (x0, y0, x0 + side, y0 + side)


def build_release(srv: Server, folder: Path) -> tuple[Path, pd.DataFrame]:
    """The release parquet (rows shuffled, so one URL's rows are apart) and each row's expected outcome."""
    rows = []  # (path, box, caption, width, height, expected)

    def add(path, box, caption, expected, size=(256, 256)):
        rows.append({"path": path, "face_bbox": list(box) if isinstance(box, tuple) else box, "face_caption": caption,
                     "width": size[0], "height": size[1], "expected": expected})

    for n, n_faces in ((0, 2), (1, 1), (2, 1), (3, 1), (4, 1), (5, 2), (6, 1), (7, 1), (8, 3)):
        jpg, faces = render(n, n_faces)
        path = f"/img/{n}.jpg"
        if n == 3:  # a dead link: two faces on it
            add(path, faces[0], "a dead face", "http_error")
            add(path, (1.0, 1.0, 60.0, 60.0), "another dead face", "http_error")
            continue
        if n == 4:  # the URL now serves another picture of another size
            srv.files[path], _ = render(104, 1, size=200)
            add(path, faces[0], "a face that changed", "image_changed")
            continue
        srv.files[path] = jpg
        if n == 6:  # opted out: never requested
            add(path, faces[0], "an opted-out face", "opted_out")
            continue
        for j, box in enumerate(faces):
            caption = "" if (n == 5 and j == 0) else f"face {j} of image {n}"
            add(path, box, caption, "empty_caption" if not caption else "kept")
        if n == 1:
            add(path, [float("nan"), 1.0, 2.0, 3.0], "a broken box", "malformed_box")
            add(path, [1.0, 2.0], "a short box", "malformed_box")
            add(path, (90.0, 90.0, 40.0, 120.0), "an inverted box", "malformed_box")
        if n == 2:
            add(path, (300.0, 310.0, 380.0, 400.0), "a box past the edge", "box_outside_image")
        if n == 7:
            add(path, _away(faces[0]), "a box over the background", "kept_box")
    order = np.random.default_rng(0).permutation(len(rows))
    df = pd.DataFrame([rows[i] for i in order]).reset_index(drop=True)
    df["url"] = [srv.url(p) for p in df["path"]]
    df["laion_caption"] = [f"alt text of {p}" for p in df["path"]]
    path = folder / "FaceCaption-v1.parquet"
    df[["url", "face_bbox", "laion_caption", "face_caption", "width", "height"]].to_parquet(path, row_group_size=5)
    return path, df


def release_config(srv: Server, release: Path, **over) -> dict:
    return tiny_config(source="release",
                       release={"input": str(release), "per_shard": 8, "width_column": "width", "height_column": "height",
                                **over},
                       urls={"chunk": 4, "threads": 4, "timeout": 2, "total_timeout": 10},
                       optout={"entries": [srv.url("/img/6.jpg")]})


def test_release_rows_each_get_one_outcome(workdir, server):
    release, df = build_release(server, workdir)
    cfg = release_config(server, release)
    shards = shard_ids(cfg)
    assert len(shards) == 3
    for sh in shards:
        assert run_stage("collect", cfg, sh) == 0
        assert run_stage("faces", cfg, sh) == 0

    # each URL fetched once (the opted-out one never), whatever number of faces it holds
    served = {p for p in df["path"] if p != "/img/6.jpg"}
    assert {p: server.hits[p] for p in served} == {p: 1 for p in served}
    assert server.hits["/img/6.jpg"] == 0

    # the collect parquet: one row per distinct URL, its released faces carried along, each URL in one shard
    col = read_parquet([f"results/collect/{sh}.parquet" for sh in shards])
    assert sorted(col["url"]) == sorted(df["url"].unique())
    assert (col["source"] == "release").all()
    assert col["release_rows"].sum() == len(df)
    for rec in col.itertuples():
        faces = json.loads(rec.release_faces)
        assert [f["row"] for f in faces] == sorted(df.index[df["url"] == rec.url])
        assert rec.key.startswith(shards[int(url_shard([rec.url], len(shards))[0])])
    sample = next(s for sh in shards for s in iter_samples(f"results/collect/{sh}.tar"))
    assert "release_faces" in json.loads(sample["json"])

    # every release row has exactly one outcome, the expected one
    rec = read_parquet([f"results/faces/{sh}.records.parquet" for sh in shards])
    rel = rec[rec["release_row"].notna()]
    assert sorted(rel["release_row"].astype(int)) == list(range(len(df)))
    got = {int(r.release_row): ("kept" if r.status == "kept" else category(r.reason)) for r in rel.itertuples()}
    want = {i: ("kept" if e == "kept_box" else e) for i, e in enumerate(df["expected"])}
    assert got == want, {i: (got[i], want[i]) for i in got if got[i] != want[i]}

    # every good face is kept exactly once, with its released caption, URL and the sha256 of the bytes served
    faces = read_parquet([f"results/faces/{sh}.parquet" for sh in shards])
    assert faces["key"].is_unique and faces["release_row"].is_unique
    good = df.index[df["expected"].isin(["kept", "kept_box"])]
    assert sorted(faces["release_row"].astype(int)) == sorted(good)
    for f in faces.itertuples():
        row = df.loc[int(f.release_row)]
        assert f.released_caption == row.face_caption and f.url == row.url
        assert f.alt_text == f"alt text of {row.path}"
        assert f.sha256 == hashlib.sha256(server.files[row.path]).hexdigest()
        assert len(f.matrix) == 6 and np.isfinite(f.matrix).all()
        assert f.aligned_by in ("landmarks", "box")
    by = faces.set_index(faces["release_row"].astype(int))["aligned_by"]
    assert by[int(df.index[df["expected"] == "kept_box"][0])] == "box"
    true_faces = df.index[df["expected"] == "kept"]
    assert (by[true_faces] == "landmarks").mean() >= 0.8, by[true_faces].tolist()
    crops = {s["__key__"] for sh in shards for s in iter_samples(f"results/faces/{sh}.tar")}
    assert crops == set(faces["key"])

    # the report: the share of the release rebuilt and the manifest
    assert run_stage("report_faces", cfg) == 0
    metrics = json.loads(Path("results/reports/faces/metrics.json").read_text())
    fun = metrics["release"]["funnel"]
    n_urls = df["url"].nunique()
    assert fun["rows"] == len(df) and fun["urls"] == n_urls and fun["rows_kept"] == len(good)
    assert fun["urls_alive"] == n_urls - 2  # the dead link and the opted-out URL
    assert fun["rows"] >= fun["rows_alive"] >= fun["rows_box_matches"] >= fun["rows_kept"]
    assert fun["rows_box_matches"] == len(good) + 1  # + the empty caption
    assert metrics["accounting_conserved"], metrics["accounting_violations"]
    man = pd.read_parquet("results/reports/faces/release_manifest.parquet")
    assert sorted(man["release_row"]) == sorted(good) and man["sha256"].notna().all()
    assert set(man["align_size"]) == {cfg["align"]["size"]}
    assert Path("results/reports/faces/tables/release_funnel.json").exists()

    # box_only: drop turns the background box into no_face_in_box; everything else stays
    cfg = release_config(server, release, box_only="drop")
    for sh in shards:
        assert run_stage("faces", cfg, sh) == 0
    rec = read_parquet([f"results/faces/{sh}.records.parquet" for sh in shards])
    rel = rec[rec["release_row"].notna()]
    got = {int(r.release_row): ("kept" if r.status == "kept" else category(r.reason)) for r in rel.itertuples()}
    want = {i: ("no_face_in_box" if e == "kept_box" else e) for i, e in enumerate(df["expected"])}
    assert {i: got[i] for i in got if got[i] != want[i] and got[i] != "no_face_in_box"} == {}
    assert got[int(df.index[df["expected"] == "kept_box"][0])] == "no_face_in_box"


def test_missing_column_stops_with_one_line(workdir, capsys):
    pd.DataFrame({"url": ["http://127.0.0.1:1/a.jpg"], "laion_caption": ["x"], "face_caption": ["y"]}).to_parquet(
        workdir / "release.parquet")
    cfg = tiny_config(source="release", release={"input": str(workdir / "release.parquet")})
    with pytest.raises(SourceError) as exc:
        shard_ids(cfg)
    msg = str(exc.value)
    assert msg == (f"config error: release.box_column: column 'face_bbox' is not in {workdir / 'release.parquet'}; "
                   "columns found: url, laion_caption, face_caption")
    assert run_stage("collect", cfg, "00000") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == msg


@pytest.mark.slow
def test_release_through_snakemake(tmp_path, server):
    """collect and faces of the release source as Snakemake runs them; a missing column stops the DAG before any
    job, with one line."""
    from support.repo import TEST_CONFIG, copy_repo, snakemake

    repo = copy_repo(tmp_path / "repo")
    release, df = build_release(server, tmp_path)
    cfg = {"source": "release", "release": {"input": str(release), "per_shard": 8, "width_column": "width",
                                            "height_column": "height"},
           "urls": {"chunk": 4, "threads": 4, "timeout": 2, "total_timeout": 10},
           "optout": {"entries": [server.url("/img/6.jpg")]}}
    (repo / "release.yaml").write_text(yaml.safe_dump(cfg))
    targets = [f"results/faces/{sh}.records.parquet" for sh in ("00000", "00001", "00002")]
    snakemake([*targets, "--cores", "2", *TEST_CONFIG, "release.yaml"], repo)
    rec = read_parquet([repo / t for t in targets])
    rel = rec[rec["release_row"].notna()]
    assert sorted(rel["release_row"].astype(int)) == list(range(len(df)))
    assert int((rel["status"] == "kept").sum()) == int(df["expected"].isin(["kept", "kept_box"]).sum())
    assert {p: server.hits[p] for p in server.files if p != "/img/6.jpg"} == {p: 1 for p in server.files if p != "/img/6.jpg"}

    bad = tmp_path / "bad.parquet"
    df[["url", "face_bbox", "face_caption"]].to_parquet(bad)
    cfg["release"]["input"] = str(bad)
    (repo / "release.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(["-n", *TEST_CONFIG, "release.yaml"], repo, check=False)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if "release.alt_text_column" in ln]
    assert lines == [f"config error: release.alt_text_column: column 'laion_caption' is not in {bad}; "
                     "columns found: url, face_bbox, face_caption"], proc.stderr[-2000:]


def test_box_parsing():
    from facecaption.faces import boxes

    assert boxes.parse_box([1, 2, 3, 4]) == (1.0, 2.0, 3.0, 4.0)
    assert boxes.parse_box("[1, 2, 3, 4]") == (1.0, 2.0, 3.0, 4.0)
    assert boxes.parse_box("1,2,3,4") == (1.0, 2.0, 3.0, 4.0)
    assert boxes.parse_box(np.array([1, 2, 2, 2]), "xywh") == (1.0, 2.0, 3.0, 4.0)
    for bad in (None, [1, 2, 3], [1, 2, 0, 4], "x", [1, 2, float("inf"), 4], [1, 2, "a", 4]):
        assert boxes.parse_box(bad) is None
    assert boxes.share_inside((-10, 0, 10, 10), 100, 100) == pytest.approx(0.5)


def _caption(t) -> str:
    """A released-style face caption from the synthface truth: what the picture shows."""
    words = ["a smiling" if t.get("Smiling") else "a", "man" if t.get("Male") else "woman"]
    for attr, text in (("Eyeglasses", "wearing eyeglasses"), ("Black_Hair", "with black hair"),
                       ("Blond_Hair", "with blond hair"), ("Bald", "who is bald"), ("Wearing_Hat", "wearing a hat"),
                       ("Mustache", "with a mustache"), ("Young", "who looks young")):
        if t.get(attr):
            words.append(text)
    return " ".join(words)


@pytest.mark.slow
def test_release_to_flip_on_released_captions(tmp_path, server, monkeypatch):
    """release source → faces → attributes → captions → FLIP trained on the released captions
    (train.text: released) → evaluation: held-out retrieval beats random weights."""
    import yaml as _yaml
    from support.repo import copy_repo, snakemake

    from facecaption.core import config as fc_config

    flip = _yaml.safe_load((Path(__file__).parent / "config.flip.yaml").read_text())
    render_dir = tmp_path / "render"
    render_dir.mkdir()
    monkeypatch.chdir(render_dir)
    cfg = fc_config.validate(fc_config.deep_merge(_yaml.safe_load((Path(__file__).parents[1] / "config.yaml").read_text()),
                                                  flip))
    rows = []
    for sh in shard_ids(cfg):
        assert run_stage("collect", cfg, sh) == 0
        truth = read_parquet(f"results/collect/{sh}.truth.parquet")
        for s in iter_samples(f"results/collect/{sh}.tar"):
            server.files[f"/img/{s['__key__']}.jpg"] = s["jpg"]
            for t in truth[truth["key"] == s["__key__"]].to_dict("records"):
                rows.append({"url": server.url(f"/img/{s['__key__']}.jpg"), "face_bbox": [t["x0"], t["y0"], t["x1"], t["y1"]],
                             "laion_caption": s["txt"].decode(), "face_caption": _caption(t)})
    release = tmp_path / "FaceCaption-v1.parquet"
    pd.DataFrame(rows).to_parquet(release)
    repo = copy_repo(tmp_path / "repo")
    overlay = {"source": "release", "release": {"input": str(release), "per_shard": -(-len(rows) // 5)},
               "urls": {"chunk": 50, "threads": 8, "timeout": 5, "total_timeout": 20}, "train": {"text": "released"}}
    (repo / "release.yaml").write_text(yaml.safe_dump(overlay))
    snakemake(["results/reports/evaluate", "--cores", "2", "--configfile", "tests/config.flip.yaml", "release.yaml"], repo)
    m = json.loads((repo / "results/reports/evaluate/metrics.json").read_text())
    assert m["retrieval_held_out"] and m["acceptance"]["retrieval_beats_random"], m["acceptance"]
    assert all(n == 1 for n in server.hits.values())
