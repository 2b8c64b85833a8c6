"""Issue #64's levers for how a specimen looks, each off by default until the development split keeps it."""

import pytest
import torch
from conftest import fails
from test_active import run_active

import data


def test_the_eight_views_are_the_exact_quarter_turns_and_mirrors():
    cells = torch.arange(2 * 5 * 5, dtype=torch.uint8).reshape(2, 1, 5, 5)  # no symmetry: every view differs
    seen = [data.dihedral_view(cells, view) for view in range(8)]
    assert len({tuple(view.flatten().tolist()) for view in seen}) == 8
    for view in seen:  # every pixel kept, only moved
        assert torch.equal(view.flatten(1).sort(dim=1).values, cells.flatten(1).sort(dim=1).values)
    assert torch.equal(seen[1], cells.transpose(2, 3).flip(2))  # a quarter turn counterclockwise
    assert torch.equal(seen[4], cells.flip(3)) and torch.equal(seen[6], cells.flip(2))
    assert torch.equal(data.dihedral_view(seen[1], 3), cells)  # four quarter turns: the cell again


@pytest.mark.parametrize("augment", ["dihedral", "rotations"])
def test_training_views_through_the_cache_are_the_networks_own(pretrained, augment):
    """--augment: a cell's drawn view through the cached frozen layers gives the full network's logits on that view."""
    from lab import recipe
    from lab.runs import load_checkpoint, network_from_checkpoint
    from model import transfer

    torch.manual_seed(0)
    model = transfer(network_from_checkpoint(load_checkpoint(str(pretrained))), 6).eval()
    images = torch.randint(0, 256, (12, 1, 32, 32), dtype=torch.uint8)
    settings = {"augment": augment}
    forward = recipe.training_forward(model, images, None, "cpu", "float32", settings, torch.Generator().manual_seed(3))
    index = torch.tensor([5, 1, 5, 9, 0])
    logits = forward(index)
    views = torch.randint(recipe.AUGMENTS[augment], (5,), generator=torch.Generator().manual_seed(3))
    cells, degrees = recipe.views_of(images[index], views, augment)
    with torch.no_grad():
        expected = model(*data.model_inputs(cells, "cpu", degrees))
    assert torch.allclose(logits, expected, atol=2e-2)  # the cache holds float16
    assert not model.training  # the mode the views were cached in is given back
    again = forward(torch.tensor([1, 2]))  # a new cell joins the cache; the ones seen before keep their rows
    assert again.shape == (2, 6)
    none = recipe.training_forward(model, images, forward, "cpu", "float32", {"augment": "none"}, None)
    assert none is forward


def test_dihedral_views_and_turns_of_18_degrees():
    from lab import recipe

    cells = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    turned, degrees = recipe.views_of(cells, torch.tensor([0, 5, 7]), "dihedral")
    assert degrees is None
    assert all(torch.equal(turned[i], data.dihedral_view(cells[i : i + 1], v)[0]) for i, v in enumerate([0, 5, 7]))
    same, degrees = recipe.views_of(cells, 3, "rotations")
    assert same is cells and degrees.tolist() == [54.0, 54.0, 54.0]


def test_augmented_fine_tuning_runs_end_to_end_and_paper_refuses_it(tmp_path, pretrained):
    import active

    results, _ = run_active(tmp_path, "in-al-dihedral", ["--augment", "dihedral"], pretrained)
    plain, _ = run_active(tmp_path, "in-al", [], pretrained)
    assert results["args"]["augment"] == "dihedral" and results["labeled"] == plain["labeled"]
    assert results["mca"] != plain["mca"] or results["rounds"][-1]["train_loss"] != plain["rounds"][-1]["train_loss"]
    scratch, _ = run_active(tmp_path, "al-rotations", ["--scratch", "--augment", "rotations"])
    assert scratch["args"]["augment"] == "rotations"
    fails(active.main, ["--paper", "--augment", "dihedral"], "--augment dihedral", "--paper")
