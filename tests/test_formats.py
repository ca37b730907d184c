"""facecaption.synthface.formats: synthetic CelebA / LFWA folders in the published layouts, checked line by
line against the layout and read back with the project's own readers (labeled/celeba.py, evaluate/data.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from facecaption.core import celeba_files as C
from facecaption.core.celeba import ATTRIBUTES
from facecaption.evaluate import data as D
from facecaption.synthface import formats as F


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmt") / "celeba"
    return root, F.write_celeba(root, n_identities=10, images_per_identity=2, seed=3)


@pytest.fixture(scope="module")
def lfwa(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmt") / "lfwa"
    return root, F.write_lfwa(root, n_identities=8, images_per_identity=2, seed=3)


def test_celeba_layout(celeba):
    root, truth = celeba
    assert sorted(p.name for p in root.iterdir()) == sorted(F.CELEBA_FILES)
    names = [f"{i:06d}.jpg" for i in range(1, 21)]
    assert sorted(p.name for p in (root / "img_align_celeba").iterdir()) == names
    with Image.open(root / "img_align_celeba" / "000001.jpg") as im:
        assert im.format == "JPEG" and im.size == (178, 218) and im.mode == "RGB"
    attr = (root / "list_attr_celeba.txt").read_text().splitlines()
    assert attr[0] == "20" and attr[1].split() == list(ATTRIBUTES) and len(attr) == 22
    # "000001.jpg -1  1 ...": each value right-aligned in two characters after one space
    assert all(re.fullmatch(r"\d{6}\.jpg(  1| -1){40}", line) for line in attr[2:])
    part = (root / "list_eval_partition.txt").read_text().splitlines()
    assert [p.split()[0] for p in part] == names
    codes = [p.split()[1] for p in part]
    assert codes == sorted(codes) and set(codes) == {"0", "1", "2"}  # numbered train, then val, then test
    ident = dict(line.split() for line in (root / "identity_CelebA.txt").read_text().splitlines())
    split_of_id: dict = {}
    for name, code in (p.split() for p in part):
        assert split_of_id.setdefault(ident[name], code) == code  # whole identities per split
    lm = (root / "list_landmarks_align_celeba.txt").read_text().splitlines()
    assert lm[0] == "20" and tuple(lm[1].split()) == C.LANDMARK_COLUMNS
    assert re.fullmatch(r"000001\.jpg {8,}\d+( +\d+){9}", lm[2])


def test_celeba_parses_with_the_project_readers_and_matches_the_truth(celeba):
    root, truth = celeba
    header, labels = C.read_attributes(root / "list_attr_celeba.txt")
    partition = C.read_partition(root / "list_eval_partition.txt")
    points = C.read_landmarks(root / "list_landmarks_align_celeba.txt")
    assert header == list(ATTRIBUTES) and set(labels) == set(partition) == set(points) == {t["file"] for t in truth}
    attractive = ATTRIBUTES.index(F.NOT_DRAWN)
    for t in truth:
        assert labels[t["file"]] == [int(t["labels"][a] == 1) for a in ATTRIBUTES]
        assert labels[t["file"]][attractive] == 0  # not drawn: -1 everywhere
        assert np.abs(points[t["file"]] - t["landmarks"]).max() <= 0.5 + 1e-9  # the file rounds the truth
        # aligned the way CelebA's are: the eyes near CelebA's mean eye positions
        assert np.abs(t["landmarks"][:2] - np.array(F.CELEBA_EYES)).max() < 2.5
    # the drawn attributes vary (the labels are the renderer's, not a constant)
    male = [labels[t["file"]][ATTRIBUTES.index("Male")] for t in truth]
    assert 0 < sum(male) < len(male)
    ds = D.read_dataset({"name": "CelebA", "format": "celeba", "path": str(root)})
    assert sum(ds.sizes().values()) == 20 and ds.attributes == list(ATTRIBUTES)
    D.check_disjoint(ds)


def test_lfwa_layout_and_reader(lfwa):
    root, truth = lfwa
    people = sorted(p.name for p in (root / "lfw").iterdir())
    assert len(people) == 8 and all(re.fullmatch(r"[A-Z][a-z]+_[A-Z][a-z]+", p) for p in people)
    for p in people:
        assert sorted(f.name for f in (root / "lfw" / p).iterdir()) == [f"{p}_0001.jpg", f"{p}_0002.jpg"]
    with Image.open(root / "lfw" / people[0] / f"{people[0]}_0001.jpg") as im:
        assert im.size == (250, 250) and im.format == "JPEG"
    attr = (root / "list_attr_lfw.txt").read_text().splitlines()
    assert attr[0] == "16" and attr[1].split() == list(ATTRIBUTES)
    assert [a.split()[0] for a in attr[2:]] == sorted(a.split()[0] for a in attr[2:])
    part = dict(line.split() for line in (root / "list_eval_partition_lfw.txt").read_text().splitlines())
    assert set(part.values()) == {"0", "2"}  # as LFWA: train and test only
    assert not (root / "list_landmarks_lfw.txt").exists()
    # the config/lfwa.yaml entry reads it (validation identities carved from train)
    spec = {"name": "LFWA", "format": "lfwa", "path": str(root), "images": "lfw", "attributes": "list_attr_lfw.txt",
            "partition": "list_eval_partition_lfw.txt", "val_share": 0.25}
    ds = D.read_dataset(spec, seed=0)
    assert sum(ds.sizes().values()) == 16 and all(n > 0 for n in ds.sizes().values())
    D.check_disjoint(ds)
    by_file = {t["file"]: t for t in truth}
    for s in D.SPLITS:
        for key, row in zip(ds.splits[s].keys, ds.splits[s].labels):
            assert row.tolist() == [int(by_file[key + ".jpg"]["labels"][a] == 1) for a in ATTRIBUTES]


def test_same_seed_same_bytes_and_no_overwrite(tmp_path):
    a = F.write_celeba(tmp_path / "a", 3, 1, seed=5)
    F.write_celeba(tmp_path / "b", 3, 1, seed=5)
    for name in ["list_attr_celeba.txt", "list_landmarks_align_celeba.txt", "img_align_celeba/000002.jpg"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    before = (tmp_path / "a" / "list_attr_celeba.txt").read_bytes()
    with pytest.raises(FileExistsError, match="img_align_celeba: already exists; refusing to overwrite"):
        F.write_celeba(tmp_path / "a", 3, 1, seed=6)
    assert (tmp_path / "a" / "list_attr_celeba.txt").read_bytes() == before
    assert len(a) == 3
    with pytest.raises(ValueError, match="too few"):
        F.write_celeba(tmp_path / "c", 2, 1)


def test_cli(tmp_path, capsys):
    out = tmp_path / "celeba"
    assert F.main(["celeba", str(out), "--identities", "3", "--images-per-identity", "1", "--no-landmarks"]) == 0
    assert "3 images" in capsys.readouterr().out
    assert (out / "list_attr_celeba.txt").exists() and not (out / "list_landmarks_align_celeba.txt").exists()
    assert F.main(["celeba", str(out), "--identities", "3"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert F.main(["lfwa", str(tmp_path / "lfwa"), "--identities", "2", "--images-per-identity", "1",
                   "--landmarks"]) == 0
    assert (tmp_path / "lfwa" / "list_landmarks_lfw.txt").exists()
