"""Pixel affinity: labels from confident maps, the affinity loss and the random walk.

AffinityNet (Ahn & Kwak, CVPR 2018) learns which neighbouring cells belong to the same class
from the confident parts of the localization maps, then propagates the maps along those
affinities by a random walk; IRNet (Ahn et al., CVPR 2019) keeps that walk and normalises
the propagated maps by their maximum.

1. ``seed_mask``: confident class / background / ignored labels from the maps (Sec. 3.1),
   ``crf_seed_mask`` the same with boundaries on the image's edges (a dense CRF, IRNet Sec. 4.1);
2. ``pair_offsets`` and ``pair_labels``: the neighbour pairs within a radius at feature
   resolution and their labels (same foreground, same background, different; Sec. 3.3);
3. ``pixel_affinities`` (eq. 1) or IRNet's ``boundary_affinities`` (IRNet Sec. 3.3), chosen by
   the network's head in ``network_affinities``, and ``affinity_loss`` (eq. 5-7);
4. ``random_walk`` and ``propagate``: the walk of Sec. 3.4 (eq. 10-11), banded;
   ``walk_maps`` runs the network and the walk on a batch of images.

Affinities are stored per half-plane offset: ``affinities[b, p, y, x]`` is the affinity of
cell ``(y, x)`` and cell ``(y + dy_p, x + dx_p)``; it serves both directions of the pair.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsss.config import RefineConfig
from wsss.core.masks import dense_crf, label_probs
from wsss.data.palette import IGNORE_INDEX
from wsss.data.transforms import resize_by
from wsss.errors import ConfigError
from wsss.models.affinity import BOUNDARY, STRIDE

BACKGROUND = 0  # dataset index of background where the dataset has one
SAME_FG, SAME_BG, DIFFERENT = 0, 1, 2  # pair labels; -1 = no label
LOG_CLAMP = 1e-5  # affinities are clamped to [1e-5, 1 - 1e-5] inside the loss's logs
NORM_EPS = 1e-5


def seed_mask(maps: np.ndarray | torch.Tensor, class_ids: Sequence[int], has_background: bool,
              fg_threshold: float, bg_threshold: float, margin: float) -> np.ndarray:
    """Affinity labels from confident maps (AffinityNet Sec. 3.1): uint8 [H, W] of dataset ids.

    Args:
        maps: float [K, H, W] in [0, 1], the maps of the K present classes.
        class_ids: their K dataset class ids.
        has_background: whether dataset id 0 is background.
        fg_threshold: with background, a pixel whose max map is >= this is its arg-max class;
            without, the arg-max class also needs top-1 >= this.
        bg_threshold: with background, a pixel whose max map is < this is background (0).
        margin: without background, the arg-max class also needs ``top1 - top2 >= margin``
            (top2 = 0 with a single class).

    Returns:
        uint8 [H, W]: class ids, 0 for background, 255 (``IGNORE_INDEX``) for pixels between
        the thresholds or without a clear winner. Ties go to the earlier class. With K == 0 the
        mask is all background, or all 255 without a background class.

    Raises:
        ConfigError (a ValueError): a threshold outside its range (``affinity.fg_threshold`` in
            (0, 1], ``affinity.bg_threshold`` in [0, fg_threshold], ``affinity.margin`` in
            [0, 1)).
        ValueError: maps not [K, H, W], or not one valid class id per map.
    """
    arr, ids = _seed_inputs(maps, class_ids, has_background, fg_threshold, bg_threshold, margin)
    if ids.size == 0:
        return np.full(arr.shape[1:], BACKGROUND if has_background else IGNORE_INDEX, np.uint8)
    best = arr.argmax(axis=0)
    top1 = np.take_along_axis(arr, best[None], axis=0)[0]
    mask = ids[best].astype(np.uint8)
    if has_background:
        mask[top1 < fg_threshold] = IGNORE_INDEX
        mask[top1 < bg_threshold] = BACKGROUND
        return mask
    top2 = np.partition(arr, -2, axis=0)[-2] if ids.size > 1 else np.zeros_like(top1)
    mask[(top1 < fg_threshold) | (top1 - top2 < margin)] = IGNORE_INDEX
    return mask


def crf_seed_mask(image: np.ndarray, maps: np.ndarray | torch.Tensor,
                  class_ids: Sequence[int], has_background: bool, fg_threshold: float,
                  bg_threshold: float, margin: float, crf: RefineConfig) -> np.ndarray:
    """Affinity labels from confident maps, their boundaries moved to the image's edges by a
    dense CRF: uint8 [H, W] of dataset ids, 255 where no label is confident.

    With a background class (IRNet, Ahn et al., CVPR 2019, Sec. 4.1; AffinityNet's low / high
    alpha CRF of Sec. 4.2 in spirit): the maps plus a constant background score, once at
    ``fg_threshold`` and once at ``bg_threshold``, are arg-maxed and each label map is refined
    by the CRF (label unary, ``crf.crf_label_confidence``). A pixel is its class where the
    first CRF says a class, background where both say background, and ignored where only the
    second sees a class (the band between the two thresholds, now bounded by image edges).

    Without one: the arg-max of the maps, CRF-refined the same way; ignored where the maps of
    the CRF's class are below ``fg_threshold`` or where the CRF's own distribution leads its
    runner-up by less than ``margin`` (probabilities; the margin of :func:`seed_mask` moved
    from the maps to the CRF's output).

    Args:
        image: RGB uint8 [H, W, 3].
        maps: float [K, H, W] in [0, 1], the maps of the K present classes.
        class_ids: their K dataset class ids.
        has_background: whether dataset id 0 is background.
        fg_threshold, bg_threshold, margin: as in :func:`seed_mask`.
        crf: the ``crf_*`` kernels and iterations (``RefineConfig``), as in
            ``wsss.core.masks.dense_crf``.

    Raises:
        ConfigError (a ValueError): a threshold outside its range (see :func:`seed_mask`) or a
            ``refine.crf_*`` value pydensecrf cannot compute on this image.
        ValueError: maps not [K, H, W], not one valid class id per map, or an image of another
            size.
        NativeCrash: pydensecrf crashed.
    """
    arr, ids = _seed_inputs(maps, class_ids, has_background, fg_threshold, bg_threshold, margin)
    if ids.size == 0:  # nothing to refine: the plain seeds (all background, or all ignored)
        return seed_mask(arr, ids, has_background, fg_threshold, bg_threshold, margin)
    arr = arr.astype(np.float32, copy=False)
    if has_background:
        fg = _crf_probs(image, arr, fg_threshold, crf).argmax(axis=0)
        bg = _crf_probs(image, arr, bg_threshold, crf).argmax(axis=0)
        mask = np.append(ids, BACKGROUND)[fg].astype(np.uint8)
        mask[(fg == ids.size) & (bg != ids.size)] = IGNORE_INDEX
        return mask
    probs = _crf_probs(image, arr, None, crf)
    refined = probs.argmax(axis=0)
    mask = ids[refined].astype(np.uint8)
    weak = np.take_along_axis(arr, refined[None], axis=0)[0] < fg_threshold
    if ids.size > 1:
        top2 = np.partition(probs, -2, axis=0)[-2:]
        weak |= top2[1] - top2[0] < margin
    mask[weak] = IGNORE_INDEX
    return mask


def _crf_probs(image: np.ndarray, maps: np.ndarray, background: float | None,
               crf: RefineConfig) -> np.ndarray:
    """The CRF's distributions float32 [K', H, W] from the arg-max of maps [K, H, W] (plus a
    constant ``background`` score as row K when given; K' = K or K + 1), label unary with
    ``crf.crf_label_confidence``; one-hot when K' == 1."""
    if background is not None:
        maps = np.concatenate([maps, np.full((1, *maps.shape[1:]), background, maps.dtype)])
    probs = label_probs(maps.argmax(axis=0), maps.shape[0], crf.crf_label_confidence)
    return dense_crf(image, probs, crf) if maps.shape[0] > 1 else np.ones_like(probs)


def _seed_inputs(maps: np.ndarray | torch.Tensor, class_ids: Sequence[int],
                 has_background: bool, fg_threshold: float, bg_threshold: float,
                 margin: float) -> tuple[np.ndarray, np.ndarray]:
    """The checked inputs of the seed functions: maps as an array [K, H, W] and class ids
    int64 [K]; raises what :func:`seed_mask` documents."""
    _check_thresholds(fg_threshold, bg_threshold, margin)
    arr = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
    if arr.ndim != 3 or arr.shape[0] != ids.size:
        raise ValueError(f"maps must be [K, H, W] with one class id each, got shape {arr.shape} "
                         f"and {ids.size} class ids")
    low = 1 if has_background else 0
    if ((ids < low) | (ids >= IGNORE_INDEX)).any():
        raise ValueError(f"class ids {ids.tolist()} must lie in {low}..{IGNORE_INDEX - 1}")
    return arr, ids


def _check_thresholds(fg_threshold: float, bg_threshold: float, margin: float) -> None:
    if not 0.0 < fg_threshold <= 1.0:
        raise ConfigError(f"affinity.fg_threshold must be in (0, 1], got {fg_threshold}")
    if not 0.0 <= bg_threshold <= fg_threshold:
        raise ConfigError(f"affinity.bg_threshold must be in [0, affinity.fg_threshold = "
                          f"{fg_threshold}], got {bg_threshold}")
    if not 0.0 <= margin < 1.0:
        raise ConfigError(f"affinity.margin must be in [0, 1), got {margin}")


def pair_offsets(radius: int) -> torch.Tensor:
    """Half-plane neighbour offsets int64 [P, 2], rows (dy, dx), in feature-map cells.

    The offsets with ``dy**2 + dx**2 < radius**2`` and ``dy > 0``, or ``dy == 0`` and
    ``dx > 0``, ordered by dy then dx: each unordered pair of cells within the radius once
    (AffinityNet Sec. 3.3 uses radius 5 at feature resolution; P = 34 there).

    Raises:
        ConfigError (a ValueError): ``radius`` < 1 (``affinity.radius``).
    """
    if radius < 1:
        raise ConfigError(f"affinity.radius must be >= 1, got {radius}")
    rows = [(dy, dx) for dy in range(radius) for dx in range(-radius + 1, radius)
            if (dy > 0 or dx > 0) and dy * dy + dx * dx < radius * radius]
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, 2)


def _windows(height: int, width: int, dy: int, dx: int) -> tuple[tuple[slice, slice],
                                                                  tuple[slice, slice]] | None:
    """Slices (of cells i, of cells j = i + (dy, dx)) over the cells i whose j is inside an
    ``height`` x ``width`` map; None when no such i exists."""
    rows, cols = height - abs(dy), width - abs(dx)
    if rows <= 0 or cols <= 0:
        return None
    y0, x0 = max(0, -dy), max(0, -dx)
    return ((slice(y0, y0 + rows), slice(x0, x0 + cols)),
            (slice(y0 + dy, y0 + dy + rows), slice(x0 + dx, x0 + dx + cols)))


def _offset_list(offsets: torch.Tensor) -> list[tuple[int, int]]:
    if offsets.ndim != 2 or offsets.shape[1] != 2:
        raise ValueError(f"offsets must be [P, 2] rows (dy, dx), got shape {tuple(offsets.shape)}")
    return [(int(dy), int(dx)) for dy, dx in offsets.tolist()]


def pair_labels(seeds: torch.Tensor, offsets: torch.Tensor,
                background: int | None) -> torch.Tensor:
    """Labels int8 [B, P, h, w] of the pairs (i, i + offset) from seeds [B, h, w].

    ``seeds`` holds dataset ids (long or uint8) at feature resolution, 255 = ignored. For cell
    i = (y, x) and j = (y + dy_p, x + dx_p): ``SAME_FG`` when both carry the same class other
    than ``background``; ``SAME_BG`` when both are ``background`` (None: never, every id is a
    class); ``DIFFERENT`` when both are labelled with different ids; -1 when either is 255 or
    j lies outside the map (AffinityNet Sec. 3.3).

    Raises:
        ValueError: seeds not [B, h, w] or offsets not [P, 2].
    """
    if seeds.ndim != 3:
        raise ValueError(f"seeds must be [B, h, w], got shape {tuple(seeds.shape)}")
    pairs = _offset_list(offsets)
    batch, height, width = seeds.shape
    seeds = seeds.long()
    labels = torch.full((batch, len(pairs), height, width), -1, dtype=torch.int8,
                        device=seeds.device)
    for index, (dy, dx) in enumerate(pairs):
        window = _windows(height, width, dy, dx)
        if window is None:
            continue
        first, second = seeds[(slice(None), *window[0])], seeds[(slice(None), *window[1])]
        known = (first != IGNORE_INDEX) & (second != IGNORE_INDEX)
        same = first == second
        is_bg = first == background if background is not None else torch.zeros_like(same)
        label = torch.full_like(first, -1)
        label[known & ~same] = DIFFERENT
        label[known & same & ~is_bg] = SAME_FG
        label[known & same & is_bg] = SAME_BG
        labels[(slice(None), index, *window[0])] = label.to(torch.int8)
    return labels


def pixel_affinities(features: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Affinities [B, P, h, w] in (0, 1] of features [B, D, h, w]; 0 where j is off the map.

    ``a_ij = exp(-mean_d |f_i - f_j|)``: AffinityNet eq. 1 uses the L1 distance; the mean over
    the D channels keeps it independent of D. Differentiable in ``features``.

    Raises:
        ValueError: features not [B, D, h, w] or offsets not [P, 2].
    """
    if features.ndim != 4:
        raise ValueError(f"features must be [B, D, h, w], got shape {tuple(features.shape)}")

    def distance(window: tuple[tuple[slice, slice], tuple[slice, slice]], *_: int) -> torch.Tensor:
        first = features[(slice(None), slice(None), *window[0])]
        second = features[(slice(None), slice(None), *window[1])]
        return torch.exp(-(first - second).abs().mean(dim=1))

    return _pair_planes(features, offsets, distance)


def _pair_planes(source: torch.Tensor, offsets: torch.Tensor,
                 affinity: Callable[..., torch.Tensor]) -> torch.Tensor:
    """[B, P, h, w] from ``source`` [B, C, h, w]: for offset p = (dy, dx),
    ``affinity(windows, dy, dx)`` [B, rows, cols] on the cells i whose j = i + (dy, dx) is on
    the map (``windows`` as :func:`_windows` gives them), 0 elsewhere."""
    batch, _, height, width = source.shape
    planes = []
    for dy, dx in _offset_list(offsets):
        plane = source.new_zeros(batch, height, width)
        window = _windows(height, width, dy, dx)
        if window is not None:
            plane = F.pad(affinity(window, dy, dx), _padding(window[0], height, width))
        planes.append(plane)
    if not planes:
        return source.new_zeros(batch, 0, height, width)
    return torch.stack(planes, dim=1)


def segment_cells(dy: int, dx: int) -> list[tuple[int, int]]:
    """The cells (rows (cy, cx), in feature-map cells from i) of the straight segment from i to
    j = i + (dy, dx), both ends included: ``max(|dy|, |dx|) + 1`` evenly spaced points rounded
    to the nearest cell (halves rounded up), in order from i, without repeats."""
    steps = max(abs(dy), abs(dx))
    cells: list[tuple[int, int]] = []
    for k in range(steps + 1):
        cell = ((math.floor(k * dy / steps + 0.5), math.floor(k * dx / steps + 0.5))
                if steps else (0, 0))
        if cell not in cells:
            cells.append(cell)
    return cells


def boundary_affinities(boundary: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Affinities [B, P, h, w] in [0, 1] of a boundary map [B, 1, h, w] in [0, 1]; 0 where j is
    off the map.

    IRNet (Ahn et al., CVPR 2019) Sec. 3.3: ``a_ij = 1 - max_k B_k`` over the cells k of the
    segment from i to j (:func:`segment_cells`, both ends included), so two cells have a high
    affinity exactly when no boundary lies between them. Differentiable in ``boundary`` (the
    gradient reaches the strongest cell of each segment).

    Raises:
        ValueError: boundary not [B, 1, h, w] or offsets not [P, 2].
    """
    if boundary.ndim != 4 or boundary.shape[1] != 1:
        raise ValueError(f"boundary must be [B, 1, h, w], got shape {tuple(boundary.shape)}")

    def no_boundary(window: tuple[tuple[slice, slice], tuple[slice, slice]], dy: int,
                    dx: int) -> torch.Tensor:
        rows, cols = window[0]
        return 1.0 - torch.stack([
            boundary[:, 0, rows.start + cy:rows.stop + cy, cols.start + cx:cols.stop + cx]
            for cy, cx in segment_cells(dy, dx)]).amax(dim=0)

    return _pair_planes(boundary, offsets, no_boundary)


def network_affinities(model: torch.nn.Module, images: torch.Tensor,
                       offsets: torch.Tensor) -> torch.Tensor:
    """Affinities [B, P, h, w] of normalised images [B, 3, H, W] by an affinity network
    (``wsss.models.affinity.AffinityNet``, DDP-wrapped or not) for the half-plane ``offsets``
    [P, 2]: :func:`pixel_affinities` of its features (``head="feature"``, AffinityNet) or
    :func:`boundary_affinities` of its boundary map (``head="boundary"``, IRNet)."""
    output = model(images)
    if getattr(model, "module", model).head == BOUNDARY:
        return boundary_affinities(output, offsets.to(output.device))
    return pixel_affinities(output, offsets.to(output.device))


def _padding(window: tuple[slice, slice], height: int, width: int) -> tuple[int, int, int, int]:
    """``F.pad`` widths (left, right, top, bottom) putting ``window`` back into h x w."""
    rows, cols = window
    return cols.start, width - cols.stop, rows.start, height - rows.stop


def affinity_loss(affinities: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """AffinityNet eq. 5-7: ``loss = fg_pos / 4 + bg_pos / 4 + neg / 2``.

    Without a background class no pair is ``SAME_BG``, so the negatives weigh two thirds of
    the loss. Weighing them by 1/4, 1/2 (positives and negatives alike) or 3/4 instead moved
    MSRC-21's walk + CRF pseudo-masks to 47.7, 49.5 and 50.2 mIoU against 50.0
    (``benchmarks/results/random_walk_heads.md``), so eq. 7 stands as written.

    Args:
        affinities: [B, P, h, w] in [0, 1] (``pixel_affinities`` or ``boundary_affinities``).
        labels: int8 [B, P, h, w] (``pair_labels``; -1 pairs are left out).

    Returns:
        scalars "loss", "fg_pos" (mean ``-log a`` over ``SAME_FG`` pairs), "bg_pos" (over
        ``SAME_BG`` pairs) and "neg" (mean ``-log(1 - a)`` over ``DIFFERENT`` pairs); ``a`` is
        clamped to [1e-5, 1 - 1e-5]. A term without pairs is 0 and stays in the graph.

    Raises:
        ValueError: affinities and labels of different shapes.
    """
    if affinities.shape != labels.shape:
        raise ValueError(f"affinities {tuple(affinities.shape)} and labels "
                         f"{tuple(labels.shape)} differ in shape")
    clamped = affinities.clamp(LOG_CLAMP, 1.0 - LOG_CLAMP)
    terms = {}
    for name, kind, cost in (("fg_pos", SAME_FG, -torch.log(clamped)),
                             ("bg_pos", SAME_BG, -torch.log(clamped)),
                             ("neg", DIFFERENT, -torch.log1p(-clamped))):
        chosen = (labels == kind).to(cost.dtype)
        terms[name] = (cost * chosen).sum() / chosen.sum().clamp(min=1.0)
    terms["loss"] = terms["fg_pos"] / 4 + terms["bg_pos"] / 4 + terms["neg"] / 2
    return terms


def random_walk(maps: torch.Tensor, affinities: torch.Tensor, offsets: torch.Tensor, beta: float,
                iterations: int) -> torch.Tensor:
    """Propagate maps [B, K, h, w] along affinities [B, P, h, w]: ``T^t`` applied to each map.

    AffinityNet Sec. 3.4 (eq. 10-11): ``A_ij = a_ij ** beta`` for the pairs within the radius
    in both directions (A is symmetric: ``affinities[:, p]`` serves (i, j) and (j, i)),
    ``A_ii = 1``, ``T = D^-1 A`` with ``D`` the diagonal of A's row sums (the degrees), and
    ``out = T(T(...T(maps)))`` with ``iterations`` factors. Banded: each step gathers the
    2P + 1 neighbours by slicing a padded copy of the maps (no N x N matrix), on the maps'
    device, for all B images and K maps at once.

    Invariants: rows of T sum to 1, so a constant map stays constant and the values stay in
    [min, max] of the input; the walk conserves *degree-weighted* mass per map,
    ``sum_i d_i out_i == sum_i d_i maps_i`` (because A is symmetric), not the plain sum; cells
    with no path of positive affinity to a seed stay exactly 0.

    ``iterations`` counts applications of T. The reference code reaches ``T^256`` by squaring
    T eight times (psa ``logt=8``, IRNet ``exp_times=8``), so their setting is
    ``iterations=256`` here; the banded cost grows linearly with it.

    Args:
        maps: float [B, K, h, w], non-negative.
        affinities: [B, P, h, w] in [0, 1] for the half-plane ``offsets`` [P, 2]
            (``pixel_affinities``); values where ``i + offset`` leaves the map are ignored.
        beta: the power on the affinities (``refine.rw_beta``), > 0.
        iterations: t (``refine.rw_iterations``), >= 1.

    Returns:
        float [B, K, h, w] in the maps' dtype.

    Raises:
        ConfigError (a ValueError): beta <= 0 or iterations < 1, naming the key.
        ValueError: maps and affinities of different (B, h, w), or affinities with another
            channel count than ``offsets`` has rows.
    """
    if not beta > 0:
        raise ConfigError(f"refine.rw_beta must be > 0, got {beta}")
    if iterations < 1:
        raise ConfigError(f"refine.rw_iterations must be >= 1, got {iterations}")
    pairs = _offset_list(offsets)
    _check_walk_shapes(maps, affinities, len(pairs))
    weights, shifts = transition_bands(affinities.to(maps.device, maps.dtype), pairs, beta)
    height, width = maps.shape[2:]
    reach = max([0] + [max(abs(dy), abs(dx)) for dy, dx in pairs])
    values = maps
    for _ in range(iterations):
        padded = F.pad(values, (reach, reach, reach, reach))
        neighbours = torch.stack([padded[..., reach + dy:reach + dy + height,
                                         reach + dx:reach + dx + width] for dy, dx in shifts], 2)
        values = (neighbours * weights).sum(dim=2)
    return values


def _check_walk_shapes(maps: torch.Tensor, affinities: torch.Tensor, num_pairs: int) -> None:
    if maps.ndim != 4 or affinities.ndim != 4:
        raise ValueError(f"maps must be [B, K, h, w] and affinities [B, P, h, w], got "
                         f"{tuple(maps.shape)} and {tuple(affinities.shape)}")
    batch, _, height, width = maps.shape
    a_batch, channels, a_height, a_width = affinities.shape
    if (batch, height, width) != (a_batch, a_height, a_width):
        raise ValueError(f"maps of another size than the affinity network's features: maps "
                         f"{height} x {width} (batch {batch}), features {a_height} x {a_width} "
                         f"(batch {a_batch})")
    if channels != num_pairs:
        raise ValueError(f"affinities have {channels} channels but there are {num_pairs} offsets")


def transition_bands(affinities: torch.Tensor, pairs: Sequence[tuple[int, int]], beta: float,
                     ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The rows of ``T = D^-1 A`` as bands: weights [B, 1, 2P + 1, h, w] and their shifts.

    ``weights[b, 0, s, y, x]`` is ``T_ij`` for cell i = (y, x) and j = i + ``shifts[s]``
    (0 where j is off the map): shift 0 is the self-loop ``1 / d_i``, shifts 1..P the offsets
    (``a_ij ** beta / d_i``), shifts P+1..2P their opposites (``a_ji ** beta / d_i``, the
    affinity stored at j). ``d_i = 1 + sum`` of the 2P powered affinities of i.
    """
    batch, _, height, width = affinities.shape
    forward = affinities.new_zeros(batch, len(pairs), height, width)
    backward = torch.zeros_like(forward)
    for index, (dy, dx) in enumerate(pairs):
        window = _windows(height, width, dy, dx)
        if window is not None:
            powered = affinities[(slice(None), index, *window[0])].clamp(min=0.0) ** beta
            forward[(slice(None), index, *window[0])] = powered
            backward[(slice(None), index, *window[1])] = powered
    bands = torch.cat([torch.ones_like(forward[:, :1]), forward, backward], dim=1)
    weights = bands / bands.sum(dim=1, keepdim=True)
    shifts = [(0, 0)] + list(pairs) + [(-dy, -dx) for dy, dx in pairs]
    return weights[:, None], shifts


def propagate(maps: torch.Tensor, affinities: torch.Tensor, offsets: torch.Tensor, beta: float,
              iterations: int) -> torch.Tensor:
    """Refine one image's maps by the random walk (AffinityNet Sec. 3.4; IRNet's normalisation).

    The maps go down to the affinity grid, through :func:`random_walk`, back up bilinearly to
    the image's size, and are divided by their largest value over all classes (+1e-5), as
    IRNet does (``make_sem_seg_labels``), so the result lies in [0, 1] again and the classes
    keep their relative strength (a per-class maximum would lift a weak class to 1: 0.4-1.0
    points of pseudo-mask mIoU lower on the synthetic set, three beta / t settings).

    Down-sampling: when the grid is the AffinityNet's (``ceil(H / 8) x ceil(W / 8)``), each
    cell gets the mean of the pixels it covers at stride 8 (``avg_pool2d``, the last row and
    column averaging only the pixels inside the image), and up-sampling interpolates at stride
    8 then crops to H x W (as IRNet does), so cells and pixels stay aligned whatever H and W.
    Other grids fall back to ``mode="area"`` (the mean over each cell's share of the image;
    no aliasing, unlike plain bilinear) and bilinear up-sampling to (H, W).

    Args:
        maps: float [K, H, W] in [0, 1] at the image's size (pixels).
        affinities: [P, h, w] at feature resolution (``pixel_affinities`` of one image).
        offsets: [P, 2], ``beta``, ``iterations``: see :func:`random_walk`.

    Returns:
        float [K, H, W] in [0, 1] on the maps' device; the input itself when K == 0.

    Raises:
        ValueError: see :func:`random_walk`; also maps not [K, H, W] or affinities not
            [P, h, w].
    """
    if maps.ndim != 3 or affinities.ndim != 3:
        raise ValueError(f"maps must be [K, H, W] and affinities [P, h, w], got "
                         f"{tuple(maps.shape)} and {tuple(affinities.shape)}")
    if maps.shape[0] == 0:
        return maps
    (height, width), (cells_h, cells_w) = maps.shape[1:], affinities.shape[1:]
    aligned = (-(-height // STRIDE), -(-width // STRIDE)) == (cells_h, cells_w)
    maps = maps if maps.is_floating_point() else maps.float()
    if aligned:
        cells = F.avg_pool2d(maps[None], STRIDE, ceil_mode=True)
    else:
        cells = F.interpolate(maps[None], size=(cells_h, cells_w), mode="area")
    walked = random_walk(cells, affinities[None].to(maps.device), offsets, beta, iterations)
    if aligned:
        up = F.interpolate(walked, size=(cells_h * STRIDE, cells_w * STRIDE), mode="bilinear",
                           align_corners=False)[0, :, :height, :width]
    else:
        up = F.interpolate(walked, size=(height, width), mode="bilinear", align_corners=False)[0]
    return up / (up.max() + NORM_EPS)


@torch.no_grad()
def walk_maps(model: torch.nn.Module, images: torch.Tensor, maps: Sequence[torch.Tensor],
              offsets: torch.Tensor, beta: float, iterations: int,
              image_scale: float = 1.0) -> list[torch.Tensor]:
    """The random walk of a batch of same-size images: one forward pass of the affinity
    network, then :func:`propagate` of each image's maps (AffinityNet Sec. 3.4).

    Args:
        model: the affinity network (features or boundaries at stride 8), in eval mode.
        images: normalised float [B, 3, H, W] on the model's device (pixels).
        maps: B float tensors [K_b, H, W] in [0, 1], each image's present classes.
        offsets: [P, 2] pair offsets of the network's radius (``pair_offsets``).
        beta, iterations: the walk's ``refine.rw_beta`` and ``refine.rw_iterations``.
        image_scale: the network's training resolution (``data.image_scale``): the images
            are resized by it before the forward pass.

    Returns:
        B float tensors [K_b, H, W] in [0, 1] on the images' device.

    Raises:
        ValueError: see :func:`propagate`; also not one maps tensor per image.
    """
    if len(maps) != images.shape[0]:
        raise ValueError(f"got {len(maps)} maps tensors for {images.shape[0]} images")
    affinities = network_affinities(model, resize_by(images, image_scale), offsets)
    return [propagate(image_maps.to(images.device), image_affinities, offsets, beta, iterations)
            for image_maps, image_affinities in zip(maps, affinities)]
