"""The cell alone: a cell's segmentation mask read, dilated, and its surroundings flattened (issue #64's lever).

Not the paper (the workshop): `--normalize masked` (train.py, and active.py with --scratch), off by default, judged
on a development split (docs/results-i3a.md, issue #64). I3A ships a nucleus mask beside each cell (NNNNN.png and
NNNNN_Mask.png); a layout without masks works as today, the cells without one said in one line.
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data import DataError, read_cell

# The nucleus mask dilated by a disk of this share of the crop's longer side, so that it holds the cytoplasm (Golgi's
# fragments lie beside the nucleus: 62% of their signal outside the undilated mask, docs/results-i3a.md "The cell
# masks"), written in #64's rule before its runs.
MASK_DILATION = 0.25


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """The boolean mask grown by a disk of `radius` pixels: a pixel is in when any mask pixel lies within radius."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    disk = ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2).float()[None, None]
    reached = F.conv2d(torch.from_numpy(mask.astype(np.float32))[None, None], disk, padding=radius)
    return reached[0, 0].numpy() > 0.5


def cell_alone(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The cell without its surroundings: every pixel outside the dilated mask (MASK_DILATION) set to the median of
    those pixels, so that a neighbour's fragment or a specimen's uneven background sets nothing in the stretch."""
    inside = dilate(mask, max(1, round(MASK_DILATION * max(mask.shape))))
    return np.where(inside, array, np.median(array[~inside])) if not inside.all() else array


def mask_beside(path: Path) -> Path | None:
    """The segmentation mask a layout ships beside a cell (I3A: NNNNN.png and NNNNN_Mask.png), or None."""
    for suffix in ("_Mask", "_mask", "_MASK"):
        candidate = path.with_name(f"{path.stem}{suffix}{path.suffix}")
        if candidate.is_file():
            return candidate
    return None


def read_cell_alone(path: Path, unmasked: list) -> np.ndarray:
    """A cell read (data.read_cell) and, where its mask lies beside it, alone (cell_alone); a cell without one is
    appended to `unmasked` and kept whole."""
    array, mask_path = read_cell(path), mask_beside(path)
    if mask_path is None:
        unmasked.append(path)
        return array
    mask = read_cell(mask_path) > 0
    if mask.shape != array.shape:
        raise DataError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} px, its cell "
                        f"{array.shape[1]}x{array.shape[0]} px; expected the same size")
    return cell_alone(array, mask)
