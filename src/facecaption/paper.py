"""The last stage: compile ``paper/paper.typ`` to ``paper/build/paper.pdf`` and write every report table as
LaTeX (booktabs) to ``results/tables/`` for authors who write in LaTeX."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import typst

from facecaption.core.config import StageConfig
from facecaption.core.report import latex_table
from facecaption.core.stage import StageIO

log = logging.getLogger(__name__)


def write_latex_tables(reports: list[str], folder: Path) -> None:
    """Every ``tables/*.json`` of the report folders ``reports`` as ``folder/<table>.tex``."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for report in reports:
        for path in sorted(Path(report, "tables").glob("*.json")):
            (folder / f"{path.stem}.tex").write_text(latex_table(json.loads(path.read_text())))


def run(cfg: StageConfig, io: StageIO) -> int:
    pdf, tables = io.outputs["pdf"], Path(io.outputs["tables"])
    write_latex_tables(io.many("reports"), tables)
    Path(pdf).parent.mkdir(parents=True, exist_ok=True)
    inputs = {"sections": ",".join(cfg["paper"]["sections"]), "title": cfg["paper"]["title"], "source": cfg["source"]}
    typst.compile(io.one("typst"), output=pdf, root=".", sys_inputs=inputs)
    log.info("wrote %s and %d LaTeX tables", pdf, len(list(tables.glob("*.tex"))))
    return 0
