"""Reports: what a stage tells the paper. One folder per report stage, ``results/reports/<name>/``:

* ``metrics.json``: every number the paper prints (Typst reads it directly, nothing is typed by hand);
* ``tables/<table>.json``: tables as data (columns, rows, caption, which rows are quoted from elsewhere),
  rendered by ``paper/lib.typ`` and written as LaTeX (booktabs) by the paper stage;
* ``figures/<figure>.png``: seaborn/matplotlib figures at a fixed DPI with fixed metadata.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np


def _plain(value):
    """JSON-safe, stable values: numpy scalars to Python, floats rounded to 6 significant digits."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return float(f"{value:.6g}")
    return value


def shard_of(path: str | os.PathLike) -> str:
    """The shard id of an artifact path (``results/faces/00001.records.parquet`` -> ``00001``)."""
    return Path(path).name.split(".")[0]


def read_columns(path: str | os.PathLike, columns: list[str] | None = None):
    """One parquet file as a DataFrame, only ``columns`` (those it has; all when None)."""
    import pyarrow.parquet as pq

    if columns is None:
        return pq.read_table(path).to_pandas()
    have = set(pq.read_schema(path).names)
    return pq.read_table(path, columns=[c for c in columns if c in have]).to_pandas()


def by_shard(*groups: list[str]) -> list[tuple[str, list[str | None]]]:
    """Pair the artifacts of several path lists by shard id, in the order of the first list:
    ``[(shard, [path of group 0, path of group 1 or None, ...]), ...]``."""
    maps = [{shard_of(p): p for p in g} for g in groups]
    order = list(dict.fromkeys(shard_of(p) for g in groups for p in g))
    return [(s, [m.get(s) for m in maps]) for s in order]


def numeric(metrics: dict, prefix: str = "") -> dict:
    """The numbers of a metrics dict, flattened to ``{"a.b": 1.0}`` (booleans and strings left out): what a
    report writes as its DVC metrics file (``dvc metrics diff`` compares numbers)."""
    out: dict = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(numeric(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None:
            out[name] = value
    return out


class Report:
    """``metrics_file``: where :meth:`save` also writes the numeric metrics, flat (the stage's DVC metrics
    output, ``results/metrics/<name>.json``); None = only ``metrics.json`` in the folder."""

    def __init__(self, folder: str | os.PathLike, metrics_file: str | os.PathLike | None = None):
        self.folder = Path(folder)
        self.metrics_file = None if metrics_file is None else Path(metrics_file)
        if self.folder.exists():
            shutil.rmtree(self.folder)
        (self.folder / "tables").mkdir(parents=True)
        (self.folder / "figures").mkdir(parents=True)
        self.metrics: dict = {}

    def metric(self, name: str, value) -> None:
        self.metrics[name] = _plain(value)

    def update(self, values: dict) -> None:
        for k, v in values.items():
            self.metric(k, v)

    def table(self, name: str, columns: list[str], rows: list[list], caption: str,
              quoted_rows: list[int] | None = None, note: str = "") -> None:
        data = {"name": name, "caption": caption, "columns": columns, "rows": _plain(rows),
                "quoted_rows": quoted_rows or [], "note": note}
        (self.folder / "tables" / f"{name}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False))

    def figure(self, name: str, fig) -> str:
        path = self.folder / "figures" / f"{name}.png"
        fig.savefig(path, dpi=150, bbox_inches="tight", metadata={"Software": None})
        import matplotlib.pyplot as plt

        plt.close(fig)
        return str(path)

    def image(self, name: str, picture) -> str:
        """A PIL image (an example grid) as a figure, 7 inches wide, without axes."""
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 7 * picture.height / picture.width))
        ax.imshow(picture)
        ax.axis("off")
        return self.figure(name, fig)

    def save(self) -> None:
        (self.folder / "metrics.json").write_text(json.dumps(self.metrics, indent=1, sort_keys=True, ensure_ascii=False))
        if self.metrics_file is not None:
            self.metrics_file.parent.mkdir(parents=True, exist_ok=True)
            self.metrics_file.write_text(json.dumps(numeric(self.metrics), indent=1, sort_keys=True) + "\n")


def setup_plotting():
    """Headless matplotlib with a fixed style, so figures are identical run to run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    plt.rcParams.update({"svg.hashsalt": "facecaption", "figure.dpi": 150})
    return plt, sns


def latex_table(table: dict) -> str:
    """A booktabs LaTeX table from a table JSON."""

    specials = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}

    def esc(v) -> str:
        s = "–" if v is None else (f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
        return "".join(specials.get(ch, ch) for ch in s)

    cols = table["columns"]
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{esc(table['caption'])}}}",
             rf"\label{{tab:{table['name']}}}", r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}", r"\toprule",
             " & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
    for i, row in enumerate(table["rows"]):
        cells = [esc(v) for v in row]
        if i in table.get("quoted_rows", []):
            cells[0] = cells[0] + r"$^{\dagger}$"
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.get("quoted_rows") or table.get("note"):
        note = table.get("note") or ""
        if table.get("quoted_rows"):
            note = (r"$^{\dagger}$ quoted from the cited source, not measured here. " + esc(note)).strip()
        lines.append(rf"\par\smallskip{{\footnotesize {note}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"
