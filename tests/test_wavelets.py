import numpy as np
import pytest
import pywt
import torch

from wavelets import haar_split


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (3, 1, 112, 112), (1, 1, 6, 10)])
def test_haar_split_matches_pywavelets(shape):
    images = torch.rand(shape, dtype=torch.float64)
    approximation, details = haar_split(images)
    assert approximation.shape == details.shape == (shape[0], 1, shape[2] // 2, shape[3] // 2)
    for n in range(shape[0]):
        cA, (cH, cV, cD) = pywt.dwt2(images[n, 0].numpy(), "haar")
        np.testing.assert_allclose(approximation[n, 0].numpy(), cA, atol=1e-5)
        np.testing.assert_allclose(details[n, 0].numpy(), cH + cV + cD, atol=1e-5)


def test_haar_split_float32_and_constant_image():
    images = torch.full((1, 1, 4, 4), 0.5)
    approximation, details = haar_split(images)
    assert torch.allclose(approximation, torch.full((1, 1, 2, 2), 1.0))  # (4 x 0.5) / 2
    assert torch.allclose(details, torch.zeros(1, 1, 2, 2))  # a flat image has no detail


def test_haar_split_rejects_odd_sizes_and_bad_shapes():
    with pytest.raises(ValueError, match="even"):
        haar_split(torch.rand(1, 1, 7, 8))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        haar_split(torch.rand(1, 3, 8, 8))
