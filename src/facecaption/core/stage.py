"""What a stage receives: its named inputs and outputs (:class:`StageIO`) and its view of the config
(:class:`facecaption.core.config.StageConfig`). The CLI builds both from the stage registry
(:mod:`facecaption.workflow`); a stage never looks paths up itself.

Every stage entry point has the signature ``run(cfg: StageConfig, io: StageIO) -> int`` (0 = done).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StageIO:
    """Named paths: ``inputs["crops"]`` is one path for a per-shard input, a list (one per shard, in shard
    order) for an input over all shards; ``outputs["model"]`` one path. ``shard`` is the shard a per-shard job
    processes (None otherwise); ``shards`` every shard id of the run."""

    stage: str
    inputs: dict[str, str | list[str]]
    outputs: dict[str, str]
    shard: str | None = None
    shards: list[str] = field(default_factory=list)

    def one(self, name: str) -> str:
        """An input that is one path."""
        value = self.inputs[name]
        if isinstance(value, list):
            raise TypeError(f"{self.stage}: input {name!r} is a list of {len(value)} paths")
        return value

    def many(self, name: str) -> list[str]:
        """An input that is a list of paths (one per shard)."""
        value = self.inputs[name]
        return list(value) if isinstance(value, list) else [value]
