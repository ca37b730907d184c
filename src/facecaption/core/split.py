"""The one definition of "held out": which caption shards FLIP trains on and which it never sees.

The train stage computes the split (:func:`make`) from the run's caption shards and ``train.val_shards`` and
writes it to ``results/train/split.json`` (:meth:`Split.write`); every stage that needs data the model did
not train on (evaluate's retrieval, the quality report's relevance) reads that file (:func:`read`) and uses
exactly its held-out shards and keys. Nobody recomputes the rule, so the stages cannot disagree.

The rule (:data:`RULE`): the last ``train.val_shards`` caption shards are held out when there are more shards
than that; otherwise none is (every shard trains, there is no held-out data, and the readers say so).

``split.json``::

    {"rule": "...", "val_shards": 1, "shards": 3,
     "train_shards": ["results/captions/00000.tar", "results/captions/00001.tar"],
     "held_out_shards": ["results/captions/00002.tar"],
     "held_out_samples": 24, "held_out_keys": ["00002_00000_00", ...]}

``held_out_keys``: every sample key in the held-out shards, in shard order (the model trained on none of
them). Paths are as the stage received them (the registry's, relative to the working folder).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

RULE = ("the last train.val_shards caption shards are held out when there are more shards than that, "
        "otherwise none (every shard trains)")
VERSION = 1


HELD_OUT_SET = "held-out captions"  # the retrieval test faces, by that name in the audit's and evaluation's tables


class SplitError(ValueError):
    """A split file that is missing or does not fit the run, as one line."""


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]  # caption shards the model trains on
    held_out: tuple[str, ...]  # caption shards it never sees (validation, retrieval, relevance)
    val_shards: int  # train.val_shards, as configured
    keys: tuple[str, ...] | None = field(default=None)  # sample keys of the held-out shards (None: not read yet)
    rule: str = RULE

    @property
    def shards(self) -> tuple[str, ...]:
        return self.train + self.held_out

    @property
    def note(self) -> str:
        """Why there is no held-out data ("" when there is)."""
        if self.held_out:
            return ""
        return (f"no held-out caption shards: train.val_shards is {self.val_shards} and the run has "
                f"{len(self.shards)} caption shard(s), so every shard is training data ({self.rule})")

    def with_keys(self) -> "Split":
        """This split with the sample keys of its held-out shards, read from the shards."""
        return Split(self.train, self.held_out, self.val_shards, tuple(held_out_keys(self.held_out)), self.rule)

    def to_dict(self) -> dict:
        split = self if self.keys is not None else self.with_keys()
        return {"version": VERSION, "rule": split.rule, "val_shards": split.val_shards, "shards": len(split.shards),
                "train_shards": list(split.train), "held_out_shards": list(split.held_out),
                "held_out_samples": len(split.keys), "held_out_keys": list(split.keys)}

    def write(self, path: str | os.PathLike) -> None:
        """Write ``split.json`` (atomically; the held-out keys read from the shards when not known yet)."""
        from facecaption.core.shards import atomic_path

        text = json.dumps(self.to_dict(), indent=1) + "\n"
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)


def make(shards: list[str], val_shards: int) -> Split:
    """The split of ``shards`` (the run's caption shards, in shard order) under ``train.val_shards``: the one rule."""
    shards = [str(s) for s in shards]
    n = int(val_shards) if len(shards) > int(val_shards) else 0
    return Split(tuple(shards[: len(shards) - n]), tuple(shards[len(shards) - n:]), int(val_shards))


def held_out_keys(shards) -> list[str]:
    """Every sample key of ``shards``, in shard order (each key once)."""
    from facecaption.core.shards import iter_samples

    keys: dict[str, None] = {}
    for shard in shards:
        for sample in iter_samples(shard):
            keys.setdefault(sample["__key__"], None)
    return list(keys)


def read(path: str | os.PathLike) -> Split:
    """The split the train stage wrote; :class:`SplitError` (one line) when it is missing or unreadable."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        return Split(tuple(data["train_shards"]), tuple(data["held_out_shards"]), int(data["val_shards"]),
                     tuple(data["held_out_keys"]), str(data["rule"]))
    except FileNotFoundError:
        raise SplitError(f"{p}: missing; the train stage writes the held-out split") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SplitError(f"{p}: not a split file written by the train stage ({type(exc).__name__}: {exc})") from None


def check_shards(split: Split, shards: list[str], path: str | os.PathLike = "split.json") -> None:
    """Stop with one line when the split is not of this run's caption ``shards`` (a split written for other
    shards: rerun the train stage)."""
    known = [str(s) for s in shards]
    stray = [s for s in split.shards if s not in set(known)]
    if stray:
        raise SplitError(f"{path}: names caption shard {stray[0]}, which is not one of this run's "
                         f"{len(known)} caption shard(s); rerun the train stage")
    missing = [s for s in known if s not in set(split.shards)]
    if missing:
        raise SplitError(f"{path}: was written without caption shard {missing[0]} of this run; rerun the train stage")
