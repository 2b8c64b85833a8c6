from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
from data import DataError
from lab import synthetic
from lab.layouts import canonical_class, load_dataset
from lab.splits import stratified_split
from wavelets import haar_split


def write_cell(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def make_folder_dataset(root, per_class=3):
    rng = np.random.default_rng(0)
    for folder in ["Homogeneous", "NuMem", "golgi"]:
        for i in range(per_class):
            write_cell(root / folder / f"{folder}{i:03d}.png", rng.integers(0, 255, (40, 50), dtype=np.uint8))
            write_cell(root / folder / f"{folder}{i:03d}_Mask.png", np.full((40, 50), 255, np.uint8))
    return root


def test_class_aliases():
    assert canonical_class("NuMem") == "nuclear_membrane"
    assert canonical_class("nuclear_membrane") == "nuclear_membrane"
    assert canonical_class("Coarse Speckled") == "coarse_speckled"
    assert canonical_class("coarse_speckled") == "coarse_speckled"
    assert canonical_class("Cytoplasmatic") == "cytoplasmatic"
    assert canonical_class("GOLGI") == "golgi"
    assert canonical_class("banana") is None


def test_class_folders_skip_masks_and_resize(tmp_path):
    dataset = load_dataset(make_folder_dataset(tmp_path / "cells"), cache=False)
    assert dataset.class_names == ["homogeneous", "nuclear_membrane", "golgi"]
    assert dataset.images.shape == (9, 1, 112, 112) and dataset.images.dtype == torch.uint8
    assert not any("mask" in Path(f).name.lower() for f in dataset.files)
    assert dataset.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    subset = load_dataset(tmp_path / "cells", classes=["golgi", "homogeneous"], cache=False)
    assert subset.class_names == ["golgi", "homogeneous"] and len(subset) == 6


def test_image_formats_are_read_alike(tmp_path):
    """8-bit PNG, 16-bit TIFF, RGB JPEG (signal in green) and BMP of one cell give nearly the same tensor."""
    yy, xx = np.mgrid[0:48, 0:48]
    cell = np.exp(-((yy - 24) ** 2 + (xx - 24) ** 2) / 200.0)
    eight = (cell * 255).astype(np.uint8)
    write_cell(tmp_path / "a.png", eight)
    write_cell(tmp_path / "b.tif", (cell * 65535).astype(np.uint16))
    rgb = np.zeros((48, 48, 3), np.uint8)
    rgb[..., 1] = eight
    write_cell(tmp_path / "c.jpg", rgb)
    write_cell(tmp_path / "d.bmp", eight)
    arrays = [
        data.prepare_cell(data.read_cell(tmp_path / name)).astype(float)
        for name in ["a.png", "b.tif", "c.jpg", "d.bmp"]
    ]
    for other in arrays[1:]:
        assert np.abs(arrays[0] - other).max() <= 6  # JPEG is lossy; the others agree to quantisation
    assert arrays[0].max() > 240  # the bright centre survives the 112x112 bicubic resize


def test_csv_layout_icpr2012(tmp_path):
    rng = np.random.default_rng(1)
    rows = ["ID;pattern"]
    for i, pattern in enumerate(["homogeneous", "coarse_speckled", "cytoplasmatic", "fine_speckled"] * 2, start=1):
        write_cell(tmp_path / f"{i:03d}.png", rng.integers(0, 255, (60, 60), dtype=np.uint8))
        rows.append(f"{i};{pattern}")
    (tmp_path / "gt_training.csv").write_text("\n".join(rows) + "\n")
    dataset = load_dataset(tmp_path, cache=False)
    assert set(dataset.class_names) == {"homogeneous", "coarse_speckled", "fine_speckled", "cytoplasmatic"}
    assert len(dataset) == 8
    five = load_dataset(tmp_path, classes=["homogeneous", "coarse_speckled", "fine_speckled"], cache=False)
    assert len(five) == 6 and "cytoplasmatic" not in five.class_names


def test_bad_inputs_get_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no cell images found"):
        load_dataset(tmp_path / "empty")
    write_cell(tmp_path / "one" / "golgi" / "a.png", np.zeros((30, 30), np.uint8))
    with pytest.raises(DataError, match="at least two classes"):
        load_dataset(tmp_path / "one", cache=False)
    root = make_folder_dataset(tmp_path / "corrupt")
    (root / "golgi" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png: cannot read image"):
        load_dataset(root, cache=False)
    root = make_folder_dataset(tmp_path / "small")
    write_cell(root / "golgi" / "tiny.png", np.zeros((8, 30), np.uint8))
    with pytest.raises(DataError, match=r"tiny\.png: image is 30x8 px"):
        load_dataset(root, cache=False)
    write_cell(tmp_path / "csv" / "1.png", np.zeros((30, 30), np.uint8))
    (tmp_path / "csv" / "labels.csv").write_text("ID;pattern\n1;banana\n")
    with pytest.raises(DataError, match=r"labels\.csv:2: unknown class 'banana'"):
        load_dataset(tmp_path / "csv", cache=False)
    with pytest.raises(DataError, match="not found in"):
        load_dataset(make_folder_dataset(tmp_path / "subset"), classes=["centromere", "golgi"], cache=False)


def test_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    monkeypatch.setenv("HEP2_CACHE", str(tmp_path / "cache"))
    root = make_folder_dataset(tmp_path / "cells")
    first = load_dataset(root)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    calls = []
    monkeypatch.setattr(data, "read_cell", lambda path: calls.append(path))
    second = load_dataset(root)  # served from the cache: no image is read
    assert calls == [] and torch.equal(first.images, second.images)
    monkeypatch.undo()
    monkeypatch.setenv("HEP2_CACHE", str(tmp_path / "cache"))
    write_cell(root / "golgi" / "golgi999.png", np.zeros((40, 40), np.uint8))
    assert len(load_dataset(root)) == 10  # a new file makes a new cache entry
    load_dataset(root, image_size=64)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3
    assert not list(root.rglob("*.pt"))  # nothing is written into the data folder


def test_stratified_split_is_disjoint_complete_and_seeded():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    parts = stratified_split(labels, [0.8, 0.2], seed=3)
    assert sorted(torch.cat(parts).tolist()) == list(range(100))
    assert torch.bincount(labels[parts[1]]).tolist() == [10, 6, 4]
    assert all(torch.equal(a, b) for a, b in zip(parts, stratified_split(labels, [0.8, 0.2], seed=3)))
    assert not torch.equal(parts[1], stratified_split(labels, [0.8, 0.2], seed=4)[1])


def test_rotation_views():
    angles = data.rotation_angles(20)
    assert len(angles) == 20 and angles[1] == 18 and angles[-1] == 342  # Sec. 3.1: 18 degree steps over 360
    image = torch.rand(1, 1, 16, 16)
    assert torch.allclose(data.rotate(image, torch.tensor([0.0])), image, atol=1e-5)
    quarter = data.rotate(image, torch.tensor([90.0]))
    assert torch.allclose(quarter, torch.rot90(image, 1, dims=(2, 3)), atol=1e-4) or torch.allclose(
        quarter, torch.rot90(image, -1, dims=(2, 3)), atol=1e-4
    )


def test_synthetic_sets_are_seeded_and_shaped_like_the_paper():
    source = synthetic.synthetic_dataset("source", 50, seed=0, image_size=32)
    assert source.class_names == data.SOURCE_CLASSES and source.images.shape[1:] == (1, 32, 32)
    again = synthetic.synthetic_dataset("source", 50, seed=0, image_size=32)
    assert torch.equal(source.images, again.images)
    target = synthetic.synthetic_dataset("target", 500, seed=0, image_size=32)
    shares = torch.bincount(target.labels).float() / len(target)
    assert target.class_names == data.TARGET_CLASSES
    assert abs(shares[5] - 0.04) < 0.01 and abs(shares[4] - 0.08) < 0.01  # Golgi and NucMe rare, as in LSHEp-2
    # bright and dim cells both occur
    peaks = target.images.flatten(1).max(dim=1).values.float()
    assert (peaks < 110).any() and (peaks > 170).any()


def test_percentile_normalisation_is_per_cell_and_undoes_exposure():
    rng = np.random.default_rng(4)
    cell = synthetic.synthetic_cell("centromere", rng)
    cell = cell / cell.max()  # a bright (positive) cell
    dim = 0.3 * cell + 0.05  # the same cell under another specimen's exposure and background
    bright, dark = data.prepare_cell(cell, 64, "percentile"), data.prepare_cell(dim, 64, "percentile")
    assert np.abs(bright.astype(int) - dark.astype(int)).max() <= 1
    assert np.abs(data.prepare_cell(cell, 64).astype(int) - data.prepare_cell(dim, 64).astype(int)).max() > 50
    stretched = data.normalize_cell(dim, "percentile")
    assert stretched.min() == 0 and stretched.max() == 1 and bright.max() >= 240  # full range, before resizing
    assert data.normalize_cell(np.full((20, 20), 0.3), "percentile").max() == 0  # flat: nothing to stretch


def test_normalisation_never_looks_at_other_cells(tmp_path):
    """A cell's tensor is the same whatever else is loaded with it (so test cells never shape training cells)."""
    root = make_folder_dataset(tmp_path / "cells")
    together = load_dataset(root, normalize="percentile", cache=False)
    for path in (root / "golgi").glob("golgi00[12].png"):
        path.unlink()
    alone = load_dataset(root, normalize="percentile", cache=False)
    assert torch.equal(together.images[together.files.index(alone.files[-1])], alone.images[-1])


def test_synthetic_cells_follow_the_normalisation():
    plain = synthetic.synthetic_dataset("target", 60, seed=0, image_size=32)
    stretched = synthetic.synthetic_dataset("target", 60, seed=0, image_size=32, normalize="percentile")
    assert not torch.equal(plain.images, stretched.images)
    assert stretched.images.flatten(1).max(dim=1).values.float().min() > 200  # dim cells stretched too


def test_model_inputs_are_the_haar_split_in_channels_last_memory():
    conv = torch.nn.Conv2d(1, 4, 3, padding=1)
    for cells in (3, 1):  # one cell: a one-channel band is contiguous in both layouts, and must still be channels-last
        images = torch.randint(0, 256, (cells, 1, 16, 16), dtype=torch.uint8)
        approximation, details = data.model_inputs(images, "cpu")
        expected = haar_split(images.float() / 255.0)
        assert torch.equal(approximation, expected[0]) and torch.equal(details, expected[1])
        with torch.no_grad():  # what the speed is for: the convolutions keep the layout
            assert conv(approximation).is_contiguous(memory_format=torch.channels_last)
            assert conv(details).is_contiguous(memory_format=torch.channels_last)
            standard = expected[0].clone(memory_format=torch.contiguous_format)
            assert not conv(standard).is_contiguous(memory_format=torch.channels_last)
