"""``facecaption <stage> ...``: one entry point per pipeline stage.

Every stage accepts the same options:

  --config FILE      config files to merge (default: config.yaml); repeatable, later ones win
  --cfg JSON         the config sections as JSON (what Snakemake rules pass; overrides --config)
  --shard ID         the shard to process, for per-shard stages

Stage modules are imported lazily so ``facecaption --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from facecaption.core import config as cfgmod

# stage name -> "module:function"; each function takes (cfg: dict, args: argparse.Namespace)
COMMANDS: dict[str, str] = {
    "collect": "facecaption.collect:run",
    "labeled": "facecaption.labeled:run",
    "report_corpus": "facecaption.collect.report:run",
    "faces": "facecaption.faces:run",
    "report_faces": "facecaption.faces.report:run",
    "attributes_train": "facecaption.attributes:run_train",
    "attributes": "facecaption.attributes:run",
    "report_attributes": "facecaption.attributes.report:run",
    "captions": "facecaption.captions:run",
    "report_captions": "facecaption.captions.report:run",
    "train": "facecaption.train:run",
    "report_train": "facecaption.train.report:run",
    "evaluate": "facecaption.evaluate:run",
    "quality": "facecaption.quality:run",
    "report_quality": "facecaption.quality.report:run",
    "report_cost": "facecaption.cost:run",
    "paper": "facecaption.paper:run",
    "dvc-yaml": "facecaption.dvcyaml:run",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facecaption", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=sorted(COMMANDS))
    p.add_argument("--config", action="append", default=None, metavar="FILE")
    p.add_argument("--cfg", default=None, metavar="JSON")
    p.add_argument("--shard", default=None)
    p.add_argument("--check", action="store_true", help="(dvc-yaml) fail if dvc.yaml is out of date")
    return p


def load_config(args: argparse.Namespace) -> dict:
    if args.cfg is not None:
        try:
            data = json.loads(args.cfg)
        except json.JSONDecodeError as exc:
            raise cfgmod.ConfigError(f"config error: --cfg is not valid JSON: {exc}") from None
        return cfgmod.validate(data)
    return cfgmod.load(args.config or ["config.yaml"])


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)
    try:
        cfg = load_config(args)
    except cfgmod.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    module, func = COMMANDS[args.stage].split(":")
    result = getattr(importlib.import_module(module), func)(cfg, args)
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
