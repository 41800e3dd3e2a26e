"""A fingerprint of this machine's float results under the quality guard's settings.

Run in the guard's environment (``guard.GUARD_ENV``), it trains a small ResNet classifier for a
few steps (convolutions, batch norm, bilinear resizing, AdamW) and runs one dense CRF on fixed
inputs, then hashes every resulting number. Two machines with the same fingerprint compute the
guard's run to the same bits; one with another fingerprint rounds differently somewhere, and
training amplifies that into other numbers (``docs/quality.md``, "The quality guard").

    python tests/quality/numerics.py      # prints the fingerprint (16 hex digits)
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from wsss.config import RefineConfig
from wsss.core.masks import dense_crf
from wsss.models.backbones import build_backbone


def fingerprint() -> str:
    """sha256 (first 16 hex digits) of the weights after 3 AdamW steps of a seeded ResNet-18
    classifier on seeded 64 px images, and of a dense CRF's output on a seeded image."""
    torch.manual_seed(0)
    backbone = build_backbone("resnet18")
    head = torch.nn.Conv2d(backbone.out_channels, 5, 1)
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    images = torch.rand(4, 3, 80, 80)
    labels = (torch.rand(4, 5) > 0.5).float()
    for _ in range(3):
        x = F.interpolate(images, size=(64, 64), mode="bilinear", antialias=True)
        logits = head(backbone(x)).mean(dim=(2, 3))
        loss = F.multilabel_soft_margin_loss(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    digest = hashlib.sha256()
    for p in params:
        digest.update(p.detach().numpy().tobytes())
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    probs = rng.random((3, 48, 64)).astype(np.float32)
    digest.update(dense_crf(image, probs / probs.sum(axis=0), RefineConfig()).tobytes())
    return digest.hexdigest()[:16]


if __name__ == "__main__":
    print(fingerprint())
