"""SEC: Seed, Expand and Constrain (Kolesnikov & Lampert, ECCV 2016).

The three losses train a segmenter from weak cues. All take class probabilities ``probs``
[B, K, h, w] (softmax over all K dataset classes, background included) at a reduced resolution:

* ``seeding_loss``: cross-entropy on the seed pixels only (255 = no seed), normalised by each
  image's number of seeds;
* ``expansion_loss``: global weighted rank pooling (GWRP) of each class's probabilities pushed up
  for present classes (decay 0.996), down for absent ones (decay 0 = max pooling) and up for
  the background (decay 0.999);
* ``constrain_loss``: KL(Q || f) between the dense-CRF refinement Q of the output and the output
  f, with Q fixed (``crf_targets`` computes it with :func:`wsss.core.masks.dense_crf`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from wsss.config import RefineConfig, SegmenterConfig
from wsss.data.palette import IGNORE_INDEX
from wsss.core.masks import dense_crf

_EPS = 1e-8


def gwrp(scores: torch.Tensor, decay: float | torch.Tensor) -> torch.Tensor:
    """Global weighted rank pooling [B, K] of scores [B, K, h, w].

    Values sorted in decreasing order get weights ``decay ** j`` (j = 0, 1, ...), normalised to
    sum 1: decay 0 is max pooling, decay 1 average pooling. ``decay`` is a float or a tensor
    broadcastable to [B, K] (one decay per image and class).
    """
    flat = scores.flatten(2).sort(dim=2, descending=True).values  # [B, K, n]
    decay = torch.as_tensor(decay, dtype=flat.dtype, device=flat.device)
    decay = decay.expand(flat.shape[:2]).unsqueeze(-1)  # [B, K, 1]
    ranks = torch.arange(flat.shape[2], dtype=flat.dtype, device=flat.device)
    weights = torch.pow(decay, ranks)  # 0 ** 0 == 1
    return (flat * weights).sum(dim=2) / weights.sum(dim=2)


def seeding_loss(probs: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Mean over images with seeds of -(1/|S|) sum_{u in S} log probs[seeds[u], u].

    Args:
        probs: [B, K, h, w] class probabilities.
        seeds: long [B, h, w], a class index per seed pixel, 255 elsewhere.
    """
    valid = seeds != IGNORE_INDEX
    target = torch.where(valid, seeds, torch.zeros_like(seeds)).unsqueeze(1)
    log_p = probs.clamp_min(_EPS).log().gather(1, target).squeeze(1)  # [B, h, w]
    count = valid.flatten(1).sum(dim=1)  # [B]
    per_image = -(log_p * valid).flatten(1).sum(dim=1) / count.clamp_min(1)
    has_seeds = count > 0
    if not bool(has_seeds.any()):
        return probs.sum() * 0.0
    return per_image[has_seeds].mean()


def expansion_loss(probs: torch.Tensor, present: torch.Tensor, has_background: bool,
                   fg_decay: float = 0.996, bg_decay: float = 0.999,
                   absent_decay: float = 0.0) -> torch.Tensor:
    """SEC's expansion loss, averaged over the batch.

    Per image: -mean_{c present} log G_c - mean_{c absent} log(1 - G_c) - log G_bg, where G is
    GWRP with ``fg_decay`` (present classes), ``absent_decay`` (absent) and ``bg_decay``
    (background, class 0, always present). Without a background class the last term is dropped
    and class 0 is an ordinary class.

    Args:
        probs: [B, K, h, w] class probabilities.
        present: bool [B, K] image-level labels over all K classes.
    """
    present = present.bool().clone()
    is_bg = torch.zeros_like(present)
    if has_background:
        is_bg[:, 0] = True
        present[:, 0] = False
    absent = ~present & ~is_bg
    decay = torch.full(present.shape, absent_decay, dtype=probs.dtype, device=probs.device)
    decay[present] = fg_decay
    decay[is_bg] = bg_decay
    pooled = gwrp(probs, decay).clamp(_EPS, 1.0 - _EPS)  # [B, K]
    loss = -_masked_mean(pooled.log(), present) - _masked_mean((1.0 - pooled).log(), absent)
    if has_background:
        loss = loss - pooled[:, 0].log()
    return loss.mean()


def constrain_loss(probs: torch.Tensor, crf_probs: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of KL(crf_probs || probs), both [B, K, h, w]; crf_probs is constant."""
    target = crf_probs.detach()
    kl = torch.special.xlogy(target, target) - target * probs.clamp_min(_EPS).log()
    return kl.sum(dim=1).mean()


def crf_targets(images: torch.Tensor, probs: torch.Tensor, present: torch.Tensor,
                params: RefineConfig, downscale: float = 1.0) -> torch.Tensor:
    """Dense-CRF refinement Q [B, K, h, w] of ``probs`` over each image's present classes.

    Args:
        images: RGB uint8 [B, 3, H, W]; resized (area) to the probabilities' size h x w.
        probs: [B, K, h, w] network probabilities (detached here).
        present: bool [B, K] classes that may occur (background included where it exists);
            the others get probability 0 in Q.
        params: CRF parameters for full-size images; the kernels' spatial widths ``sxy`` are
            divided by ``downscale`` (the ratio H / h), as SEC does on its 41 x 41 output.
    """
    height, width = probs.shape[-2:]
    small = F.interpolate(images.float(), size=(height, width), mode="area")
    small = small.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    params = dataclasses.replace(
        params, crf_gaussian_sxy=params.crf_gaussian_sxy / downscale,
        crf_bilateral_sxy=params.crf_bilateral_sxy / downscale)
    prob_np = probs.detach().float().cpu().numpy()
    keep = present.bool().cpu().numpy()
    out = np.zeros_like(prob_np)
    for b in range(prob_np.shape[0]):  # one CRF per image, over its present classes
        sub = prob_np[b, keep[b]]
        sub = sub / np.maximum(sub.sum(axis=0, keepdims=True), _EPS)
        out[b, keep[b]] = dense_crf(small[b], sub, params)
    return torch.from_numpy(out).to(device=probs.device, dtype=probs.dtype)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row means [B] of values [B, K] over ``mask`` [B, K] (0 for rows with no entry)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def sec_losses(logits: torch.Tensor, images: torch.Tensor, seeds: torch.Tensor,
               present: torch.Tensor, has_background: bool, seg_cfg: SegmenterConfig,
               crf_params: RefineConfig) -> dict[str, torch.Tensor]:
    """SEC's three losses for one batch, at 1/``seg_cfg.sec_downscale`` of the input size.

    Args:
        logits: [B, K, H, W] segmenter output.
        images: RGB uint8 [B, 3, H, W] (the CRF's pairwise terms).
        seeds: long [B, H, W] seed labels, 255 = no seed (resized by nearest neighbour).
        present: bool [B, K] image-level labels, background included where it exists.
        has_background: whether class 0 is background.
        seg_cfg: ``sec_*`` decays and ``sec_downscale``.
        crf_params: the ``crf_*`` fields of a ``RefineConfig``.

    Returns:
        ``{"seed", "expand", "constrain"}`` scalar losses (SEC sums them with equal weights).
    """
    height, width = logits.shape[-2:]
    size = (max(1, height // seg_cfg.sec_downscale), max(1, width // seg_cfg.sec_downscale))
    probs = torch.softmax(F.interpolate(logits, size=size, mode="bilinear",
                                        align_corners=False), dim=1)
    small_seeds = F.interpolate(seeds[:, None].float(), size=size, mode="nearest")[:, 0].long()
    crf = crf_targets(images, probs, present, crf_params, downscale=height / size[0])
    return {"seed": seeding_loss(probs, small_seeds),
            "expand": expansion_loss(probs, present, has_background, seg_cfg.sec_fg_decay,
                                     seg_cfg.sec_bg_decay, seg_cfg.sec_absent_decay),
            "constrain": constrain_loss(probs, crf)}
