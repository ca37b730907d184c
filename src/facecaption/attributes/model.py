"""The attribute classifier as an ``nn.Module`` (no training code here).

* ``small_cnn``: a stride-2 stem and four conv stages, about 0.27 M parameters; trains in about a
  minute on 2 CPU cores, the embedded default;
* ``resnet18/34/50``: torchvision ResNets built with ``weights=None`` (nothing is downloaded); an optional
  local state_dict (``attributes.weights``) initialises the backbone, the ResNet-50-class setup of the paper.

All output one logit per attribute (multi-label, sigmoid).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

ARCHS = ("small_cnn", "resnet18", "resnet34", "resnet50")
# ImageNet statistics: inputs are normalised with them whatever the backbone
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """A stride-2 stem, then conv + max-pool stages doubling the width; about 0.27 M parameters at width 16."""

    def __init__(self, n_out: int, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv(3, w, stride=2), _conv(w, 2 * w), nn.MaxPool2d(2), _conv(2 * w, 4 * w), nn.MaxPool2d(2),
            _conv(4 * w, 8 * w), nn.MaxPool2d(2), _conv(8 * w, 8 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(2)  # keeps a coarse layout: top (hair, hat) vs bottom (beard, tie)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(8 * w * 4, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


def build(arch: str, n_out: int, width: int = 16, weights: str | None = None) -> nn.Module:
    """The classifier for ``n_out`` attributes; ``weights`` (a local file) initialises the backbone."""
    if arch == "small_cnn":
        model = SmallCNN(n_out, width)
    elif arch in ("resnet18", "resnet34", "resnet50"):
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None)
        model.fc = nn.Linear(model.fc.in_features, n_out)
    else:
        raise ValueError(f"attributes.arch: unknown backbone {arch!r}; one of {', '.join(ARCHS)}")
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        own = model.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not usable:
            raise ValueError(f"attributes.weights: {weights} holds no tensor that fits {arch}")
        model.load_state_dict(usable, strict=False)
        log.info("initialised %d of %d tensors from %s", len(usable), len(own), weights)
    return model
