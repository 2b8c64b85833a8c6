import torch
import torch.nn.functional as F

from model import ParallelResNet, freeze_early_layers, replace_head, trainable_parameters
from wavelets import haar_split


def inputs(n=4, size=112):
    return haar_split(torch.rand(n, 1, size, size))


def test_shapes_on_random_input():
    torch.manual_seed(0)
    model = ParallelResNet(5).eval()
    approximation, details = inputs()
    assert approximation.shape == (4, 1, 56, 56)
    early = model.early_features(approximation, details)
    assert [tuple(t.shape) for t in early] == [(4, 64, 14, 14), (4, 64, 14, 14)]  # Fig. 5: 14x14x64 per branch
    assert model.features(approximation, details).shape == (4, 128)  # GAP feature, Sec. 2.1
    assert model(approximation, details).shape == (4, 5)
    residual_blocks = [m for m in model.modules() if m.__class__.__name__ == "ResidualBlock"]
    assert len(residual_blocks) == 5  # "There are five residual blocks in total"


def test_replace_head_changes_only_the_classifier():
    torch.manual_seed(0)
    model = ParallelResNet(5)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    replace_head(model, 6)
    assert model.head.out_features == 6
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_training_step_leaves_frozen_layers_untouched():
    torch.manual_seed(0)
    model = freeze_early_layers(replace_head(ParallelResNet(5), 6))
    frozen = {
        f"{name}.{k}": v.clone()
        for name in ("approximation_branch.early", "details_branch.early")
        for k, v in model.get_submodule(name).state_dict().items()
    }
    late = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("final_block")}
    model.train()
    optimizer = torch.optim.Adam(trainable_parameters(model), lr=1e-2)
    approximation, details = inputs(8, 32)
    for _ in range(2):
        loss = F.cross_entropy(model(approximation * 3 + 1, details), torch.arange(8) % 6)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = model.state_dict()
    for key, value in frozen.items():  # weights, BN affine and BN running statistics alike
        assert torch.equal(state[key], value), key
    assert any(not torch.equal(state[k], v) for k, v in late.items())  # the rest did train
    assert not model.approximation_branch.early.training and model.final_block.training


def test_split_forward_equals_full_forward():
    torch.manual_seed(0)
    model = ParallelResNet(6).eval()
    approximation, details = inputs(3, 64)
    with torch.no_grad():
        full = model(approximation, details)
        early = model.early_features(approximation, details)
        split = model.head(model.late_features(*early))
        half = model.head(model.late_features(*(t.half().float() for t in early)))  # the fp16 cache of active.py
    assert torch.allclose(full, split, atol=1e-6)
    assert torch.allclose(full, half, atol=1e-2)
