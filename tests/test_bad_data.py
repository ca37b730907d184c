"""Bad data end to end (issue 11): a corpus seeded with every bad-input kind runs to the paper, every injected
record is rejected with its reason, the record accounting adds up per stage, and no good record is lost.

The fault run is the tiny overlay plus ``synthface.faults`` (facecaption.collect.faults) enabling every kind;
it is compared with a clean run of the same overlay up to the faces stage.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from support.repo import TEST_CONFIG, copy_repo, snakemake

from facecaption import workflow as W
from facecaption.collect.faults import COUNTS, plan
from facecaption.faces import accounting
from facecaption.faces.decode import category

pytestmark = pytest.mark.slow

N_SHARDS, PER_SHARD, SEED = 2, 40, 0  # tests/config.test.yaml
CORRUPT_SHARD = "00001"
FAULTS = {**{kind: 1 for kind in COUNTS}, "corrupt_tar_shard": CORRUPT_SHARD}
SHARDS = [f"{i:05d}" for i in range(N_SHARDS)]
# the reason category each injected kind must be rejected with by the faces stage
EXPECTED = {"truncated_jpeg": "corrupt_image", "zero_byte": "empty_file", "not_image": "not_an_image",
            "corrupt_tar_member": "corrupt_tar", "duplicate_key": "duplicate_key"}
BAD_IMAGE = ("truncated_jpeg", "zero_byte", "not_image", "corrupt_tar_member")


def _injected() -> dict[str, str]:
    """{image key: fault kind} over all shards, as the injector plans them."""
    return {f"{sh}_{idx:05d}": kind for sh in SHARDS for idx, kind in plan(FAULTS, SEED, sh, PER_SHARD).items()}


def _records(repo) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(repo / f"results/faces/{sh}.records.parquet") for sh in SHARDS],
                     ignore_index=True)


def _account(repo) -> dict[str, accounting.StageCount]:
    """The record accounting of ``repo``'s artifacts: report_faces's named inputs, under ``repo``."""
    io = W.stage_io("report_faces", {}, SHARDS)
    kinds = ("records", "face_records", "faces", "attributes", "captions")
    named = [[str(repo / p) for p in io.many(k)] for k in kinds]
    return accounting.account(accounting.shard_paths(*named))


def _decoded_images(records: pd.DataFrame) -> set[str]:
    """Image keys that reached face detection (first occurrences, decoded)."""
    img = records[records.face == -1]
    lost = {"empty_file", "not_an_image", "decompression_bomb", "corrupt_image", "image_too_small",
            "not_collected", "missing_from_tar", "missing_image", "corrupt_tar", "duplicate_key", "opted_out"}
    return set(img.loc[~img.reason.fillna("").map(category).isin(lost), "image_key"])


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("bad") / "repo")
    # the sections fed by the stages that see bad records (train/evaluate/quality/cost need the full chain)
    overlay = {"synthface": {"faults": FAULTS}, "paper": {"sections": ["corpus", "faces", "attributes", "captions"]}}
    (repo / "tests/config.faults.yaml").write_text(yaml.safe_dump(overlay))
    snakemake(["--cores", "2", *TEST_CONFIG, "tests/config.faults.yaml"], repo)
    return repo


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The same overlay without faults, up to the faces stage (targets go before --configfile)."""
    repo = copy_repo(tmp_path_factory.mktemp("clean") / "repo")
    targets = [f"results/faces/{sh}.{kind}" for sh in SHARDS for kind in ("parquet", "records.parquet")]
    snakemake(["--cores", "2", *targets, *TEST_CONFIG], repo)
    return repo


def test_plan_hits_every_kind_once_per_shard():
    kinds = list(_injected().values())
    for kind in COUNTS:
        assert kinds.count(kind) == N_SHARDS, kind
    assert kinds.count("corrupt_tar_member") == 1


def test_the_paper_is_built(faulty):
    pdf = faulty / "paper/build/paper.pdf"
    assert pdf.exists() and pdf.read_bytes().startswith(b"%PDF")
    table = json.loads((faulty / "results/reports/faces/tables/faces_accounting.json").read_text())
    assert [r[0] for r in table["rows"]] == list(accounting.STAGES)


def test_the_collect_parquet_describes_what_was_written(faulty):
    injected = _injected()
    for sh in SHARDS:
        col = pd.read_parquet(faulty / f"results/collect/{sh}.parquet")
        assert (col.status == "success").all()
        dups = [k for k, kind in injected.items() if kind == "duplicate_key" and k.startswith(sh)]
        assert sorted(col.key[col.key.duplicated()]) == dups
        assert len(col) == PER_SHARD + len(dups)
        truth = pd.read_parquet(faulty / f"results/collect/{sh}.truth.parquet")
        broken = {k for k, kind in injected.items() if kind in BAD_IMAGE}
        assert not broken & set(truth.key)
        empty = [k for k, kind in injected.items() if kind == "empty_caption" and k.startswith(sh)]
        assert col.set_index("key").caption.drop_duplicates().reindex(empty).eq("").all()


def test_every_injected_record_is_rejected_with_its_reason(faulty):
    img = _records(faulty).query("face == -1")
    for key, kind in _injected().items():
        rows = img[img.image_key == key]
        if kind == "duplicate_key":
            assert len(rows) == 2, key
            assert rows.reason.fillna("").map(category).tolist().count("duplicate_key") == 1, rows
            assert rows.iloc[-1].reason == "duplicate_key"  # first occurrence wins
        elif kind in EXPECTED:
            assert len(rows) == 1, key
            assert rows.iloc[0].status == "dropped"
            assert category(rows.iloc[0].reason) == EXPECTED[kind], (key, rows.iloc[0].reason)
        else:  # empty alt-text: the image is good and goes on; the accounting notes it
            assert len(rows) == 1 and category(rows.iloc[0].reason) not in EXPECTED.values(), rows
    acc = _account(faulty)
    assert acc["collect"].notes["empty_alt_text"] == N_SHARDS
    reasons = acc["faces (images)"].rejected
    for kind, reason in EXPECTED.items():
        assert reasons[reason] >= sum(k == kind for k in _injected().values()), (kind, reasons)


def test_accounting_is_conserved_at_every_stage(faulty, clean):
    acc = _account(faulty)
    assert accounting.violations(acc) == []
    assert all(acc[s].n_in > 0 for s in accounting.STAGES)
    metrics = json.loads((faulty / "results/reports/faces/metrics.json").read_text())
    assert metrics["accounting_conserved"] is True and metrics["accounting_violations"] == []
    acc = _account(clean)  # collect and faces only
    assert accounting.violations(acc) == []
    assert acc["faces (images)"].n_in == N_SHARDS * PER_SHARD and not +acc["collect"].notes


def test_no_good_record_is_lost(faulty, clean):
    injected = _injected()
    bad = {k for k, kind in injected.items() if kind in BAD_IMAGE}
    good = _decoded_images(_records(clean))
    assert bad <= good  # the injected images were good in the clean run
    assert _decoded_images(_records(faulty)) == good - bad
    # the same good images give the same kept faces (the duplicates' first occurrence included)
    def kept(repo):
        return set(pd.concat([pd.read_parquet(repo / f"results/faces/{sh}.parquet", columns=["key"]) for sh in SHARDS]).key)

    assert kept(faulty) == {k for k in kept(clean) if k.rsplit("_", 1)[0] not in bad}
