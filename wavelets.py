"""One-level 2D Haar wavelet split of a batch of cell images (paper Sec. 2.1, Figs. 2 to 4).

The paper feeds two parallel networks: one with the approximation coefficients
of a one-level "2D-DWT", the other with the sum of the three detail bands
(horizontal + vertical + diagonal). The paper does not name the wavelet: Haar
here, a choice (docs/paper-notes.md). For Haar a one-level transform is a fixed
2x2, stride-2 filter bank, so it runs batched on any device as a single strided
convolution.

The coefficients match PyWavelets exactly (`pywt.dwt2(image, 'haar')`): for
each 2x2 block [[a, b], [c, d]] of the image,

    cA = (a + b + c + d) / 2      approximation
    cH = (a + b - c - d) / 2      horizontal detail
    cV = (a - b + c - d) / 2      vertical detail
    cD = (a - b - c + d) / 2      diagonal detail

so the sum of the details is (3a - b - c - d) / 2. tests/test_wavelets.py
checks this against pywt on random images.
"""

import torch
import torch.nn.functional as F

# The two 2x2 filters, in the (out_channels, in_channels, 2, 2) layout of conv2d.
_HAAR_FILTERS = torch.tensor(
    [
        [[0.5, 0.5], [0.5, 0.5]],  # approximation: cA
        [[1.5, -0.5], [-0.5, -0.5]],  # cH + cV + cD, summed into one filter
    ]
).unsqueeze(1)


def haar_split(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split (N, 1, H, W) images into (approximation, details), each (N, 1, H/2, W/2).

    `details` is cH + cV + cD with PyWavelets' signs (Sec. 2.1: "we sum up all
    the details coefficients in order to incorporate all the high frequency
    components in one single channel"). H and W must be even.
    """
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"haar_split expects (N, 1, H, W) images, got shape {tuple(images.shape)}")
    height, width = images.shape[-2:]
    if height % 2 or width % 2:
        raise ValueError(f"haar_split expects even height and width, got {height}x{width}")
    filters = _HAAR_FILTERS.to(device=images.device, dtype=images.dtype)
    coefficients = F.conv2d(images, filters, stride=2)
    return coefficients[:, 0:1], coefficients[:, 1:2]
