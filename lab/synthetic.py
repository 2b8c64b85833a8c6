"""The embedded synthetic default: HEp-2-like cells drawn from a seeded generator.

Not the paper (the workshop). Without --data, train.py pretrains on a synthetic
5-class source (SNPHEp-2's classes) and active.py runs on a synthetic 6-class
target (LSHEp-2's classes and imbalance), so that every command runs on a fresh
machine with nothing downloaded. It says only that the code runs and learns:
every published number comes from real cells (docs/results-i3a.md).
"""

from typing import NamedTuple

import numpy as np
import torch

from data import IMAGE_SIZE, SOURCE_CLASSES, TARGET_CLASSES, CellDataset, prepare_cell

# LSHEp-2's imbalance (Sec. 3.2: 375 Golgi and 814 nuclear membrane among 10,152 random cells).
TARGET_PROPORTIONS = {
    "homogeneous": 0.22,
    "speckled": 0.22,
    "nucleolar": 0.22,
    "centromere": 0.22,
    "nuclear_membrane": 0.08,
    "golgi": 0.04,
}


def _blobs(grid_y, grid_x, centers, sigmas, amplitudes):
    """Sum of isotropic Gaussian spots, the building block of every pattern."""
    image = np.zeros_like(grid_y)
    for (cy, cx), sigma, amplitude in zip(centers, sigmas, amplitudes):
        image += amplitude * np.exp(-((grid_y - cy) ** 2 + (grid_x - cx) ** 2) / (2 * sigma**2))
    return image


def _smooth_noise(rng, shape, sigma):
    """White noise blurred by a Gaussian of the given sigma (pixels), scaled to unit std."""
    noise = rng.standard_normal(shape)
    radius = max(1, int(3 * sigma))
    kernel = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    noise = np.apply_along_axis(np.convolve, 0, noise, kernel, mode="same")
    noise = np.apply_along_axis(np.convolve, 1, noise, kernel, mode="same")
    return noise / (noise.std() + 1e-8)


def _points_in_nucleus(rng, count, cy, cx, ry, rx, angle, max_radius=0.85):
    radius = max_radius * np.sqrt(rng.random(count))
    theta = rng.random(count) * 2 * np.pi
    y, x = radius * ry * np.sin(theta), radius * rx * np.cos(theta)
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack([cy + y * cos + x * sin, cx - y * sin + x * cos], axis=1)


class _Nucleus(NamedTuple):
    """One cell's geometry: its pixel grid, the nucleus's centre, radii and angle, the elliptic radius `rho` of
    every pixel (1 on the rim) and the nucleus's soft mask."""

    side: int
    grid_y: np.ndarray
    grid_x: np.ndarray
    cy: float
    cx: float
    radius: float
    ry: float
    rx: float
    angle: float
    rho: np.ndarray
    mask: np.ndarray


def _draw_nucleus(rng) -> _Nucleus:
    """A nucleus of random size (a crop of 60 to 100 px), shape, orientation and offset."""
    side = int(rng.integers(60, 101))
    grid_y, grid_x = np.mgrid[0:side, 0:side].astype(np.float64)
    cy, cx = side / 2 + rng.normal(0, side * 0.04, 2)
    radius = side * rng.uniform(0.32, 0.44)
    ry, rx = radius * rng.uniform(0.8, 1.05), radius * rng.uniform(0.8, 1.05)
    angle = rng.uniform(0, np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    dy, dx = grid_y - cy, grid_x - cx
    rho = np.sqrt(((dy * cos - dx * sin) / ry) ** 2 + ((dy * sin + dx * cos) / rx) ** 2)
    mask = 1 / (1 + np.exp((rho - 1) / 0.06))
    return _Nucleus(side, grid_y, grid_x, cy, cx, radius, ry, rx, angle, rho, mask)


def _inside(cell: _Nucleus, rng, count: int, max_radius: float) -> np.ndarray:
    return _points_in_nucleus(rng, count, cell.cy, cell.cx, cell.ry, cell.rx, cell.angle, max_radius)


def _homogeneous(cell: _Nucleus, rng) -> np.ndarray:
    """A smoothly filled nucleus, a little brighter towards the rim."""
    rim = (cell.rho > 0.7) * (cell.rho < 1.05)
    return cell.mask * (0.85 + 0.08 * _smooth_noise(rng, (cell.side, cell.side), 3) + 0.15 * rim)


def _speckled(cell: _Nucleus, rng, name: str) -> np.ndarray:
    """Grains all over the nucleus (fine or coarse for SNPHEp-2), with a few dark nucleoli."""
    # All three grains are drawn whatever the class, so every class uses the generator alike.
    grain = {
        "speckled": rng.uniform(0.8, 1.6),
        "fine_speckled": rng.uniform(0.7, 1.2),
        "coarse_speckled": rng.uniform(1.6, 2.6),
    }[name]
    texture = np.clip(0.55 + 0.3 * _smooth_noise(rng, (cell.side, cell.side), grain), 0, None)
    centers = _inside(cell, rng, int(rng.integers(0, 4)), 0.5)
    holes = _blobs(cell.grid_y, cell.grid_x, centers, [cell.radius * 0.12] * 4, [0.6] * 4)
    return cell.mask * np.clip(texture - holes, 0, None)


def _nucleolar(cell: _Nucleus, rng) -> np.ndarray:
    """A few large bright blobs on a dim nucleus."""
    count = int(rng.integers(2, 7))
    centers = _inside(cell, rng, count, 0.6)
    sigmas, amplitudes = rng.uniform(0.07, 0.14, count) * cell.radius, rng.uniform(0.7, 1.0, count)
    spots = _blobs(cell.grid_y, cell.grid_x, centers, sigmas, amplitudes)
    return cell.mask * (0.3 + 0.05 * _smooth_noise(rng, (cell.side, cell.side), 1.5)) + cell.mask * spots


def _centromere(cell: _Nucleus, rng) -> np.ndarray:
    """Tens of discrete bright dots."""
    count = int(rng.integers(25, 60))
    centers = _inside(cell, rng, count, 0.9)
    dots = _blobs(cell.grid_y, cell.grid_x, centers, rng.uniform(0.9, 1.6, count), rng.uniform(0.5, 1.0, count))
    return cell.mask * 0.2 + dots


def _nuclear_membrane(cell: _Nucleus, rng) -> np.ndarray:
    """A bright rim."""
    width = rng.uniform(0.06, 0.12)
    rim = np.exp(-((cell.rho - 0.93) ** 2) / (2 * width**2))
    return cell.mask * 0.35 + 0.8 * rim * (1 + 0.25 * _smooth_noise(rng, (cell.side, cell.side), 2))


def _golgi(cell: _Nucleus, rng) -> np.ndarray:
    """Irregular bright fragments clustered on one side, beside a dim nucleus."""
    count = int(rng.integers(3, 9))
    side_angle = rng.uniform(0, 2 * np.pi)
    distance = rng.uniform(0.75, 1.05, count)
    spread = side_angle + rng.normal(0, 0.5, count)
    centers = np.stack(
        [cell.cy + distance * cell.ry * np.sin(spread), cell.cx + distance * cell.rx * np.cos(spread)], axis=1
    )
    sigmas, amplitudes = rng.uniform(0.06, 0.13, count) * cell.radius, rng.uniform(0.6, 1.0, count)
    return cell.mask * 0.22 + _blobs(cell.grid_y, cell.grid_x, centers, sigmas, amplitudes)


def _pattern(name: str, cell: _Nucleus, rng) -> np.ndarray:
    if name in ("speckled", "fine_speckled", "coarse_speckled"):
        return _speckled(cell, rng, name)
    patterns = {
        "homogeneous": _homogeneous,
        "nucleolar": _nucleolar,
        "centromere": _centromere,
        "nuclear_membrane": _nuclear_membrane,
        "golgi": _golgi,
    }
    if name not in patterns:
        raise ValueError(f"no synthetic pattern for class {name}")
    return patterns[name](cell, rng)


def _photograph(image: np.ndarray, cell: _Nucleus, rng) -> np.ndarray:
    """What the microscope adds: a neighbour cut by the crop, the fluorescence level, background, blur, noise."""
    if rng.random() < 0.4:  # a neighbouring cell cut by the crop, as in real crops
        ny, nx = rng.choice([-1, 1], 2) * cell.side * rng.uniform(0.85, 1.0)
        dy, dx = (cell.grid_y - cell.cy - ny) / cell.ry, (cell.grid_x - cell.cx - nx) / cell.rx
        neighbour = np.sqrt(dy**2 + dx**2)
        image = image + 0.5 / (1 + np.exp((neighbour - 1) / 0.06))
    # Positive or negative (dim) fluorescence (Sec. 2.1, Fig. 1), background, blur, noise.
    gain = rng.uniform(0.55, 1.0) if rng.random() < 0.5 else rng.uniform(0.12, 0.3)
    image = gain * image / max(image.max(), 1e-6) + rng.uniform(0.03, 0.1)
    image = image + 0.01 * _smooth_noise(rng, (cell.side, cell.side), 0.7)
    image = image + rng.normal(0, rng.uniform(0.01, 0.03), image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def synthetic_cell(class_name: str, rng: np.random.Generator) -> np.ndarray:
    """One HEp-2-like cell crop (float in [0, 1], a random side of 60 to 100 px).

    Each pattern imitates its real class in I3A: homogeneous, a smoothly filled
    nucleus; speckled, fine grains all over with dark nucleoli; coarse or fine
    speckles for SNPHEp-2; nucleolar, a few large bright blobs; centromere,
    tens of discrete bright dots; nuclear membrane, a bright rim; Golgi,
    irregular bright fragments clustered on one side, beside a dim nucleus.
    Cells are positive (bright) or intermediate (dim), of varied size, shape
    and orientation, and each one borrows a little of another pattern, so
    that classes overlap as they do in real data.
    """
    cell = _draw_nucleus(rng)
    image = _pattern(class_name, cell, rng)
    # Borrow a little of a random other pattern: real classes overlap (Sec. 2: interclass similarities).
    others = [
        name
        for name in ("homogeneous", "speckled", "nucleolar", "centromere", "nuclear_membrane")
        if name != class_name
    ]
    image = image + rng.uniform(0.0, 0.35) * _pattern(others[int(rng.integers(len(others)))], cell, rng)
    return _photograph(image, cell, rng)


def synthetic_dataset(
    kind: str = "source",
    num_cells: int | None = None,
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
    normalize: str = "none",
) -> CellDataset:
    """The embedded default data: 'source' (5 SNPHEp-2 classes, balanced, 300 cells unless num_cells says otherwise) or
    'target' (6 LSHEp-2 classes, LSHEp-2's imbalance, 1500 cells). Same seed, same cells."""
    if kind == "source":
        class_names, proportions = SOURCE_CLASSES, [1 / len(SOURCE_CLASSES)] * len(SOURCE_CLASSES)
        num_cells = num_cells or 300
    elif kind == "target":
        class_names, proportions = TARGET_CLASSES, [TARGET_PROPORTIONS[name] for name in TARGET_CLASSES]
        num_cells = num_cells or 1500
    else:
        raise ValueError(f"kind must be 'source' or 'target', got {kind}")
    # At least 6 cells a class, so that even a tiny set puts one of each class on every side of a 70/15/15 split.
    counts = [max(6, round(num_cells * share)) for share in proportions]
    # Filled in place, not stacked from a list of cells: one copy in memory, even at LSHEp-2's 63,445 cells.
    images = np.empty((sum(counts), image_size, image_size), dtype=np.uint8)
    labels = []
    # Every class seeds its own generator so a class's cells do not depend on the other classes.
    for label, (class_name, count) in enumerate(zip(class_names, counts)):
        rng = np.random.default_rng([seed, label, 1 if kind == "target" else 0])
        for _ in range(count):
            images[len(labels)] = prepare_cell(synthetic_cell(class_name, rng), image_size, normalize)
            labels.append(label)
    files = [f"synthetic:{kind}:{seed}:{index}" for index in range(len(labels))]
    return CellDataset(
        torch.from_numpy(images).unsqueeze(1),
        torch.tensor(labels),
        list(class_names),
        files,
        f"synthetic-{kind}",
    )
