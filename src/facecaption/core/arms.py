"""The caption ablation's arms: which text fields are compared and which one the main FLIP already is. Shared by
the registry (which plans the ``train_<arm>``/``evaluate_<arm>`` jobs) and the ablation report."""

from __future__ import annotations

from collections.abc import Mapping

ARMS = ("alt_text", "grammar", "rewritten", "released", "caption")  # train.text values an arm can take
LABELS = {"alt_text": "web alt-text (raw captions)", "grammar": "grammar captions", "rewritten": "LLM rewrites only",
          "caption": "grammar + LLM rewrite", "released": "released FaceCaption-15M captions"}


def main_arm(cfg: Mapping) -> str:
    """The arm the main FLIP (``results/train``) already is: its ``train.text``; ``caption`` without an LLM
    rewrite offers exactly the grammar captions (the same candidates, the same seeded picks: the same model)."""
    text = cfg["train"]["text"]
    return "grammar" if text == "caption" and not cfg["captions"]["llm"]["enabled"] else text


def ablation_arms(cfg: Mapping) -> list[str]:
    """The text fields compared (``ablation.texts``; ``auto``: alt-text and grammar captions, the LLM rewrite
    when an endpoint is configured, the released captions for the release source)."""
    texts = cfg["ablation"]["texts"]
    if texts == "auto":
        texts = ["alt_text", "grammar"] + (["caption"] if cfg["captions"]["llm"]["enabled"] else [])
        texts += ["released"] if cfg["source"] == "release" else []
    return list(dict.fromkeys(texts))


def separate_arms(cfg: Mapping) -> list[str]:
    """The arms that need a FLIP of their own: all but the one the main FLIP already is."""
    main = main_arm(cfg)
    return [a for a in ablation_arms(cfg) if a != main]
