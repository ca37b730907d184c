"""The 40 CelebA attributes, in CelebA's column order, and the paper's five groups.

Every stage names attributes with these strings; nothing else in the project spells them out.
"""

from __future__ import annotations

ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
assert len(ATTRIBUTES) == 40

# The paper's five groups (facial features, basics, beard, hairstyle, accessories).
GROUPS: dict[str, tuple[str, ...]] = {
    "facial_features": (
        "Arched_Eyebrows", "Bags_Under_Eyes", "Big_Lips", "Big_Nose", "Bushy_Eyebrows", "Chubby",
        "Double_Chin", "High_Cheekbones", "Mouth_Slightly_Open", "Narrow_Eyes", "Oval_Face",
        "Pale_Skin", "Pointy_Nose", "Rosy_Cheeks", "Smiling",
    ),
    "basics": ("Male", "Young", "Attractive", "Blurry", "Heavy_Makeup"),
    "beard": ("5_o_Clock_Shadow", "Goatee", "Mustache", "No_Beard", "Sideburns"),
    "hairstyle": (
        "Bald", "Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Receding_Hairline",
        "Straight_Hair", "Wavy_Hair",
    ),
    "accessories": (
        "Eyeglasses", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
        "Wearing_Necktie",
    ),
}
assert sorted(a for g in GROUPS.values() for a in g) == sorted(ATTRIBUTES)

INDEX: dict[str, int] = {name: i for i, name in enumerate(ATTRIBUTES)}
