"""The cells the paper's network reads (paper Sec. 3.1): read, stretched, resized to 112x112, rotated, split by Haar.

Sec. 3.1: the source is SNPHEp-2 (5 classes), the target LSHEp-2 (6 classes);
every cell is "upsized using bicubic interpolation to 112x112"; the source is
augmented by rotations "with a step of 18 degrees"; each cell reaches the
network as the two bands of a one-level Haar transform (Sec. 2.1, wavelets.py).

A dataset is one CellDataset: every cell a 112x112 uint8 image in a single
(N, 1, 112, 112) tensor, its label, its file and, where known, its specimen.
Where the cells come from (folders, CSVs, the synthetic default) is lab/layouts.py
and lab/synthetic.py; how they are split is lab/splits.py.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from wavelets import haar_split

IMAGE_SIZE = 112  # Sec. 3.1: "all upsized using bicubic interpolation to 112x112"
MIN_SIDE = 16  # a crop smaller than this is not a cell image
SOURCE_CLASSES = ["homogeneous", "coarse_speckled", "fine_speckled", "nucleolar", "centromere"]  # SNPHEp-2
TARGET_CLASSES = ["homogeneous", "speckled", "nucleolar", "centromere", "nuclear_membrane", "golgi"]  # LSHEp-2, I3A

# Short names for console lines and plots, as in the paper's figures (Sec. 3.2).
SHORT_NAMES = {
    "homogeneous": "Homo",
    "speckled": "Speck",
    "fine_speckled": "Fine",
    "coarse_speckled": "Coarse",
    "nucleolar": "Nucl",
    "centromere": "Centro",
    "nuclear_membrane": "NucMe",
    "golgi": "Golgi",
    "cytoplasmatic": "Cyto",
    "mitotic_spindle": "MitSp",
}


class DataError(Exception):
    """Bad input: the message names the file or flag and what was expected."""


# ---------------------------------------------------------------------------------------------
# Reading and preparing one cell image


def read_cell(path: Path) -> np.ndarray:
    """Read an 8- or 16-bit, grayscale or colour image as float32 in [0, 1].

    Colour fluorescence crops usually carry the signal in one channel (FITC
    green) and little in the others, and grayscale saved as RGB has three equal
    channels: the per-pixel maximum over channels is right for both.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
                mode = image.mode
            if mode in ("1", "L", "LA", "RGB", "RGBA", "CMYK", "YCbCr"):
                array = np.asarray(image.convert("RGB") if mode not in ("1", "L") else image.convert("L"))
                array = array.astype(np.float32) / 255.0
            elif mode.startswith("I;16") or mode == "I":
                array = np.asarray(image).astype(np.float32)
                array /= 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
            elif mode == "F":
                array = np.asarray(image).astype(np.float32)
                if not np.isfinite(array).all():  # would turn the whole cell black after the stretch
                    raise DataError(f"{path}: holds NaN or infinite pixels; expected finite intensities")
                peak = float(array.max())
                array = array / peak if peak > 1 else array
            else:
                raise DataError(f"{path}: unsupported image mode {mode}; expected 8/16-bit grayscale or RGB")
    except DataError:
        raise
    except Exception as error:  # PIL raises many types for truncated or foreign files
        raise DataError(f"{path}: cannot read image ({error.__class__.__name__}: {error})") from None
    if array.ndim == 3:
        array = array.max(axis=2)
    if min(array.shape) < MIN_SIDE:
        raise DataError(
            f"{path}: image is {array.shape[1]}x{array.shape[0]} px; expected at least {MIN_SIDE} px a side"
        )
    return np.clip(array, 0.0, 1.0)


NORMALIZATIONS = ("none", "max", "percentile")


def normalize_cell(array: np.ndarray, normalize: str = "none") -> np.ndarray:
    """Per-cell intensity stretch, from this cell's own pixels only (never from other cells).

    'max' divides by the cell's brightest pixel; 'percentile' maps the cell's 1st
    and 99th percentiles to 0 and 1 (clipped), so that a few hot pixels and the
    background level of one specimen's exposure set neither end. Both remove
    the positive/negative intensity difference (Sec. 2.1) before the network sees the
    cell. The paper does neither: it argues that the wavelet approximation
    homogenises intensity by itself (Sec. 2.1); 'none' is that literal reading. The
    scripts default to 'percentile', chosen on unseen specimens' development split.
    """
    if normalize == "max":
        peak = float(array.max())
        return array / peak if peak > 0 else array
    if normalize == "percentile":
        low, high = np.percentile(array, [1.0, 99.0])
        return np.clip((array - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(array)
    return array


def prepare_cell(array: np.ndarray, image_size: int = IMAGE_SIZE, normalize: str = "none") -> np.ndarray:
    """Per-cell normalisation (normalize_cell), bicubic resize to image_size x image_size (Sec. 3.1), uint8."""
    array = normalize_cell(array, normalize)
    resized = Image.fromarray(array.astype(np.float32), mode="F").resize((image_size, image_size), Image.BICUBIC)
    return (np.clip(np.asarray(resized), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# A labeled dataset


@dataclass
class CellDataset:
    images: torch.Tensor  # (N, 1, S, S) uint8
    labels: torch.Tensor  # (N,) int64, indices into class_names
    class_names: list[str]
    files: list[str]  # where each cell came from ("synthetic:..." for generated cells)
    source: str  # the data folder, or "synthetic-source" / "synthetic-target"
    # The specimen (patient slide, specimen image) each cell was cut from, or None where unknown. Cells of
    # one specimen share exposure, intensity and staining, so a split keeps each specimen on one side.
    specimens: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> "CellDataset":
        index_list = indices.tolist()
        return CellDataset(
            self.images[indices],
            self.labels[indices],
            self.class_names,
            [self.files[i] for i in index_list],
            self.source,
            None if self.specimens is None else [self.specimens[i] for i in index_list],
        )


# ---------------------------------------------------------------------------------------------
# Rotations (Sec. 3.1) and the two inputs of the network (Sec. 2.1)


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each (N, 1, H, W) float image about its centre (bilinear, borders reflected)."""
    radians = degrees.to(images.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def rotation_angles(views: int) -> torch.Tensor:
    """Sec. 3.1: rotations "with a step of 18 degrees in a quadrant of 360": 20 views (0, 18, ..., 342)."""
    return torch.arange(views, dtype=torch.float32) * (360.0 / views)


def dihedral_view(images: torch.Tensor, view: int) -> torch.Tensor:
    """View 0-7 of (N, 1, S, S) cells: a quarter turn `view % 4` times, then mirrored left-right from view 4 on.
    Exact (no interpolation, every pixel kept), unlike Sec. 3.1's 18-degree turns; a pattern has no orientation."""
    turned = torch.rot90(images, view % 4, dims=(2, 3))
    return turned.flip(3) if view >= 4 else turned


def model_inputs(images: torch.Tensor, device: torch.device, degrees: torch.Tensor | None = None):
    """uint8 cells -> (approximation, details) on device, rotated first if degrees are given (Sec. 2.1).

    Channels-last memory: the convolutions then keep it, and the max-pooling of the 56x56 and 28x28 maps,
    the slowest step of the frozen layers on a CPU in the default layout, runs faster (the frozen layers'
    cache 1.63x, `python -m lab.bench --levers`, docs/speed.md). The values are the same.
    """
    batch = images.to(device, non_blocking=True).float().div_(255.0)
    if degrees is not None:
        batch = rotate(batch, degrees.to(device))
    # torch.empty, not .contiguous(): a one-channel band that is already contiguous would keep its strides.
    layout = dict(dtype=batch.dtype, device=batch.device, memory_format=torch.channels_last)
    return tuple(torch.empty(band.shape, **layout).copy_(band) for band in haar_split(batch))
