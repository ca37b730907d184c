"""Numbers quoted from the FaceCaption-15M paper (arXiv 2407.08515), its dataset card and the authors' FLIP
repository, as collected in ``shared/reference/paper-facts.md``. They are shown in tables as *quoted* rows
(marked †), never as measured here. Each table names its source.
"""

from __future__ import annotations

SOURCE = "FaceCaption-15M paper (arXiv 2407.08515)"
SOURCE_REPO = "authors' FLIP repository (README tables, early 2024)"

# The paper's funnel: stage -> approximate count
FUNNEL = [
    ("LAION-Face image–text pairs", 50_000_000, "~75 % of URLs reachable"),
    ("images with faces (RetinaFace)", 37_000_000, ""),
    ("faces with score > 0.98 and crop > 128×128, aligned", 23_000_000, ""),
    ("faces with > 5 attribute labels at p > 0.85", 15_000_000, ""),
]
FUNNEL_FILTERS = {"detector": "RetinaFace", "min_score": 0.98, "min_size": 128, "label_p": 0.85, "min_labels": 5}

# Table 1: dataset, images, mean resolution, annotations, aligned, texts, mean words per text
TABLE1_COLUMNS = ["dataset", "images", "mean resolution", "annotations", "aligned", "texts", "words/text"]
TABLE1 = [
    ["LFWA", "13K", "250×250", 40, "yes", "–", "–"],
    ["CelebA", "202K", "178×218", 40, "yes", "–", "–"],
    ["FFHQ-Text", "0.76K", "1024×1024", 162, "yes", "6.8K", 22],
    ["MM-CelebA", "30K", "512×512", 38, "yes", "300K", 17],
    ["CelebA-Dialog", "202K", "256×256", 5, "yes", "202K", 25],
    ["CelebV-Text", "70K", "512×512+", 77, "yes", "1.4M", 67],
    ["LAION-Face", "50M", "615×615", "–", "no", "50M", 12],
    ["FaceCaption-15M", "15M", "285×285", 40, "yes", "15M", 30],
]

# Linear probe, mean accuracy over 40 attributes (%), by share of training labels
PROBE_COLUMNS = ["model", "CelebA 1 %", "CelebA 10 %", "CelebA 100 %", "LFWA 10 %", "LFWA 50 %", "LFWA 100 %"]
PROBE = [
    ["FaRL", 89.66, 90.26, 91.39, 82.42, 85.38, 85.94],
    ["CLIP", 89.09, 90.47, 90.86, 80.20, 85.48, 84.48],
    ["SSPL", 88.84, 89.58, 91.77, 81.65, 85.43, 86.53],
    ["FLIP", 91.52, 91.74, 92.27, 82.60, 89.87, "98.04*"],
]
PROBE_NOTE = "* The authors' LFWA loader trains on the test split; 98.04 should not be taken at face value."

# Retrieval with frozen backbones (projections trained): R@5 / R@10
RETRIEVAL_COLUMNS = ["model", "CelebA-Caption T→I", "CelebA-Caption I→T", "MM-CelebA T→I", "MM-CelebA I→T"]
RETRIEVAL = [
    ["CLIP", "21.42 / 30.30", "26.52 / 37.22", "13.63 / 21.06", "14.41 / 22.48"],
    ["BLIP", "24.56 / 34.09", "24.35 / 34.15", "21.56 / 31.25", "23.83 / 33.38"],
    ["FLIP (grammar captions only)", "38.62 / 48.28", "38.14 / 48.90", "23.81 / 33.48", "23.70 / 32.83"],
    ["FLIP (raw LAION-Face captions)", "13.24 / 20.96", "10.76 / 17.08", "9.75 / 15.70", "7.48 / 12.25"],
    ["FLIP", "50.04 / 62.04", "50.96 / 62.98", "26.10 / 35.75", "27.05 / 37.23"],
]

# Pre-training setup of the authors
TRAINING = {"image_encoder": "CLIP ViT-B/16 (OpenAI init)", "text_encoder": "BERT-base", "embed_dim": 256,
            "lr": 3e-5, "weight_decay": 0.05, "warmup_steps": 20_000, "epochs": 15, "gpus": 8,
            "batch_per_gpu": 80, "global_batch": 640, "wall_time": "3 days 22 hours"}

# Quality figures, as described
QUALITY = {"brisque_peak": 10, "clip_iqa_peak": 0.73, "words_per_sentence_peak": "20–30",
           "unique_4grams_at_100pct": 160_000}
