"""The parallel deep residual networks of the paper (Sec. 2.1, Fig. 5) and the transfer helpers (Sec. 3.1).

Two identical branches, one fed the Haar approximation and one the sum of the
details (see wavelets.py), each:

    conv 3x3 (1 -> 64) + BN + ReLU      56x56
    max-pool 2                          28x28
    residual block (64)                 28x28
    max-pool 2                          14x14      <- end of the "early" layers
    residual block (64)                 14x14

then the two 14x14x64 outputs are concatenated (14x14x128), fused by a 1x1
convolution (+ BN + ReLU), passed through one more residual block (128),
globally average pooled to a 128-d feature and classified by a linear layer
(softmax in the loss, Eqs. 1 and 2). Five residual blocks in all; convolutions
keep the spatial size and only the pools downsample (Sec. 2.1).

For transfer learning (Sec. 3.1) the paper fixes "all the layers before the
second residual block, which means from the first convolutional layer to the
second pooling layer" in both branches: that is each branch's `early` module.
Because those layers are frozen and their BatchNorm stays in eval mode, their
output for an image never changes during fine-tuning; `early_features` and
`late_features` split the forward pass there so that a caller may compute the
early part once and reuse it.

This file holds only nn.Modules and pure tensor functions: no I/O.
"""

import torch
import torch.nn as nn


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with BN and ReLU and an identity shortcut (Sec. 2.1, [23])."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + x)


class Branch(nn.Module):
    """One of the two parallel networks of Fig. 5, split where the paper stops freezing."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.early = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # first pooling layer: 56 -> 28
            ResidualBlock(width),
            nn.MaxPool2d(2),  # second pooling layer: 28 -> 14
        )
        self.late = ResidualBlock(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.late(self.early(x))


class ParallelResNet(nn.Module):
    """Fig. 5: two branches, 1x1-convolution fusion, a final residual block, GAP and a linear head."""

    def __init__(self, num_classes: int, width: int = 64):
        super().__init__()
        self.approximation_branch = Branch(width)
        self.details_branch = Branch(width)
        self.fusion = nn.Sequential(  # Sec. 2.1: the 1x1 convolution "mixes" the two networks
            nn.Conv2d(2 * width, 2 * width, 1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
        )
        self.final_block = ResidualBlock(2 * width)
        self.head = nn.Linear(2 * width, num_classes)
        self.early_frozen = False

    def early_features(self, approximation: torch.Tensor, details: torch.Tensor):
        """Output of the layers the paper freezes (Sec. 3.1): two (N, 64, 14, 14) tensors."""
        return self.approximation_branch.early(approximation), self.details_branch.early(details)

    def late_features(self, early_approximation: torch.Tensor, early_details: torch.Tensor) -> torch.Tensor:
        """From the frozen layers' output to the 128-d GAP feature."""
        fused = torch.cat(
            [self.approximation_branch.late(early_approximation), self.details_branch.late(early_details)], dim=1
        )
        return self.final_block(self.fusion(fused)).mean(dim=(2, 3))  # global average pooling

    def features(self, approximation: torch.Tensor, details: torch.Tensor) -> torch.Tensor:
        """The 128-d feature vector before the classifier (for plots, t-SNE, linear probes)."""
        return self.late_features(*self.early_features(approximation, details))

    def forward(self, approximation: torch.Tensor, details: torch.Tensor) -> torch.Tensor:
        # The logits z of Eq. 1, "the inputs of the softmax function": the softmax sigma(z)_j = e^z_j / sum_i e^z_i
        # is taken in the loss (Eq. 2, F.cross_entropy) and in evaluate.predict_probabilities.
        return self.head(self.features(approximation, details))

    def train(self, mode: bool = True):
        # requires_grad=False does not stop BatchNorm from updating its running
        # statistics in train mode, so frozen layers are kept in eval mode here.
        super().train(mode)
        if self.early_frozen:
            self.approximation_branch.early.eval()
            self.details_branch.early.eval()
        return self


def replace_head(model: ParallelResNet, num_classes: int) -> ParallelResNet:
    """Swap the classifier for a fresh one of another size (Sec. 3.1: 5 neurons -> 6)."""
    old = model.head
    model.head = nn.Linear(old.in_features, num_classes).to(device=old.weight.device, dtype=old.weight.dtype)
    return model


def freeze_early_layers(model: ParallelResNet) -> ParallelResNet:
    """Fix both branches from the first convolution to the second pooling layer (Sec. 3.1)."""
    for branch in (model.approximation_branch, model.details_branch):
        for parameter in branch.early.parameters():
            parameter.requires_grad_(False)
    model.early_frozen = True
    model.train(model.training)  # puts the frozen BatchNorm layers in eval mode now
    return model


def transfer(model: ParallelResNet, num_classes: int) -> ParallelResNet:
    """Sec. 3.1's transfer step, from the pretrained network to the target's first fine-tuning.

    "The final layer was changed to have six neurons, according the six classes of the LSHEp-2 dataset"
    (replace_head), and "we had fixed all the layers before the second residual block, which means from
    the first convolutional layer to the second pooling layer" (freeze_early_layers, Fig. 6).
    """
    return freeze_early_layers(replace_head(model, num_classes))


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [parameter for parameter in model.parameters() if parameter.requires_grad]
