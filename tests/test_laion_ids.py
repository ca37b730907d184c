"""LAION-Face IDs -> URL parts (facecaption.collect.laion_ids): the join, its accounting, resumption, bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT

from facecaption.cli import main
from facecaption.collect import laion_ids as L
from facecaption.collect import url_inputs
from facecaption.core import config as fc_config

COLUMNS = ["sample_id", "url", "caption", "width", "height", "nsfw", "license", "similarity", "meta_row"]
# metadata parts: 0 holds 0..599, 1 holds 1000..1399 plus 42 again (a duplicate on the metadata side), 2 holds
# 2000..2299 with a null ID and float IDs (as some LAION dumps store them)
PART_IDS = {0: list(range(600)), 1: [*range(1000, 1400), 42], 2: [float(i) for i in range(2000, 2300)] + [None]}
# the ID list: per-part lists, as FaRL ships it; 7 and 1003 listed twice, 999 and 5000 in no metadata part
ID_LISTS = [[3, 7, 42, 599, 7, 999], [1000, 1003, 1003, 1399], [2000, 2150, 2299, 5000]]


def _part(ids: list) -> pa.Table:
    n = len(ids)
    ints = [int(i) if i is not None else -1 for i in ids]
    return pa.table({
        "SAMPLE_ID": pa.array(ids, pa.float64() if any(isinstance(i, float) for i in ids) else pa.int64()),
        "URL": [f"http://img.example/{i}.jpg" for i in ints],
        "TEXT": [f"a photo number {i}" if i % 5 else None for i in ints],
        "HEIGHT": pa.array([100 + i % 7 for i in ints], pa.int32()),
        "WIDTH": pa.array([200 + i % 11 for i in ints], pa.int32()),
        "LICENSE": ["?"] * n,
        "NSFW": ["UNLIKELY"] * n,
        "similarity": np.linspace(0.3, 0.4, n),
    })


@pytest.fixture
def meta(tmp_path):
    folder = tmp_path / "laion400m-meta"
    folder.mkdir()
    for k, ids in PART_IDS.items():
        pq.write_table(_part(ids), folder / f"part-{k:05d}-5b54c5d5-c000.snappy.parquet", row_group_size=128)
    return folder


def _expected() -> pd.DataFrame:
    wanted = {i for lst in ID_LISTS for i in lst}
    frames = []
    for k, ids in PART_IDS.items():
        df = _part(ids).to_pandas()
        df["meta_row"] = np.arange(len(df))
        df["part"] = k
        frames.append(df[df["SAMPLE_ID"].isin(wanted)])
    df = pd.concat(frames, ignore_index=True)
    return df.rename(columns={"SAMPLE_ID": "sample_id", "URL": "url", "TEXT": "caption", "WIDTH": "width",
                              "HEIGHT": "height", "NSFW": "nsfw", "LICENSE": "license"})


def _write_ids(path, kind: str):
    flat = [i for lst in ID_LISTS for i in lst]
    if kind == "npy":
        np.save(path, np.array(flat, dtype=np.int64))
    elif kind == "txt":
        path.write_text("SAMPLE_ID\n" + "\n".join(map(str, flat)) + "\n")
    elif kind == "parquet":
        pq.write_table(pa.table({"SAMPLE_ID": pa.array(flat, pa.int64())}), path)
    elif kind == "pth":  # FaRL: torch.save of one list per LAION-400M part
        import torch

        torch.save([np.array(ID_LISTS[0], dtype=np.int64), ID_LISTS[1], torch.tensor(ID_LISTS[2])], path)
    return path


def _cfg(tmp_path, ids, meta, **over) -> dict:
    lcfg = fc_config.validate({"laion_ids": {"ids": str(ids), "metadata": str(meta), "out": str(tmp_path / "urls"),
                                             "summary": str(tmp_path / "summary.json"), **over}})["laion_ids"]
    return lcfg


def _read_out(folder) -> pd.DataFrame:
    files = sorted(folder.glob("*.parquet"))
    return pd.concat([pq.read_table(f).to_pandas().assign(part=i) for i, f in enumerate(files)], ignore_index=True)


@pytest.mark.parametrize("kind", ["npy", "txt", "parquet", "pth"])
def test_join_gives_exactly_the_listed_rows(tmp_path, meta, kind):
    ids = _write_ids(tmp_path / f"laion_face_ids.{kind}", kind)
    summary = L.join(_cfg(tmp_path, ids, meta, batch_size=1024))
    got = _read_out(tmp_path / "urls")
    want = _expected()
    assert list(got.columns[:-1]) == COLUMNS
    pd.testing.assert_frame_equal(got[[*COLUMNS, "part"]].reset_index(drop=True),
                                  want[[*COLUMNS, "part"]].reset_index(drop=True), check_dtype=False)
    assert got["sample_id"].dtype == np.int64 and got["meta_row"].dtype == np.int64
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    listed = sum(len(x) for x in ID_LISTS)
    unique = len({i for lst in ID_LISTS for i in lst})
    assert summary["ids_listed"] == listed and summary["ids_unique"] == unique
    assert summary["ids_duplicates"] == 2 and summary["ids_duplicate_examples"] == [7, 1003]
    assert summary["ids_unmatched"] == 2 and summary["ids_unmatched_examples"] == [999, 5000]
    assert summary["ids_matched"] == unique - 2
    assert summary["metadata_rows"] == sum(len(v) for v in PART_IDS.values())
    assert summary["metadata_rows_matched"] == len(want) == unique - 2 + 1  # 42 twice
    assert summary["metadata_rows_not_listed"] == summary["metadata_rows"] - len(want)
    assert summary["metadata_rows_without_id"] == 1
    assert summary["metadata_duplicate_rows"] == 1 and summary["metadata_duplicate_examples"] == [42]
    if kind == "pth":  # FaRL's per-part lists: the unmatched IDs per list point at the part that is missing
        assert [g["unmatched"] for g in summary["id_lists"]] == [1, 0, 1]
    else:
        assert "id_lists" not in summary


def test_rerun_skips_finished_parts_and_gives_the_same_bytes(tmp_path, meta, caplog):
    ids = _write_ids(tmp_path / "ids.npy", "npy")
    lcfg = _cfg(tmp_path, ids, meta, batch_size=1024)
    L.join(lcfg)
    files = sorted((tmp_path / "urls").glob("*.parquet")) + [tmp_path / "summary.json"]
    before = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}
    caplog.set_level("INFO")
    L.join(lcfg)
    assert caplog.text.count("skipped") == 3
    assert {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files[:-1]} == {f: before[f] for f in files[:-1]}
    assert files[-1].read_bytes() == before[files[-1]][0]
    # a part lost (or killed before its rename) is redone, to the same bytes; another batch size, the same bytes
    files[1].unlink()
    L.join({**lcfg, "batch_size": 4096})
    assert files[1].read_bytes() == before[files[1]][0]
    other = {**lcfg, "out": str(tmp_path / "urls2"), "summary": str(tmp_path / "s2.json"), "batch_size": 1500}
    L.join(other)
    assert [f.read_bytes() for f in sorted((tmp_path / "urls2").glob("*.parquet"))] == [before[f][0] for f in files[:-1]]
    # a changed ID list is a different fingerprint: every part is redone
    np.save(ids, np.array([3, 1000], dtype=np.int64))
    caplog.clear()
    summary = L.join(lcfg)
    assert "skipped" not in caplog.text and summary["metadata_rows_matched"] == 2
    assert not list((tmp_path / "urls").glob(".*.tmp-*"))  # no temporary files left
    assert len(list((tmp_path / "urls").glob(".ids-*.npz"))) == 1  # the ID set's cache: the current list's only


def test_the_url_source_reads_the_output(tmp_path, meta):
    ids = _write_ids(tmp_path / "ids.parquet", "parquet")
    summary = L.join(_cfg(tmp_path, ids, meta))
    ucfg = fc_config.validate({"source": "urls", "urls": {"input": str(tmp_path / "urls"), "url_column": "url",
                                                          "caption_column": "caption", "per_shard": 4}})["urls"]
    assert url_inputs.count_urls(ucfg) == summary["metadata_rows_matched"]
    df, kept = url_inputs.read_slice(ucfg, 0, 4)
    want = _expected().head(4)
    assert df["url"].tolist() == want["url"].tolist() and df["caption"].tolist() == want["caption"].tolist()
    assert "sample_id" in kept and "src_width" in kept  # width clashes with the collect parquet's own: prefixed


def test_missing_column_is_one_line(tmp_path, meta, capsys):
    ids = _write_ids(tmp_path / "ids.npy", "npy")
    over = tmp_path / "over.yaml"
    over.write_text(json.dumps({"laion_ids": {"summary": str(tmp_path / "s.json"), "columns": {"url": "url"}}}))
    argv = ["laion-face-urls", "--config", str(ROOT / "config.yaml"), "--config", str(over), "--ids", str(ids),
            "--metadata", str(meta), "--out", str(tmp_path / "urls")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("laion-face-urls: column 'url' (laion_ids.columns.url) is not in ")
    assert "part-00000" in err[0] and "columns: SAMPLE_ID, URL, TEXT, HEIGHT, WIDTH" in err[0]


@pytest.mark.parametrize("case, expect", [
    ("no_ids", "config error: laion_ids.ids: {tmp}/nope.pth does not exist; get LAION-Face's ID list laion_face_ids.pth"),
    ("no_meta", "config error: laion_ids.metadata[0]: {tmp}/nowhere does not exist; get the LAION-400M metadata parts"),
    ("bad_pth", "laion-face-urls: cannot read {tmp}/bad.pth as a list of LAION sample IDs (laion_ids.ids): "),
    ("bad_txt", "laion-face-urls: cannot read {tmp}/bad.txt as a list of LAION sample IDs (laion_ids.ids): "),
])
def test_bad_inputs_are_one_line(tmp_path, meta, capsys, case, expect):
    ids, metadata = _write_ids(tmp_path / "ids.npy", "npy"), meta
    if case == "no_ids":
        ids = tmp_path / "nope.pth"
    elif case == "no_meta":
        metadata = tmp_path / "nowhere"
    elif case == "bad_pth":
        ids = tmp_path / "bad.pth"
        ids.write_bytes(b"not a torch file")
    elif case == "bad_txt":
        ids = tmp_path / "bad.txt"
        ids.write_text("1\n2\nthree\n")
    over = tmp_path / "over.yaml"
    over.write_text(json.dumps({"laion_ids": {"summary": str(tmp_path / "s.json"), "out": str(tmp_path / "urls")}}))
    assert main(["laion-face-urls", "--config", str(ROOT / "config.yaml"), "--config", str(over), "--ids", str(ids),
                 "--metadata", str(metadata)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expect.format(tmp=tmp_path)), err
    assert "Traceback" not in err[0]


def test_cli_subprocess(tmp_path, meta):
    """The installed entry point, as the rule runs it: --cfg with the laion_ids section."""
    ids = _write_ids(tmp_path / "ids.txt", "txt")
    lcfg = {"ids": str(ids), "metadata": [str(meta / "part-00000-5b54c5d5-c000.snappy.parquet"), str(meta / "part-0000[12]*")],
            "out": str(tmp_path / "urls"), "summary": str(tmp_path / "summary.json")}
    key, runtime = L.rule_keys(fc_config.validate({"laion_ids": lcfg})["laion_ids"])
    proc = subprocess.run([sys.executable, "-m", "facecaption", "laion-face-urls", "--cfg", key, "--runtime", runtime],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "laion-face-urls: 11 URLs from 3 metadata parts" in proc.stderr  # 10 IDs, one of them in two parts
    assert json.loads((tmp_path / "summary.json").read_text())["metadata_rows_matched"] == 11
    assert "batch_size" not in json.loads(key)["laion_ids"] and "batch_size" in json.loads(runtime)["laion_ids"]
