"""The paper's Figures 3 and 4 (Section 6.1): known answers for the colour measure and the fc7 nearest neighbours."""

import json

import pytest
import torch

from alexnet_lightning.model.network import AlexNet
from alexnet_lightning.use import figures
from alexnet_lightning.use.figures import colour_specificity, fc7, nearest, tower_specificity
from tests.test_use import handmade_checkpoint


def grey(count: int) -> torch.Tensor:
    """Kernels with R = G = B at every pixel: no colour at all."""
    return torch.randn(count, 1, 11, 11).expand(count, 3, 11, 11).clone()


def chromatic(count: int) -> torch.Tensor:
    """Kernels whose every pixel is orthogonal to (1, 1, 1): colour contrast at constant luminance."""
    kernels = torch.randn(count, 3, 11, 11)
    return kernels - kernels.mean(1, keepdim=True)


def test_the_colour_measure_scores_grey_zero_colour_contrast_one_and_random_kernels_two_thirds():
    assert colour_specificity(grey(8)) == pytest.approx(torch.zeros(8), abs=1e-6)
    assert colour_specificity(chromatic(8)) == pytest.approx(torch.ones(8), abs=1e-6)
    assert float(colour_specificity(torch.randn(500, 3, 11, 11)).mean()) == pytest.approx(2 / 3, abs=0.01)
    offset = grey(4) + torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)  # a kernel's mean is no colour
    assert colour_specificity(offset) == pytest.approx(torch.zeros(4), abs=1e-6)
    assert colour_specificity(torch.zeros(2, 3, 11, 11)).tolist() == [0.0, 0.0]  # a dead kernel is not colour


@pytest.mark.parametrize("chromatic_tower", [1, 2])
def test_a_network_with_one_grey_and_one_chromatic_tower_scores_as_the_papers_split(chromatic_tower):
    network = AlexNet(num_classes=10, width=0.25, input_size=67)
    half = network.features.conv1.out_channels // 2
    towers = [grey(half), grey(half)]
    towers[chromatic_tower - 1] = chromatic(half)
    with torch.no_grad():
        network.features.conv1.weight.copy_(torch.cat(towers))
    scores = tower_specificity(network)
    assert scores[chromatic_tower - 1] == pytest.approx(1, abs=1e-6)
    assert scores[2 - chromatic_tower] == pytest.approx(0, abs=1e-6)
    assert len(tower_specificity(AlexNet(num_classes=10, width=0.25, input_size=67, towers=1))) == 1


def test_nearest_finds_planted_neighbours_in_euclidean_distance():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(200, 32, generator=generator) * 10
    queries = base[[3, 150, 77]] + 0.01 * torch.randn(3, 32, generator=generator)
    base[42] = base[3] + 0.1  # the second nearest to the first query
    assert nearest(queries, base, 2)[0].tolist() == [3, 42]
    assert nearest(queries, base, 1)[:, 0].tolist() == [3, 150, 77]
    # Euclidean, not cosine: a vector in the query's direction but far away is not near
    base[99] = base[150] * 5
    assert 99 not in nearest(queries[1:2], base, 3)[0].tolist()


def test_fc7_is_the_last_hidden_layer_after_its_relu_without_dropout():
    network = AlexNet(num_classes=10, width=0.25, input_size=67).eval()
    x = torch.randn(2, 3, 67, 67)
    with torch.no_grad():
        c = network.classifier
        expected = torch.relu(c.fc7(torch.relu(c.fc6(network.features(x).flatten(1)))))
        assert torch.equal(fc7(network, x), expected) and fc7(network, x).shape == (2, c.fc7.out_features)
        assert torch.equal(c.fc8(fc7(network, x)), network(x))


@pytest.mark.slow
def test_the_figures_command_writes_both_figures_and_the_towers_numbers(tiny_imagefolder, tmp_path, capsys):
    handmade_checkpoint(tmp_path / "m.ckpt", tiny_imagefolder)
    assert figures.main([str(tmp_path / "m.ckpt"), "--out", str(tmp_path / "fig"), "--queries", "2",
                         "--neighbours", "3"]) == 0
    table = json.loads((tmp_path / "fig" / "colour.json").read_text())
    from alexnet_lightning.use.classify import load

    assert table["m"]["tower_specificity"] == tower_specificity(load(tmp_path / "m.ckpt")[0])
    assert (tmp_path / "fig" / "kernels-m.png").stat().st_size > 1000
    assert (tmp_path / "fig" / "neighbours-m.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "largely color-agnostic" in out and "m (step None): tower 1 " in out
