"""Pixel affinity (AffinityNet, IRNet): seeds, pair labels, loss, random walk, the network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.core.affinity import (DIFFERENT, SAME_BG, SAME_FG, affinity_loss, pair_labels,
                                boundary_affinities, network_affinities, pair_offsets,
                                pixel_affinities, propagate, random_walk, seed_mask,
                                segment_cells,
                                crf_seed_mask)
from wsss.config import RefineConfig
from wsss.errors import ConfigError
from wsss.models.affinity import HEADS, STRIDE, AffinityNet, build_affinity_net
from wsss.models.backbones import build_backbone
from wsss.train.optim import parameter_groups

IGNORED = 255


# ---------------------------------------------------------------- seed_mask


def test_seed_mask_with_background_has_three_bands() -> None:
    maps = np.array([[[0.90, 0.50, 0.10, 0.70]],
                     [[0.20, 0.60, 0.05, 0.70]]], dtype=np.float32)  # [K=2, H=1, W=4]
    mask = seed_mask(maps, [3, 8], True, fg_threshold=0.7, bg_threshold=0.2, margin=0.0)
    assert mask.dtype == np.uint8
    # 0.9 >= fg -> class 3; 0.6 between -> ignored; 0.1 < bg -> background; a tie at the
    # threshold is foreground and goes to the earlier class
    assert mask.tolist() == [[3, IGNORED, 0, 3]]


def test_seed_mask_without_background_needs_a_margin() -> None:
    maps = np.array([[[0.90, 0.80, 0.30, 0.60]],
                     [[0.20, 0.75, 0.00, 0.10]]], dtype=np.float32)
    mask = seed_mask(maps, [0, 4], False, fg_threshold=0.5, bg_threshold=0.0, margin=0.2)
    # clear winner; top-2 too close; top-1 below fg; clear winner
    assert mask.tolist() == [[0, IGNORED, IGNORED, 0]]
    no_margin = seed_mask(maps, [0, 4], False, fg_threshold=0.5, bg_threshold=0.0, margin=0.0)
    assert no_margin.tolist() == [[0, 0, IGNORED, 0]]
    single = seed_mask(maps[1:], [4], False, fg_threshold=0.5, bg_threshold=0.0, margin=0.7)
    assert single.tolist() == [[IGNORED, 4, IGNORED, IGNORED]]  # top-2 = 0 with one class


def test_seed_mask_without_present_classes() -> None:
    empty = np.zeros((0, 2, 3), dtype=np.float32)
    assert (seed_mask(empty, [], True, 0.5, 0.2, 0.0) == 0).all()
    assert (seed_mask(torch.from_numpy(empty), [], False, 0.5, 0.2, 0.0) == IGNORED).all()


@pytest.mark.parametrize("fg, bg, margin, key", [
    (0.0, 0.0, 0.0, "affinity.fg_threshold"), (1.1, 0.1, 0.0, "affinity.fg_threshold"),
    (0.5, 0.6, 0.0, "affinity.bg_threshold"), (0.5, -0.1, 0.0, "affinity.bg_threshold"),
    (0.5, 0.2, 1.0, "affinity.margin"), (0.5, 0.2, -0.1, "affinity.margin")])
def test_seed_mask_rejects_thresholds_naming_the_key(fg, bg, margin, key) -> None:
    with pytest.raises(ConfigError, match=key):
        seed_mask(np.zeros((1, 2, 2)), [1], True, fg, bg, margin)


# ---------------------------------------------------------------- pairs


def _edge_case(width: int = 48, edge: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """An image dark left of column ``edge`` and bright right of it, and a class map that
    fades smoothly from 1 to 0 across the whole width (its 0.5 level far from the edge)."""
    image = np.full((16, width, 3), 20, np.uint8)
    image[:, edge:] = 230
    ramp = np.clip(1.0 - np.arange(width) / (0.8 * width), 0.0, 1.0).astype(np.float32)
    return image, np.broadcast_to(ramp, (16, width))[None].copy()


def test_crf_seed_mask_with_background_moves_the_boundary_to_the_image_edge() -> None:
    image, maps = _edge_case()
    crf = RefineConfig(crf_iterations=10)
    hard = seed_mask(maps, [2], True, fg_threshold=0.6, bg_threshold=0.2, margin=0.0)
    soft = crf_seed_mask(image, maps, [2], True, 0.6, 0.2, 0.0, crf)
    # without the CRF the class stops where the map falls below 0.6 (column 15) and a wide
    # ignored band follows; with it, the class reaches the edge at column 24 and everything
    # right of the edge is background
    assert (hard[:, :15] == 2).all() and (hard[:, 16:29] == IGNORED).all()
    assert (soft[:, :24] == 2).all() and (soft[:, 24:] == 0).all()


def test_crf_seed_mask_without_background_splits_two_classes_at_the_edge() -> None:
    image, left = _edge_case()
    maps = np.concatenate([left, 1.0 - left])  # class 5 left, class 7 right, 0.5 at column 19
    crf = RefineConfig(crf_iterations=10)
    hard = seed_mask(maps, [5, 7], False, fg_threshold=0.3, bg_threshold=0.0, margin=0.3)
    soft = crf_seed_mask(image, maps, [5, 7], False, 0.3, 0.0, 0.3, crf)
    assert (hard[:, 14:25] == IGNORED).all()  # no clear winner around the maps' crossing
    assert (soft[:, :24] == 5).all() and (soft[:, 24:] == 7).all()


def test_crf_seed_mask_without_evidence_ignores_the_weak_class() -> None:
    image, maps = _edge_case()
    weak = 0.2 * maps  # the class is never confident: nothing may become a seed of it
    soft = crf_seed_mask(image, np.concatenate([weak, weak[:, :, ::-1]]), [5, 7], False,
                         0.3, 0.0, 0.1, RefineConfig())
    assert (soft == IGNORED).all()


def test_pair_offsets_half_plane_within_radius() -> None:
    offsets = pair_offsets(5)
    assert offsets.dtype == torch.int64 and offsets.shape == (34, 2)
    rows = {tuple(row) for row in offsets.tolist()}
    assert len(rows) == 34
    for dy, dx in rows:
        assert dy > 0 or (dy == 0 and dx > 0)
        assert dy * dy + dx * dx < 25
        assert (-dy, -dx) not in rows
    disk = {(dy, dx) for dy in range(-5, 6) for dx in range(-5, 6) if 0 < dy * dy + dx * dx < 25}
    assert rows | {(-dy, -dx) for dy, dx in rows} == disk  # every unordered pair once
    assert pair_offsets(1).shape == (0, 2)
    with pytest.raises(ConfigError, match="affinity.radius"):
        pair_offsets(0)


SEEDS = torch.tensor([[[1, 1, 0],
                       [IGNORED, 2, 0],
                       [0, 0, 0]]])


def test_pair_labels_on_a_hand_made_grid() -> None:
    offsets = torch.tensor([[0, 1], [1, -1], [2, 2]])
    labels = pair_labels(SEEDS, offsets, background=0)
    assert labels.dtype == torch.int8 and labels.shape == (1, 3, 3, 3)
    fg, bg, diff = SAME_FG, SAME_BG, DIFFERENT
    assert labels[0, 0].tolist() == [[fg, diff, -1],  # right neighbour; last column off-map
                                     [-1, diff, -1],  # 255 on either side -> -1
                                     [bg, bg, -1]]
    assert labels[0, 1].tolist() == [[-1, -1, diff],  # down-left neighbour
                                     [-1, diff, bg],
                                     [-1, -1, -1]]
    # only (0, 0) has its (2, 2) neighbour on the map: class 1 against background
    assert labels[0, 2].tolist() == [[diff, -1, -1], [-1, -1, -1], [-1, -1, -1]]


def test_pair_labels_without_background_treats_zero_as_a_class() -> None:
    labels = pair_labels(SEEDS.to(torch.uint8), torch.tensor([[0, 1]]), background=None)
    assert labels[0, 0].tolist() == [[SAME_FG, DIFFERENT, -1],
                                     [-1, DIFFERENT, -1],
                                     [SAME_FG, SAME_FG, -1]]
    assert (labels != SAME_BG).all()


def test_pixel_affinities_are_one_for_equal_features_and_zero_off_the_map() -> None:
    features = torch.zeros(1, 4, 3, 5)
    features[:, :, :, 3:] = 1.0  # two columns differ by 1 in every channel
    affinities = pixel_affinities(features, torch.tensor([[0, 1], [1, 0], [0, 4]]))
    right, down, far = affinities[0]
    assert torch.allclose(right[:, :2], torch.ones(3, 2))
    assert torch.allclose(right[:, 2], torch.full((3,), float(np.exp(-1.0))))
    assert (right[:, 4] == 0).all()  # off the map
    assert torch.allclose(down[:2], torch.ones(2, 5)) and (down[2] == 0).all()
    assert torch.allclose(far[:, 0], torch.full((3,), float(np.exp(-1.0))))
    assert (far[:, 1:] == 0).all()
    noisy = pixel_affinities(torch.randn(2, 8, 6, 7), pair_offsets(3))
    inside = noisy[noisy > 0]
    assert (inside < 1).all() and inside.numel() > 0


# ---------------------------------------------------------------- loss


def test_affinity_loss_falls_as_affinities_move_toward_the_labels() -> None:
    labels = torch.tensor([SAME_FG, SAME_BG, DIFFERENT, -1], dtype=torch.int8).view(1, 4, 1, 1)
    far = torch.tensor([0.3, 0.4, 0.7, 0.5]).view(1, 4, 1, 1)
    near = torch.tensor([0.9, 0.8, 0.1, 0.5]).view(1, 4, 1, 1)
    bad, good = affinity_loss(far, labels), affinity_loss(near, labels)
    for key in ("loss", "fg_pos", "bg_pos", "neg"):
        assert good[key] < bad[key]
    assert torch.isclose(good["fg_pos"], -torch.log(torch.tensor(0.9)))
    assert torch.isclose(good["neg"], -torch.log(torch.tensor(0.9)))
    expected = good["fg_pos"] / 4 + good["bg_pos"] / 4 + good["neg"] / 2
    assert torch.isclose(good["loss"], expected)
    perfect = affinity_loss(torch.tensor([1.0, 1.0, 0.0, 0.5]).view(1, 4, 1, 1), labels)
    assert torch.isfinite(perfect["loss"]) and perfect["loss"] < 1e-4  # clamped logs


def test_affinity_loss_terms_without_pairs_are_zero_and_keep_the_graph() -> None:
    affinities = torch.full((1, 2, 2, 2), 0.5, requires_grad=True)
    labels = torch.full((1, 2, 2, 2), SAME_FG, dtype=torch.int8)
    terms = affinity_loss(affinities, labels)
    assert terms["bg_pos"] == 0 and terms["neg"] == 0
    assert terms["bg_pos"].requires_grad and terms["neg"].requires_grad
    terms["loss"].backward()
    assert (affinities.grad < 0).all()  # raising a same-class affinity lowers the loss


def test_segment_cells_run_straight_from_i_to_j() -> None:
    assert segment_cells(0, 3) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert segment_cells(2, -2) == [(0, 0), (1, -1), (2, -2)]
    assert segment_cells(1, 4) == [(0, 0), (0, 1), (1, 2), (1, 3), (1, 4)]
    assert segment_cells(4, 0) == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)]


def test_boundary_affinities_cut_exactly_the_pairs_whose_segment_meets_the_boundary() -> None:
    # A vertical boundary line at x = 3 of a 6 x 7 map: a pair of cells has affinity 1 when
    # its segment stays on one side, 0 when the segment touches the line (IRNet Sec. 3.3).
    boundary = torch.zeros(1, 1, 6, 7)
    boundary[..., 3] = 1.0
    offsets = pair_offsets(4)
    affinities = boundary_affinities(boundary, offsets)[0]
    for p, (dy, dx) in enumerate(offsets.tolist()):
        for y in range(6):
            for x in range(7):
                cells = [(y + cy, x + cx) for cy, cx in segment_cells(dy, dx)]
                if not (0 <= y + dy < 6 and 0 <= x + dx < 7):
                    expected = 0.0  # j off the map
                else:
                    expected = 0.0 if any(cx == 3 for _, cx in cells) else 1.0
                assert affinities[p, y, x] == expected, (dy, dx, y, x)
    # a soft boundary: the strongest cell on the segment decides, and gradients reach it
    soft = torch.full((1, 1, 1, 5), 0.1)
    soft[..., 2] = 0.6
    soft.requires_grad_(True)
    across = boundary_affinities(soft, torch.tensor([[0, 3]]))[0, 0, 0]
    assert torch.allclose(across, torch.tensor([0.4, 0.4, 0.0, 0.0, 0.0]))
    across[0].backward()
    assert soft.grad[0, 0, 0].tolist() == [0.0, 0.0, -1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"\[B, 1, h, w\]"):
        boundary_affinities(torch.zeros(1, 2, 4, 4), offsets)


# ---------------------------------------------------------------- random walk


def dense_transition(affinities: torch.Tensor, offsets: torch.Tensor, beta: float) -> tuple:
    """Reference T = D^-1 A [N, N] and degrees [N] of one image's affinities [P, h, w]."""
    _, height, width = affinities.shape
    matrix = torch.eye(height * width, dtype=torch.float64)
    for index, (dy, dx) in enumerate(offsets.tolist()):
        for y in range(height):
            for x in range(width):
                if 0 <= y + dy < height and 0 <= x + dx < width:
                    i, j = y * width + x, (y + dy) * width + x + dx
                    matrix[i, j] = matrix[j, i] = float(affinities[index, y, x]) ** beta
    degree = matrix.sum(dim=1)
    return matrix / degree[:, None], degree


@pytest.fixture
def walk_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    offsets = pair_offsets(3)
    affinities = torch.rand(2, len(offsets), 5, 7, generator=gen, dtype=torch.float64)
    maps = torch.rand(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    return maps, affinities, offsets


def test_random_walk_equals_the_dense_transition_power(walk_case) -> None:
    maps, affinities, offsets = walk_case
    out = random_walk(maps, affinities, offsets, beta=2.0, iterations=3)
    for b in range(2):
        matrix, _ = dense_transition(affinities[b], offsets, 2.0)
        flat = maps[b].reshape(3, -1).T
        expected = torch.linalg.matrix_power(matrix, 3) @ flat
        assert torch.allclose(out[b].reshape(3, -1).T, expected, atol=1e-12)


def test_random_walk_keeps_constants_range_and_degree_weighted_mass(walk_case) -> None:
    maps, affinities, offsets = walk_case
    constant = torch.full_like(maps, 0.37)
    assert torch.allclose(random_walk(constant, affinities, offsets, 4.0, 5), constant)
    out = random_walk(maps, affinities, offsets, beta=4.0, iterations=5)
    assert out.min() >= maps.min() - 1e-12 and out.max() <= maps.max() + 1e-12
    for b in range(2):
        _, degree = dense_transition(affinities[b], offsets, 4.0)
        before = maps[b].reshape(3, -1) @ degree
        after = out[b].reshape(3, -1) @ degree
        assert torch.allclose(before, after, rtol=1e-12)
        assert not torch.allclose(maps[b].sum(dim=(1, 2)), out[b].sum(dim=(1, 2)))


def two_region_affinities(offsets: torch.Tensor, height: int, width: int,
                          split: int) -> torch.Tensor:
    """[P, h, w]: 1 between cells on the same side of column ``split``, 0 across or off-map."""
    affinities = torch.zeros(len(offsets), height, width)
    for index, (dy, dx) in enumerate(offsets.tolist()):
        for y in range(height):
            for x in range(width):
                inside = 0 <= y + dy < height and 0 <= x + dx < width
                if inside and (x < split) == (x + dx < split):
                    affinities[index, y, x] = 1.0
    return affinities


def test_random_walk_spreads_a_seed_over_its_region_only() -> None:
    offsets = pair_offsets(3)
    affinities = two_region_affinities(offsets, 6, 8, split=4)[None]
    maps = torch.zeros(1, 1, 6, 8)
    maps[0, 0, 2, 1] = 1.0
    out = random_walk(maps, affinities, offsets, beta=8.0, iterations=10)[0, 0]
    assert (out[:, :4] > 0).all()
    assert (out[:, 4:] == 0).all()
    assert out[:, :4].max() / out[:, :4].min() < 3  # spread out, not stuck at the seed


def test_random_walk_rejects_bad_inputs(walk_case) -> None:
    maps, affinities, offsets = walk_case
    with pytest.raises(ValueError, match=r"maps 4 x 7.*features 5 x 7"):
        random_walk(maps[:, :, :4], affinities, offsets, 8.0, 2)
    with pytest.raises(ConfigError, match="refine.rw_beta"):
        random_walk(maps, affinities, offsets, 0.0, 2)
    with pytest.raises(ConfigError, match="refine.rw_iterations"):
        random_walk(maps, affinities, offsets, 8.0, 0)
    with pytest.raises(ValueError, match="channels"):
        random_walk(maps, affinities[:, 1:], offsets, 8.0, 2)


@pytest.mark.parametrize("cells", [None, (4, 4)])  # the AffinityNet grid, or another one
def test_propagate_returns_normalised_maps_at_image_size(cells) -> None:
    gen = torch.Generator().manual_seed(1)
    height, width = 37, 45
    cells = cells or (-(-height // STRIDE), -(-width // STRIDE))
    offsets = pair_offsets(5)
    affinities = torch.rand(len(offsets), *cells, generator=gen)
    maps = torch.rand(2, height, width, generator=gen) * torch.tensor([[[0.5]], [[1.0]]])
    out = propagate(maps, affinities, offsets, beta=8.0, iterations=4)
    assert out.shape == (2, height, width) and out.dtype == maps.dtype
    assert out.min() >= 0 and out.max() <= 1
    peaks = out.amax(dim=(1, 2))
    assert peaks.max() == pytest.approx(1.0, abs=1e-3)  # one maximum over all classes
    assert peaks[0] < 0.8  # the weaker class (maps at most 0.5) stays weaker: not lifted to 1
    empty = torch.zeros(0, height, width)
    assert propagate(empty, affinities, offsets, 8.0, 4) is empty


def test_propagate_keeps_a_region_map_inside_its_region() -> None:
    offsets = pair_offsets(5)
    height, width = 40, 64  # 5 x 8 cells, regions split at cell column 4 = pixel 32
    affinities = two_region_affinities(offsets, 5, 8, split=4)
    maps = torch.zeros(1, height, width)
    maps[0, 16:24, 8:16] = 1.0
    out = propagate(maps, affinities, offsets, beta=8.0, iterations=8)[0]
    assert out[:, :28].min() > 0.3  # filled its region (up to the blurred edge)
    assert (out[:, 36:] == 0).all()  # nothing leaked into the other region


# ---------------------------------------------------------------- AffinityNet


def test_affinity_net_shape_at_stride_eight_and_gradients_reach_head_and_trunk() -> None:
    torch.manual_seed(0)
    net = build_affinity_net("resnet18")
    features = net(torch.randn(2, 3, 37, 45))
    assert features.shape == (2, 448, 5, 6)  # ceil(37 / 8), ceil(45 / 8)
    affinities = pixel_affinities(features, pair_offsets(3))
    affinities.mean().backward()
    assert net.project.weight.grad.abs().sum() > 0
    assert net.reduce[0][0].weight.grad.abs().sum() > 0
    assert net.backbone.stem[0].weight.grad.abs().sum() > 0
    groups = {g["name"]: g["params"] for g in parameter_groups(net, head_lr_mult=10.0)}
    head = {id(p) for p in groups["head"]}
    assert {id(p) for p in net.backbone.parameters()} == {id(p) for p in groups["backbone"]}
    assert {id(p) for p in [*net.reduce.parameters(), *net.project.parameters()]} == head


def test_affinity_net_reads_channels_from_the_trunk_and_starts_from_a_state() -> None:
    torch.manual_seed(0)
    trunk = build_backbone("resnet50")
    net = AffinityNet(trunk, feature_dim=16)
    assert [r[0].in_channels for r in net.reduce] == [512, 1024, 2048]
    assert net(torch.randn(1, 3, 17, 24)).shape == (1, 16, 3, 3)
    source = build_backbone("resnet18")
    net = build_affinity_net("resnet18", backbone_state=source.state_dict())
    for name, value in source.state_dict().items():
        assert torch.equal(net.backbone.state_dict()[name], value)
    with pytest.raises(ValueError, match="resnet34"):
        build_affinity_net("resnet34", backbone_state=source.state_dict())


def two_region_batch(gen: torch.Generator, count: int, size: int = 48) -> tuple:
    """Images [count, 3, size, size] of two flat colours (left / right half, random colours
    and side) with noise, and their seeds [count, size/8, size/8]: class 1 and background."""
    images = torch.empty(count, 3, size, size)
    seeds = torch.zeros(count, size // STRIDE, size // STRIDE, dtype=torch.long)
    half, cells = size // 2, size // STRIDE // 2
    for index in range(count):
        colours = torch.rand(2, 3, 1, 1, generator=gen) * 2 - 1
        images[index, :, :, :half], images[index, :, :, half:] = colours[0], colours[1]
        seeds[index, :, :cells] = 1
    images += 0.1 * torch.randn(images.shape, generator=gen)
    return images, seeds


def region_gap(net: AffinityNet, images: torch.Tensor, offsets: torch.Tensor,
               seeds: torch.Tensor) -> float:
    """Mean within-region affinity minus mean cross-region affinity."""
    with torch.no_grad():
        affinities = network_affinities(net, images, offsets)
    labels = pair_labels(seeds, offsets, background=0)
    within = affinities[(labels == SAME_FG) | (labels == SAME_BG)].mean()
    return float(within - affinities[labels == DIFFERENT].mean())


@pytest.mark.parametrize("head", HEADS)
def test_training_the_head_teaches_affinity_on_two_region_images(head: str) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = build_affinity_net("resnet18", head=head).eval()  # batch norm in eval: tiny batches
    for param in net.backbone.parameters():
        param.requires_grad_(False)
    offsets = pair_offsets(3)
    test_images, test_seeds = two_region_batch(gen, 8)
    before = region_gap(net, test_images, offsets, test_seeds)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(30):
        images, seeds = two_region_batch(gen, 4)
        loss = affinity_loss(network_affinities(net, images, offsets),
                             pair_labels(seeds, offsets, background=0))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = region_gap(net, test_images, offsets, test_seeds)
    assert after > 0.3 and after > before + 0.2, (before, after)
