"""What pydensecrf's dense CRF computes correctly: limits on kernel widths, kernel weights,
iteration counts and problem size.

Derived from the C++ that pydensecrf2 1.1 builds (Kraehenbuehl's ``densecrf``:
``permutohedral.cpp``, ``pairwise.cpp``, ``densecrf.cpp``) and checked by experiment; the
numbers are in docs/reliability.md ("Dense CRF limits").

**Kernel widths.** A pairwise kernel with d features per pixel (Gaussian: x/sxy, y/sxy, d = 2;
bilateral: x/sxy, y/sxy, r/srgb, g/srgb, b/srgb, d = 5; x, y in pixels counted from 0, colours
in 0..255) is filtered on a permutohedral lattice (Adams, Baek & Davis, 2010). Each feature
vector f is elevated to the coordinates

    c_j = s_j f_j,   s_j = sqrt(2/3) (d + 1) / sqrt(j (j + 1))            (j = 1..d)
    e_0 = c_1 + ... + c_d,   e_j = (c_{j+1} + ... + c_d) - j c_j

which are rounded to multiples of d + 1; the lattice vertices are hash-table keys of d 16-bit
integers (``short``): e_i (i < d) rounded, moved by up to 1.5 (d + 1) by the rounding and its
correction, plus up to 2 d for the blur neighbours. So every |e_i| must stay within
``KEY_MAX - 1.5 (d + 1) - 2 d``. With features in [0, F_j] the largest is
``max(s_1 F_1 + ... + s_d F_d, max_{1 <= j < d} j s_j F_j)``. Past the limit keys wrap around
and vertices far apart merge (pixels 100 px or 200 RGB units apart smooth each other,
silently); far past it (coordinates around 1e7-1e8) float32 rounding puts the simplex index out
of range and the C++ writes outside its arrays (``munmap_chunk(): invalid pointer``, SIGABRT).
A NaN width segfaults.

**Weights.** Potts weights ``compat`` multiply the filtered messages, which are at most
``(d + 1) 2^(d + 1) N`` for N pixels (splat weights sum to 1, each of the d + 1 blur passes at
most doubles a value, the symmetric normalisation divides by at least sqrt of 1 / (d + 1)).
Energies must stay below float32's largest value (3.4e38), else they become inf and every
probability NaN (every pixel labelled 0). With N <= ``MAX_PIXELS`` (below) a weight of at most
``MAX_COMPAT`` keeps both kernels finite: (2^3 * 3 + 2^6 * 6) * 178956970 * 1e27 < 3.4e38.
A negative weight rewards neighbours for taking different labels (not a smoothing CRF).

**Iterations.** Mean field converges: on MSRC-21 images 100 and 400 iterations give the same
labels, so more only cost time (28 ms each on a 320 x 213 image, linear in the pixels); 0 or
fewer return the unary's softmax (no CRF).

**Problem size.** The lattice holds at most (d + 1) N vertices and filters K labels per
vertex, indexed with 32-bit ``int``: ``(6 N + 2) K`` must stay below 2^31. With K >= 2 that
caps N at ``MAX_PIXELS``, the same as PIL's decompression-bomb limit on decoded images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

KEY_MAX = 32767  # largest lattice key (C++ ``short``)
INDEX_MAX = 2**31 - 1  # largest C++ ``int`` index
MAX_COMPAT = 1e27
MAX_ITERATIONS = 100
MAX_PIXELS = 178956970  # (6 N + 2) * 2 < 2^31
WIDTH_KEYS = ("crf_gaussian_sxy", "crf_bilateral_sxy", "crf_bilateral_srgb")
COMPAT_KEYS = ("crf_gaussian_compat", "crf_bilateral_compat")
WHY_WIDTH = "narrower kernels overflow the 16-bit keys of pydensecrf's permutohedral lattice"


@dataclass(frozen=True)
class Kernel:
    """A pairwise kernel: for each feature, the config key of its width and whether it is a
    position (extent: image width or height - 1) or a colour channel (extent 255)."""

    name: str
    features: tuple[tuple[str, str], ...]  # (width key, "x" | "y" | "rgb")

    def extents(self, width: int, height: int) -> list[float]:
        span = {"x": width - 1, "y": height - 1, "rgb": 255}
        return [float(span[kind]) for _, kind in self.features]


KERNELS = (
    Kernel("Gaussian", (("crf_gaussian_sxy", "x"), ("crf_gaussian_sxy", "y"))),
    Kernel("bilateral", (("crf_bilateral_sxy", "x"), ("crf_bilateral_sxy", "y"),
                         *(("crf_bilateral_srgb", "rgb"),) * 3)),
)


@dataclass(frozen=True)
class Violation:
    """A CRF setting out of range: its key (without ``refine.``), value and the allowed range."""

    key: str
    value: Any
    expected: str


def key_budget(dims: int) -> float:
    """The largest elevated coordinate |e_i| whose lattice keys fit in 16 bits."""
    return KEY_MAX - 1.5 * (dims + 1) - 2 * dims


def coordinate_rows(kernel: Kernel, width: int, height: int) -> list[dict[str, float]]:
    """The bounds on the elevated coordinates: ``max|e_i| <= sum_k row[k] / width_k``.

    One row for e_0 (all features) and one per e_j, 1 <= j < d (feature j alone); each maps a
    width key to ``(weight) * s_j * F_j`` summed over its features (see the module docstring).
    """
    dims = len(kernel.features)
    std = math.sqrt(2.0 / 3.0) * (dims + 1)
    scaled = [std / math.sqrt(j * (j + 1)) * extent
              for j, extent in enumerate(kernel.extents(width, height), start=1)]
    rows = [{}] + [{kernel.features[j - 1][0]: j * scaled[j - 1]} for j in range(1, dims)]
    for (key, _), value in zip(kernel.features, scaled):
        rows[0][key] = rows[0].get(key, 0.0) + value
    return rows


def crf_violation(values: Mapping[str, Any], width: int = 1, height: int = 1) -> Violation | None:
    """The first ``crf_*`` setting of ``values`` (RefineConfig fields) that pydensecrf cannot
    compute correctly on images up to ``width`` x ``height`` px; None when all fit.

    With the default 1 x 1 only the size-independent limits apply (finite numbers, weights,
    iterations, the colour width).
    """
    for key in WIDTH_KEYS + COMPAT_KEYS:
        if not (isinstance(values[key], (int, float)) and math.isfinite(values[key])):
            return Violation(key, values[key], "a finite number")
    for key in WIDTH_KEYS:
        if values[key] <= 0:
            return Violation(key, values[key], "> 0")
    for key in COMPAT_KEYS:
        if not 0 <= values[key] <= MAX_COMPAT:
            return Violation(key, values[key], f"in [0, {MAX_COMPAT:g}] (negative weights "
                             "reward label changes; larger ones overflow float32 energies)")
    if not 1 <= values["crf_iterations"] <= MAX_ITERATIONS:
        return Violation("crf_iterations", values["crf_iterations"],
                         f"in [1, {MAX_ITERATIONS}] (mean field has converged long before)")
    for kernel in KERNELS:
        found = _width_violation(kernel, values, width, height)
        if found is not None:
            return found
    return None


def _width_violation(kernel: Kernel, values: Mapping[str, Any], width: int,
                     height: int) -> Violation | None:
    """A width of ``kernel`` too narrow for its lattice keys; each width alone first, then
    the joint bound (blaming the width whose term is largest)."""
    budget = key_budget(len(kernel.features))
    rows = coordinate_rows(kernel, width, height)
    keys = list(dict.fromkeys(key for key, _ in kernel.features))
    for key in keys:
        need = max(row.get(key, 0.0) for row in rows) / budget
        if values[key] < need:
            return _too_narrow(kernel, key, values, need, width, height)
    for row in rows:
        terms = {key: coef / values[key] for key, coef in row.items()}
        if sum(terms.values()) > budget:
            key = max(terms, key=terms.get)
            rest = sum(terms.values()) - terms[key]
            return _too_narrow(kernel, key, values, row[key] / max(budget - rest, 1e-9),
                               width, height)
    return None


def _too_narrow(kernel: Kernel, key: str, values: Mapping[str, Any], need: float, width: int,
                height: int) -> Violation:
    others = [f"refine.{k}={values[k]:g}" for k in dict(kernel.features) if k != key]
    where = f"images up to {width}x{height} px" if width * height > 1 else "any image"
    context = f"the {kernel.name} kernel on {where}" + "".join(f" with {o}" for o in others)
    return Violation(key, values[key], f">= {_round_up(need)} for {context} ({WHY_WIDTH})")


def size_violation(width: int, height: int, labels: int) -> str | None:
    """Why pydensecrf cannot index a ``width`` x ``height`` image with ``labels`` labels (the
    bilateral lattice's (6 N + 2) K values exceed 32-bit ints), or None."""
    if (6 * width * height + 2) * labels <= INDEX_MAX:
        return None
    return (f"a {width}x{height} image with {labels} labels is too large for pydensecrf: its "
            f"lattice indexes (6 * W * H + 2) * labels = {(6 * width * height + 2) * labels} "
            f"values with 32-bit ints (at most {INDEX_MAX})")


def _round_up(value: float, digits: int = 3) -> str:
    """``value`` rounded up to ``digits`` significant digits, as text (a value at least as
    large passes the check it was computed for)."""
    if value <= 0:
        return "0"
    step = 10 ** (math.floor(math.log10(value)) - digits + 1)
    return f"{math.ceil(value / step - 1e-9) * step:.{digits}g}"
