"""Record accounting across the stages: every record that enters a stage is kept or rejected with a reason.

Read from the artifacts, one shard at a time (nothing holds more than one shard's tables):

* ``collect``: the collect parquet's rows (attempted images); kept = status ``success``, rejected by status;
  ``notes`` counts kept rows with an empty alt-text (the image is still good: captions come from attributes);
* ``faces (images)``: in = the collect rows; every row must have one image-level record (``face = -1``) in
  ``faces/<shard>.records.parquet``: kept, or rejected by reason category (decode reasons,
  ``missing_from_tar``, ``corrupt_tar``, ``duplicate_key``, ``no_face``, ...);
* ``faces (faces)``: in = the detected faces (face-level records); kept = rows of ``faces/<shard>.parquet``,
  rejected by reason;
* ``attributes``: in = the kept faces; kept / rejected by the attributes parquet's ``kept`` / ``reason``;
* ``captions``: in = the faces the attribute filter kept; kept = the captions parquet's rows,
  rejected = those without a caption row (``no_caption``).

:func:`violations` checks conservation (in = kept + rejected) and that the keys match one to one.
Duplicate keys: the first occurrence in a shard wins; later ones are rejected as ``duplicate_key`` by the
faces stage.

The caller names the files (:func:`shard_paths`: the report stage's inputs, paired by shard); a stage whose
file is absent for a shard (not run yet) ends that shard's accounting there.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from facecaption.core.reasons import category
from facecaption.core.report import by_shard

STAGES = ("collect", "faces (images)", "faces (faces)", "attributes", "captions")


@dataclass
class StageCount:
    stage: str
    n_in: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    problems: list = field(default_factory=list)  # key mismatches found while counting

    @property
    def n_rejected(self) -> int:
        return int(sum(self.rejected.values()))

    def as_dict(self) -> dict:
        return {"stage": self.stage, "in": self.n_in, "kept": self.kept, "rejected": self.n_rejected,
                "reasons": dict(self.rejected.most_common()), "notes": dict(self.notes),
                "problems": list(self.problems)}


PathLike = str | os.PathLike


@dataclass(frozen=True)
class ShardPaths:
    """One shard's artifacts that the accounting reads; None: that stage's file is not given."""

    shard: str
    collect: PathLike  # collect/<shard>.parquet: the attempted images
    face_records: PathLike | None = None  # faces/<shard>.records.parquet
    faces: PathLike | None = None  # faces/<shard>.parquet: the kept faces
    attributes: PathLike | None = None  # attributes/<shard>.parquet
    captions: PathLike | None = None  # captions/<shard>.parquet


def shard_paths(collect: Sequence[PathLike], face_records: Sequence[PathLike] = (), faces: Sequence[PathLike] = (),
                attributes: Sequence[PathLike] = (), captions: Sequence[PathLike] = ()) -> list[ShardPaths]:
    """Per-stage path lists (one file per shard) paired by shard id, in the order of ``collect``."""
    lists = [[str(p) for p in g] for g in (collect, face_records, faces, attributes, captions)]
    return [ShardPaths(shard, *paths) for shard, paths in by_shard(*lists) if paths[0] is not None]


def _there(path: PathLike | None) -> bool:
    return path is not None and Path(path).exists()


def _read(path: PathLike, columns: list[str]):
    schema = pq.read_schema(path)
    cols = [c for c in columns if c in schema.names]
    return pq.read_table(path, columns=cols).to_pandas()


def _key_mismatch(stage: StageCount, shard: str, expected: Counter, got: Counter, what: str) -> None:
    if expected != got:
        missing = sorted((expected - got).elements())[:5]
        extra = sorted((got - expected).elements())[:5]
        stage.problems.append(f"shard {shard}: {what}: missing {missing}, unexpected {extra}")


def account(shards: Iterable[ShardPaths]) -> dict[str, StageCount]:
    """Count in / kept / rejected (by reason category) for every stage over ``shards``."""
    out = {name: StageCount(name) for name in STAGES}
    c, fi, ff, at, ca = (out[n] for n in STAGES)
    for paths in shards:
        shard = paths.shard
        # collect
        col = _read(paths.collect, ["key", "status", "caption"])
        status = col["status"].fillna("success") if "status" in col else None
        ok = (status == "success") if status is not None else col["key"].notna()
        c.n_in += len(col)
        c.kept += int(ok.sum())
        if status is not None:
            c.rejected.update(status[~ok].map(str))
        if "caption" in col:
            empty = col["caption"].fillna("").map(lambda t: not str(t).strip())
            c.notes["empty_alt_text"] += int((empty & ok).sum())
        dup = int(col["key"].duplicated().sum())
        if dup:
            c.notes["repeated_key"] += dup

        # faces: image level and face level
        if not _there(paths.face_records):
            continue
        rec = _read(paths.face_records, ["image_key", "face", "status", "reason"])
        img, det = rec[rec["face"] == -1], rec[rec["face"] >= 0]
        fi.n_in += len(col)
        fi.kept += int((img["status"] == "kept").sum())
        fi.rejected.update(img.loc[img["status"] != "kept", "reason"].fillna("").map(category).replace("", "unknown"))
        _key_mismatch(fi, shard, Counter(col["key"]), Counter(img["image_key"]), "collect rows vs image records")

        faces = _read(paths.faces, ["key"])
        ff.n_in += len(det)
        ff.kept += len(faces)
        ff.rejected.update(det.loc[det["status"] != "kept", "reason"].fillna("").map(category).replace("", "unknown"))
        kept_records = det[det["status"] == "kept"]
        expected = Counter(f"{k}_{int(i):02d}" for k, i in zip(kept_records["image_key"], kept_records["face"]))
        _key_mismatch(ff, shard, expected, Counter(faces["key"]), "kept face records vs faces parquet")

        # attributes
        if not _there(paths.attributes):
            continue
        attrs = _read(paths.attributes, ["key", "kept", "reason"])
        kept = attrs["kept"].fillna(False).astype(bool)
        at.n_in += len(faces)
        at.kept += int(kept.sum())
        at.rejected.update(attrs.loc[~kept, "reason"].fillna("").map(category).replace("", "unknown"))
        _key_mismatch(at, shard, Counter(faces["key"]), Counter(attrs["key"]), "faces vs attribute rows")

        # captions
        if not _there(paths.captions):
            continue
        caps = _read(paths.captions, ["key"])
        wanted = Counter(attrs.loc[kept, "key"])
        got = Counter(caps["key"])
        ca.n_in += sum(wanted.values())
        ca.kept += sum((got & wanted).values())
        ca.rejected["no_caption"] += sum((wanted - got).values())
        extra = sorted((got - wanted).elements())
        if extra:
            ca.problems.append(f"shard {shard}: captions for faces the attribute filter did not keep "
                               f"(or captioned twice): {extra[:5]}")
    return out


def violations(counts: dict[str, StageCount]) -> list[str]:
    """Every stage where in != kept + rejected, or whose keys do not match the stage before, as one line each."""
    out = []
    for s in counts.values():
        if s.n_in != s.kept + s.n_rejected:
            out.append(f"{s.stage}: in {s.n_in} != kept {s.kept} + rejected {s.n_rejected} ({dict(s.rejected)})")
        out.extend(f"{s.stage}: {p}" for p in s.problems)
    return out


def table_rows(counts: dict[str, StageCount], top: int | None = None) -> list[list]:
    """Rows ``[stage, in, kept, rejected, reasons]`` for a report table (every reason unless ``top``)."""
    rows = []
    for s in counts.values():
        reasons = ", ".join(f"{r} {n}" for r, n in s.rejected.most_common(top) if n)
        if top is not None and len(s.rejected) > top:
            reasons += f", +{len(s.rejected) - top} more"
        notes = "; ".join(f"{r}: {n}" for r, n in s.notes.items() if n)
        if notes:
            reasons = f"{reasons} (kept with {notes})" if reasons else f"(kept with {notes})"
        rows.append([s.stage, s.n_in, s.kept, s.n_rejected, reasons or "–"])
    return rows
