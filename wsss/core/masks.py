"""Pseudo-masks from class activation maps: background scores, dense CRF, confidence marking.

One path turns the normalised maps of the classes present in an image into a label mask:

1. ``class_scores``: the maps [K, H, W] plus, where the dataset has a background class, a
   background score (a constant threshold, or ``(1 - max_c map) ** alpha``);
2. ``dense_crf`` (optional): a fully connected CRF over those K' classes only;
3. arg-max, mapped to dataset class ids;
4. ``mark_uncertain``: labels that the maps do not support confidently become 255.

``pseudo_mask`` runs all four steps; ``masks_from_maps`` is the special case "constant
threshold, no CRF, no confidence marking". ``make_pseudo_mask`` is the one entry every step
uses: a sample's maps through its method's ``pseudo_mask`` (which may add saliency).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from wsss.config import RefineConfig
from wsss.core.native_crf import CRF_WORKER, MeanFieldJob, mean_field
from wsss.core.saliency import saliency_for
from wsss.crf_limits import size_violation
from wsss.data.palette import IGNORE_INDEX
from wsss.data.reader import Sample

if TYPE_CHECKING:
    from wsss.methods.base import Method

BACKGROUND = 0


def masks_from_maps(maps: np.ndarray | torch.Tensor, class_ids: Sequence[int],
                    has_background: bool, bg_threshold: float = 0.25) -> np.ndarray:
    """Label mask uint8 [H, W] from maps float [K, H, W] in [0, 1] of the K present classes.

    ``class_ids[k]`` is the dataset class index of ``maps[k]``.

    * With a background class (index 0): a pixel is background where ``max_k maps[k]`` is
      strictly below ``bg_threshold``, else ``class_ids`` of the arg-max.
    * Without one: every pixel gets ``class_ids`` of the arg-max over the present classes;
      ``bg_threshold`` is unused.

    Ties go to the earlier entry of ``class_ids``. With K == 0 the mask is all background, or
    all ``IGNORE_INDEX`` when the dataset has no background class.
    """
    cfg = RefineConfig(bg_mode="threshold", bg_threshold=bg_threshold, crf=False)
    return pseudo_mask(None, maps, class_ids, has_background, cfg)


def make_pseudo_mask(method: Method, sample: Sample, maps: np.ndarray, class_ids: Sequence[int],
                     has_background: bool, cfg: RefineConfig, data_root: str) -> np.ndarray:
    """``method``'s pseudo-mask uint8 [H, W] of one sample (255 = uncertain).

    Args:
        method: the method that made the maps (``Method.pseudo_mask``: background score,
            saliency where the method uses it, CRF when ``cfg.crf``, confidence marking).
        sample: the decoded sample; its image RGB uint8 [H, W, 3] feeds the CRF and saliency.
        maps: float [K, H, W] in [0, 1] of the K present classes, at the image's size.
        class_ids: the K dataset class ids of ``maps``.
        has_background: whether class 0 is background.
        cfg: the ``refine`` settings.
        data_root: the dataset folder (local path or URI), where saliency maps are looked up.

    Raises:
        ValueError: the maps are not the image's size (the message names the sample).
    """
    image = sample.image
    if image.shape[:2] != maps.shape[1:]:
        raise ValueError(f"maps of '{sample.id}' are {maps.shape[2]}x{maps.shape[1]} but the "
                         f"image is {image.shape[1]}x{image.shape[0]}")
    return method.pseudo_mask(image, maps, class_ids, has_background, cfg,
                              lambda source: saliency_for(data_root, sample.id, image, source))


def class_scores(maps: np.ndarray | torch.Tensor, class_ids: Sequence[int],
                 has_background: bool, bg: RefineConfig) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the present classes plus background.

    Args:
        maps: float [K, H, W] in [0, 1], one map per present class.
        class_ids: the K dataset class ids of ``maps``.
        has_background: whether the dataset has a background class (index 0).
        bg: ``bg_mode`` "threshold" (constant ``bg_threshold``) or "power"
            (``(1 - max_k maps[k]) ** bg_power``); unused without a background class.

    Returns:
        scores float [K', H, W] (the maps' float dtype) and their dataset class ids int64
        [K']. With a background class, K' = K + 1 and background is the *last* row, so an
        arg-max tie between a class and the background goes to the class (a map equal to the
        threshold is foreground).
    """
    arr = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float32)
    ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
    _check_inputs(arr, ids, has_background)
    if not has_background:
        return arr, ids
    if bg.bg_mode == "threshold":
        background = np.full(arr.shape[1:], bg.bg_threshold, dtype=arr.dtype)
    elif bg.bg_mode == "power":
        background = (1.0 - _evidence(arr)) ** bg.bg_power
    else:
        raise ValueError(f"unknown bg_mode '{bg.bg_mode}'; choose threshold or power")
    return np.concatenate([arr, background[None]]), np.append(ids, BACKGROUND)


def dense_crf(image: np.ndarray, probs: np.ndarray, params: RefineConfig) -> np.ndarray:
    """Mean-field inference of a fully connected CRF (Kraehenbuehl & Koltun, 2011), computed by
    pydensecrf in a warm child process (``wsss.core.native_crf``).

    Unary ``-log(clip(probs, crf_min_prob, 1))``; a Gaussian kernel (``crf_gaussian_sxy``,
    ``crf_gaussian_compat``) and a bilateral kernel (``crf_bilateral_sxy``,
    ``crf_bilateral_srgb``, ``crf_bilateral_compat``) with Potts compatibility;
    ``crf_iterations`` steps. Pass only the classes that may occur in the image.

    Args:
        image: RGB uint8 [H, W, 3] (any size, any memory layout).
        probs: float [K, H, W] class probabilities (rows need not sum to 1).
        params: the ``crf_*`` fields are used.

    Returns:
        float32 [K, H, W], per-pixel distributions (``probs`` itself when K <= 1).

    Raises:
        ValueError: see :func:`crf_job`.
        NativeCrash: pydensecrf crashed (segfault, abort); the next call starts a new worker.
    """
    job = crf_job(image, probs, params)
    if job is None:
        return np.asarray(probs, dtype=np.float32)
    height, width = job.image.shape[:2]
    return CRF_WORKER.call(mean_field, job).reshape(-1, height, width)


def crf_job(image: np.ndarray, probs: np.ndarray, params: RefineConfig) -> MeanFieldJob | None:
    """The checked input of :func:`dense_crf` for ``wsss.core.native_crf.mean_field``: contiguous
    image uint8 [H, W, 3] and unary float32 [K, H * W], the kernels; None when K <= 1.

    Raises:
        ValueError: mismatched shapes, NaN or infinite probabilities, an image too large for
            pydensecrf, or (``ConfigError``, naming the key) a ``crf_*`` value outside what
            pydensecrf computes correctly on this image (``wsss.crf_limits``).
    """
    params.validate()
    probs = np.asarray(probs, dtype=np.float32)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != probs.shape[1:]:
        raise ValueError(f"image must be [H, W, 3] matching probs {probs.shape}, "
                         f"got {image.shape}")
    num, height, width = probs.shape
    if num <= 1:
        return None
    params.check_crf(width, height)
    too_large = size_violation(width, height, num)
    if too_large is not None:
        raise ValueError(too_large)
    if not np.isfinite(probs).all():
        raise ValueError("the CRF's class probabilities contain NaN or infinity")
    unary = -np.log(np.clip(probs, params.crf_min_prob, 1.0)).reshape(num, -1)
    return MeanFieldJob(np.ascontiguousarray(image, dtype=np.uint8),
                        np.ascontiguousarray(unary, dtype=np.float32),
                        (params.crf_gaussian_sxy, params.crf_gaussian_compat),
                        (params.crf_bilateral_sxy, params.crf_bilateral_srgb,
                         params.crf_bilateral_compat), params.crf_iterations)


def normalise_scores(scores: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Non-negative scores [K, H, W] -> per-pixel distributions [K, H, W] (uniform where all 0)."""
    scores = np.clip(scores, 0.0, None) + eps
    return scores / scores.sum(axis=0, keepdims=True)


def label_probs(labels: np.ndarray, num: int, confidence: float) -> np.ndarray:
    """Distributions float32 [num, H, W] putting ``confidence`` on ``labels`` int [H, W] (values
    in 0..num-1) and spreading the rest evenly over the other ``num - 1`` rows."""
    rest = (1.0 - confidence) / max(num - 1, 1)
    probs = np.full((num,) + labels.shape, rest, dtype=np.float32)
    np.put_along_axis(probs, labels[None].astype(np.int64), confidence, axis=0)
    return probs


def crf_probs(scores: np.ndarray, cfg: RefineConfig) -> np.ndarray:
    """The CRF's input distributions [K, H, W] from scores [K, H, W], by ``cfg.crf_unary``."""
    if cfg.crf_unary == "labels":
        return label_probs(scores.argmax(axis=0), scores.shape[0], cfg.crf_label_confidence)
    return normalise_scores(scores)


def mark_uncertain(mask: np.ndarray, maps: np.ndarray, has_background: bool,
                   cfg: RefineConfig) -> np.ndarray:
    """Set unconfident labels of ``mask`` uint8 [H, W] to 255 (in place; returns it).

    The evidence of a pixel is ``max_k maps[k]`` (maps [K, H, W]). A class label with evidence
    below ``cfg.fg_confidence`` is uncertain, and so is a background label with evidence above
    ``cfg.bg_confidence``. The CRF can thus move a label only where the maps agree with it
    confidently; elsewhere the pixel is ignored in training.
    """
    if cfg.fg_confidence <= 0.0 and cfg.bg_confidence >= 1.0:
        return mask  # empty confidence band
    evidence = _evidence(maps)
    is_bg = (mask == BACKGROUND) if has_background else np.zeros(mask.shape, dtype=bool)
    uncertain = ((~is_bg & (evidence < cfg.fg_confidence))
                 | (is_bg & (evidence > cfg.bg_confidence)))
    mask[uncertain & (mask != IGNORE_INDEX)] = IGNORE_INDEX
    return mask


def pseudo_mask(image: np.ndarray | None, maps: np.ndarray | torch.Tensor,
                class_ids: Sequence[int], has_background: bool,
                cfg: RefineConfig) -> np.ndarray:
    """Pseudo-mask uint8 [H, W] from maps float [K, H, W] of the present classes.

    Scores (``class_scores``) -> CRF over the present classes (+ background) when ``cfg.crf``
    (needs ``image`` RGB uint8 [H, W, 3]) -> arg-max -> ``mark_uncertain``. With K == 0 the
    mask is all background, or all 255 without a background class.
    """
    scores, ids = class_scores(maps, class_ids, has_background, cfg)
    present_maps = scores[:ids.size - int(has_background)]  # background is the last row
    return mask_from_scores(image, scores, ids, present_maps, has_background, cfg)


def saliency_scores(maps: np.ndarray, class_ids: Sequence[int], saliency: np.ndarray,
                    threshold: float, fusion: str) -> tuple[np.ndarray, np.ndarray]:
    """Scores [K+1, H, W] (background last) fusing class seeds with a saliency map [H, W].

    The background score ``t (1 - s) / (1 - t)`` makes a pixel foreground exactly where the
    saliency ``s`` exceeds ``threshold`` t (``fusion="best_seed"``: class = the arg-max seed,
    scores ``s * map_k / max_k map``), or where ``s * max_k map`` exceeds it
    (``fusion="product"``: salient *and* seeded).
    """
    arr = np.asarray(maps, dtype=np.float32)
    ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
    _check_inputs(arr, ids, True)
    sal = np.clip(np.asarray(saliency, dtype=np.float32), 0.0, 1.0)
    if fusion == "best_seed":
        fg = sal * (arr + 1e-6) / (_evidence(arr) + 1e-6)  # seedless pixels: a tie, still fg
    elif fusion == "product":
        fg = sal * arr
    else:
        raise ValueError(f"unknown saliency fusion '{fusion}'; choose best_seed or product")
    background = threshold * (1.0 - sal) / (1.0 - threshold)
    return np.concatenate([fg, background[None]]), np.append(ids, BACKGROUND)


def mask_from_scores(image: np.ndarray | None, scores: np.ndarray, ids: np.ndarray,
                     present_maps: np.ndarray, has_background: bool,
                     cfg: RefineConfig) -> np.ndarray:
    """Optional CRF over ``scores`` [K', H, W] -> arg-max -> dataset ids ``ids`` [K'] ->
    confidence marking against ``present_maps`` [K, H, W]; uint8 [H, W]."""
    if ids.size == 0:
        return np.full(scores.shape[1:], IGNORE_INDEX, dtype=np.uint8)
    if cfg.crf and ids.size > 1:
        if image is None:
            raise ValueError("the CRF needs the image; pass it or set crf=False")
        scores = dense_crf(image, crf_probs(scores, cfg), cfg)
    mask = ids[scores.argmax(axis=0)].astype(np.uint8)
    return mark_uncertain(mask, present_maps, has_background, cfg)


def _evidence(maps: np.ndarray) -> np.ndarray:
    """Foreground evidence [H, W]: ``max_k maps[k]`` of maps float [K, H, W] (0 when K == 0)."""
    if maps.shape[0] == 0:
        return np.zeros(maps.shape[1:], dtype=maps.dtype)
    return maps.max(axis=0)


def _check_inputs(maps: np.ndarray, ids: np.ndarray, has_background: bool) -> None:
    """Validate maps [K, H, W] against class ids [K]; raises ValueError."""
    if maps.ndim != 3:
        raise ValueError(f"maps must be [K, H, W], got shape {maps.shape}")
    if len(ids) != maps.shape[0]:
        raise ValueError(f"got {len(ids)} class ids for {maps.shape[0]} maps")
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"duplicate class ids {ids.tolist()}")
    low = 1 if has_background else 0
    bad = (ids < low) | (ids >= IGNORE_INDEX)
    if bad.any():
        kind = "foreground class" if has_background else "class"
        raise ValueError(f"class ids {ids[bad].tolist()} are not valid {kind} indices "
                         f"({low}..{IGNORE_INDEX - 1})")
