"""Stage ``report_ablation``: the paper's caption ablation, measured here.

The paper trains FLIP on the raw LAION-Face alt-text, on the grammar captions, and on the LLM-rewritten captions
and shows that the text decides the result (CelebA-Caption text→image R@5 13.24 vs 38.62 vs 50.04). Here every
arm is a FLIP trained with the ``train`` section's recipe and ``train.text`` set to the arm
(``results/ablation/<arm>/``, the ``train_<arm>`` and ``evaluate_<arm>`` stages; the main FLIP stands for the
arm it already is, :func:`facecaption.core.arms.main_arm`), evaluated with the same protocol: the same held-out
faces and their captions for retrieval, the same linear probe. Output: ``results/reports/ablation/`` (a table
beside the authors' quoted rows, a figure) and ``results/metrics/ablation.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from facecaption.core import reference
from facecaption.core.arms import LABELS, ablation_arms, main_arm
from facecaption.core.config import StageConfig
from facecaption.core.report import Report, setup_plotting
from facecaption.core.stage import StageIO

RET = ("t2i_r5", "t2i_r10", "i2t_r5", "i2t_r10")
QUOTED = {"FLIP (raw LAION-Face captions)": "alt_text", "FLIP (grammar captions only)": "grammar", "FLIP": "caption"}


def arm_results(metrics: dict, summary: dict) -> dict:
    """One arm's numbers: retrieval (mean ± std over the evaluation's subsets) and the labeled set's probe, and
    what training skipped for want of a text in the field."""
    out = {"samples": summary.get("samples"), "skipped_missing_text": (summary.get("skipped") or {}).get("missing_caption", 0)}
    for k in RET + ("t2i_r1", "i2t_r1"):
        out[k] = metrics.get(f"retrieval.FLIP.{k}.mean")
        out[f"{k}_std"] = metrics.get(f"retrieval.FLIP.{k}.std")
    probes = sorted({k.split(".")[1] for k in metrics if k.startswith("probe.") and ".FLIP." in k})
    dataset = probes[0] if probes else None
    fracs = sorted({k.split(".")[3] for k in metrics if dataset and k.startswith(f"probe.{dataset}.FLIP.")}, key=float)
    out["probe_dataset"] = dataset
    for f in fracs:
        out[f"probe_{f}"] = metrics.get(f"probe.{dataset}.FLIP.{f}.mean")
    out["random_t2i_r5"] = metrics.get("retrieval.random init.t2i_r5.mean")
    out["random_i2t_r5"] = metrics.get("retrieval.random init.i2t_r5.mean")
    return out


def _pm(mean, std) -> str | None:
    if mean is None:
        return None
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def run(cfg: StageConfig, io: StageIO) -> int:
    arms, main = ablation_arms(cfg), main_arm(cfg)
    separate = [a for a in arms if a != main]
    metrics_files = dict(zip(separate, io.many("arm_metrics"))) if separate else {}
    log_dirs = dict(zip(separate, io.many("arm_logs"))) if separate else {}
    main_metrics = json.loads(Path(io.one("main_metrics")).read_text())
    results = {}
    for arm in arms:
        if arm == main:
            m, logs = main_metrics, io.one("main_logs")
        else:
            m, logs = json.loads(Path(metrics_files[arm]).read_text()), log_dirs[arm]
        summary = json.loads((Path(logs) / "summary.json").read_text())
        results[arm] = arm_results(m, summary)
    random = arm_results(main_metrics, {})

    rep = Report(io.outputs["report"], metrics_file=io.outputs["metrics"])
    rep.update({"arms": arms, "main_arm": main, "steps": cfg["train"]["max_steps"] if cfg["train"]["epochs"] is None else None,
                "random_t2i_r5": random["random_t2i_r5"], "random_i2t_r5": random["random_i2t_r5"],
                **{f"{arm}.{k}": v for arm, r in results.items() for k, v in r.items()
                   if not isinstance(v, str) and not k.startswith("random_")}})
    if len(arms) > 1:
        best = max(arms, key=lambda a: results[a]["t2i_r5"] or 0)
        worst = min(arms, key=lambda a: results[a]["t2i_r5"] or 0)
        rep.update({"best_arm": best, "worst_arm": worst,
                    "t2i_r5_gap": (results[best]["t2i_r5"] or 0) - (results[worst]["t2i_r5"] or 0)})
    probe_cols = sorted({k for r in results.values() for k in r if k.startswith("probe_") and k != "probe_dataset"},
                        key=lambda k: float(k.split("_")[1]))
    dataset = next((r["probe_dataset"] for r in results.values() if r["probe_dataset"]), None)
    columns = ["trained on", "T→I R@5", "T→I R@10", "I→T R@5", "I→T R@10",
               *[f"probe {k.split('_')[1]} %" for k in probe_cols], "faces without the text"]
    rows = []
    for label, arm in QUOTED.items():
        q = next(r for r in reference.RETRIEVAL if r[0] == label)
        t2i, i2t = (c.split(" / ") for c in q[1:3])
        rows.append([f"paper: {LABELS[arm]}", t2i[0], t2i[1], i2t[0], i2t[1], *[None] * len(probe_cols), None])
    for arm in arms:
        r = results[arm]
        rows.append([LABELS[arm] + (" (the main FLIP)" if arm == main else ""),
                     *[_pm(r[k], r[f"{k}_std"]) for k in RET], *[r.get(k) for k in probe_cols], r["skipped_missing_text"]])
    rows.append(["random init (no training)", _pm(random["random_t2i_r5"], None), None, _pm(random["random_i2t_r5"], None), None,
                 *[None] * len(probe_cols), None])
    rep.table("ablation", columns, rows, quoted_rows=list(range(len(QUOTED))),
              caption="The caption ablation: one FLIP per text field, the same recipe and the same evaluation "
                      "(retrieval on the held-out faces' captions, mean ± std over subsets; probe: mean accuracy on "
                      f"{dataset or 'the labeled set'} by share of training labels). The paper's rows are its "
                      "CelebA-Caption retrieval (R@5 / R@10 after training projections), quoted.",
              note="A face without the arm's text (no alt-text, no rewrite) is skipped in training and counted.")

    plt, _ = setup_plotting()
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        r = results[arm]
        xs = [j + (i - (len(arms) - 1) / 2) * width for j in range(2)]
        ax.bar(xs, [r["t2i_r5"] or 0, r["i2t_r5"] or 0], width, yerr=[r["t2i_r5_std"] or 0, r["i2t_r5_std"] or 0],
               capsize=3, label=LABELS[arm])
    for j, k in enumerate(("random_t2i_r5", "random_i2t_r5")):
        if random[k] is not None:
            ax.hlines(random[k], j - 0.45, j + 0.45, colors="k", linestyles="dotted",
                      label="random init" if j == 0 else None)
    ax.set_xticks([0, 1], ["text → image R@5", "image → text R@5"])
    ax.set_ylabel("recall (%)")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    rep.figure("ablation", fig)
    rep.save()
    return 0
