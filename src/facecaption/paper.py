"""The last stage: compile ``paper/paper.typ`` to ``paper/build/paper.pdf`` and write every report table as
LaTeX (booktabs) to ``results/tables/`` for authors who write in LaTeX."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import typst

from facecaption import workflow as W
from facecaption.core.report import latex_table

log = logging.getLogger(__name__)


def run(cfg: dict, args: argparse.Namespace) -> int:
    pdf, tables_dir = W.stage_outs("paper")
    tables_dir = Path(tables_dir)
    if tables_dir.exists():
        shutil.rmtree(tables_dir)
    tables_dir.mkdir(parents=True)
    for section in cfg["paper"]["sections"]:
        for path in sorted(Path(W.R, "reports", section, "tables").glob("*.json")):
            (tables_dir / f"{path.stem}.tex").write_text(latex_table(json.loads(path.read_text())))
    Path(pdf).parent.mkdir(parents=True, exist_ok=True)
    inputs = {"sections": ",".join(cfg["paper"]["sections"]), "title": cfg["paper"]["title"],
              "source": cfg.get("source", "synthface")}
    typst.compile("paper/paper.typ", output=pdf, root=".", sys_inputs=inputs)
    log.info("wrote %s and %d LaTeX tables", pdf, len(list(tables_dir.glob("*.tex"))))
    return 0
