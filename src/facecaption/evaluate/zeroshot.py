"""Zero-shot attributes: each attribute is decided by which of two prompts, a statement and its negation,
the image is closer to in the joint embedding. The FaceCaption-15M paper did not report this."""

from __future__ import annotations

import numpy as np

from facecaption.evaluate.metrics import accuracy_per_column, balanced_accuracy_per_column

# attribute -> (positive, negative) phrase completing "a photo of ..."
PROMPTS: dict[str, tuple[str, str]] = {
    "5_o_Clock_Shadow": ("a person with a five o'clock shadow", "a clean-shaven person"),
    "Arched_Eyebrows": ("a person with arched eyebrows", "a person with straight eyebrows"),
    "Attractive": ("an attractive person", "an unattractive person"),
    "Bags_Under_Eyes": ("a person with bags under the eyes", "a person without bags under the eyes"),
    "Bald": ("a bald person", "a person with hair"),
    "Bangs": ("a person with bangs", "a person without bangs"),
    "Big_Lips": ("a person with big lips", "a person with thin lips"),
    "Big_Nose": ("a person with a big nose", "a person with a small nose"),
    "Black_Hair": ("a person with black hair", "a person without black hair"),
    "Blond_Hair": ("a person with blond hair", "a person without blond hair"),
    "Blurry": ("a blurry photo of a person", "a sharp photo of a person"),
    "Brown_Hair": ("a person with brown hair", "a person without brown hair"),
    "Bushy_Eyebrows": ("a person with bushy eyebrows", "a person with thin eyebrows"),
    "Chubby": ("a chubby person", "a slim person"),
    "Double_Chin": ("a person with a double chin", "a person without a double chin"),
    "Eyeglasses": ("a person with eyeglasses", "a person without eyeglasses"),
    "Goatee": ("a person with a goatee", "a person without a goatee"),
    "Gray_Hair": ("a person with gray hair", "a person without gray hair"),
    "Heavy_Makeup": ("a person wearing heavy makeup", "a person without makeup"),
    "High_Cheekbones": ("a person with high cheekbones", "a person with low cheekbones"),
    "Male": ("a man", "a woman"),
    "Mouth_Slightly_Open": ("a person with the mouth slightly open", "a person with the mouth closed"),
    "Mustache": ("a person with a mustache", "a person without a mustache"),
    "Narrow_Eyes": ("a person with narrow eyes", "a person with wide eyes"),
    "No_Beard": ("a person without a beard", "a person with a beard"),
    "Oval_Face": ("a person with an oval face", "a person with a round face"),
    "Pale_Skin": ("a person with pale skin", "a person with dark skin"),
    "Pointy_Nose": ("a person with a pointy nose", "a person with a rounded nose"),
    "Receding_Hairline": ("a person with a receding hairline", "a person with a full hairline"),
    "Rosy_Cheeks": ("a person with rosy cheeks", "a person without rosy cheeks"),
    "Sideburns": ("a person with sideburns", "a person without sideburns"),
    "Smiling": ("a smiling person", "a person who is not smiling"),
    "Straight_Hair": ("a person with straight hair", "a person with curly hair"),
    "Wavy_Hair": ("a person with wavy hair", "a person with straight hair"),
    "Wearing_Earrings": ("a person wearing earrings", "a person without earrings"),
    "Wearing_Hat": ("a person wearing a hat", "a person without a hat"),
    "Wearing_Lipstick": ("a person wearing lipstick", "a person without lipstick"),
    "Wearing_Necklace": ("a person wearing a necklace", "a person without a necklace"),
    "Wearing_Necktie": ("a person wearing a necktie", "a person without a necktie"),
    "Young": ("a young person", "an old person"),
}


def prompts_for(attribute: str) -> tuple[str, str]:
    if attribute in PROMPTS:
        pos, neg = PROMPTS[attribute]
    else:  # attributes of a custom CSV: use the column name
        words = attribute.replace("_", " ").lower()
        pos, neg = f"a person with {words}", f"a person without {words}"
    return f"a photo of {pos}", f"a photo of {neg}"


def score(image_features: np.ndarray, text_features_fn, attributes: list[str], labels: np.ndarray) -> dict:
    """``text_features_fn(list of texts) -> (n, d)`` array; returns accuracy and balanced accuracy per attribute."""
    texts = [p for a in attributes for p in prompts_for(a)]
    t = text_features_fn(texts)
    pos, neg = t[0::2], t[1::2]
    pred = image_features @ pos.T > image_features @ neg.T
    return {"accuracy": accuracy_per_column(pred, labels), "balanced_accuracy": balanced_accuracy_per_column(pred, labels)}
