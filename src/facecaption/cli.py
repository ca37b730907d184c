"""``facecaption <stage> ...``: one entry point per pipeline stage.

Every stage accepts the same options:

  --config FILE      config files to merge (default: config.yaml); repeatable, later ones win
  --cfg JSON         the config sections as JSON (what Snakemake rules pass: the stage's rerun key;
                     overrides --config)
  --runtime JSON     keys that change no output (threads, batch sizes of inference), merged over --cfg
  --shard ID         the shard to process, for per-shard stages
  --num-shards N     the run's shard count (shards 00000..N-1); default: planned from the source config

The stage gets its named inputs and outputs from the registry (facecaption.workflow) and a view of the
config that raises on any section it does not declare. Stage modules are imported lazily.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from facecaption import workflow as W
from facecaption.core import config as cfgmod

TOOLS: dict[str, str] = {"dvc-yaml": "facecaption.dvcyaml:run", "metrics-check": "facecaption.dvcyaml:run_metrics_check",
                         "laion-face-urls": "facecaption.collect.laion_ids:run"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facecaption", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=sorted([*W.STAGES, *TOOLS]))
    p.add_argument("--config", action="append", default=None, metavar="FILE")
    p.add_argument("--cfg", default=None, metavar="JSON")
    p.add_argument("--runtime", default=None, metavar="JSON")
    p.add_argument("--shard", default=None)
    p.add_argument("--num-shards", type=int, default=None, metavar="N")
    p.add_argument("--check", action="store_true", help="(dvc-yaml) fail if dvc.yaml is out of date")
    p.add_argument("--against", default="HEAD", help="(metrics-check) the git revision to compare with")
    p.add_argument("--ids", default=None, metavar="FILE", help="(laion-face-urls) the LAION-Face ID list; overrides laion_ids.ids")
    p.add_argument("--metadata", action="append", default=None, metavar="PATH",
                   help="(laion-face-urls) LAION-400M metadata parts: file, folder or glob, repeatable; overrides laion_ids.metadata")
    p.add_argument("--out", default=None, metavar="DIR", help="(laion-face-urls) folder of the URL parts; overrides laion_ids.out")
    return p


def load_config(args: argparse.Namespace) -> dict:
    if args.cfg is not None:
        data = _json(args.cfg, "--cfg")
        if args.runtime:
            data = cfgmod.deep_merge(data, _json(args.runtime, "--runtime"))
        return cfgmod.validate(data)
    return cfgmod.load(args.config or ["config.yaml"])


def _json(text: str, flag: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise cfgmod.ConfigError(f"config error: {flag} is not valid JSON: {exc}") from None


def shard_list(cfg: dict, args: argparse.Namespace) -> list[str]:
    """The run's shard ids: from --num-shards (what the rules pass), else planned by the source."""
    if args.num_shards is not None:
        return [f"{i:05d}" for i in range(args.num_shards)]
    from facecaption.collect.plan import shard_ids

    return shard_ids(cfg)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)
    try:
        cfg = load_config(args)
    except cfgmod.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.stage in TOOLS:
        module, func = TOOLS[args.stage].split(":")
        return int(getattr(importlib.import_module(module), func)(cfg, args) or 0)
    stage = W.STAGES[args.stage]
    try:
        needs_all = any(W.ALL in d for d in stage.deps.values())
        shards = shard_list(cfg, args) if needs_all else ([args.shard] if args.shard else [])
        io = W.stage_io(args.stage, cfg, shards, args.shard)
    except (cfgmod.ConfigError, ValueError) as exc:
        print(f"{args.stage}: {exc}", file=sys.stderr)
        return 2
    module, func = stage.entry.split(":")
    try:
        result = getattr(importlib.import_module(module), func)(W.stage_config(args.stage, cfg), io)
    except cfgmod.UndeclaredConfig as exc:
        print(exc, file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
