import numpy as np
import pytest
import torch
from torch import nn

from alexnet_lightning.model.network import AlexNet, LocalResponseNorm, local_response_norm

# docs/paper.md#architecture (Section 3.5): the maps after each conv layer, pooled where there is pooling.
PAPER_SHAPES = {
    "conv1": (96, 55), "conv1_pool": (96, 27), "conv2": (256, 27), "conv2_pool": (256, 13),
    "conv3": (384, 13), "conv4": (384, 13), "conv5": (256, 13), "conv5_pool": (256, 6),
}


def output_shapes(model: AlexNet, input_size: int) -> dict[str, tuple[int, int]]:
    shapes = {}
    hooks = [
        module.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
        for name, module in model.features.named_children()
    ]
    model(torch.zeros(1, 3, input_size, input_size))
    for hook in hooks:
        hook.remove()
    return shapes


def test_parameter_count_of_the_paper_network():
    model = AlexNet()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    layers = model.learned_layers()
    assert count(model) == 60_965_224
    assert sum(count(layers[f"conv{i}"]) for i in range(1, 6)) == 2_334_080
    assert [count(layers[name]) for name in ("fc6", "fc7", "fc8")] == [37_752_832, 16_781_312, 4_097_000]


@pytest.mark.parametrize("overlapping_pool", [True, False])
@pytest.mark.parametrize("input_size", [227, 224])
def test_every_layer_output_shape_matches_the_paper(overlapping_pool, input_size):
    model = AlexNet(num_classes=10, overlapping_pool=overlapping_pool, input_size=input_size).eval()
    shapes = output_shapes(model, input_size)
    assert {name: shapes[name] for name in PAPER_SHAPES} == {n: (c, s, s) for n, (c, s) in PAPER_SHAPES.items()}
    assert model(torch.zeros(2, 3, input_size, input_size)).shape == (2, 10)
    pool = model.features.conv1_pool
    assert (pool.kernel_size, pool.stride) == ((3, 2) if overlapping_pool else (2, 2))


def test_two_towers_connect_conv2_conv4_conv5_within_a_tower_only():
    layers = AlexNet().learned_layers()
    groups = {name: layers[name].groups for name in ("conv1", "conv2", "conv3", "conv4", "conv5")}
    assert groups == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}
    # docs/paper.md#architecture: conv2 5x5x48, conv3 3x3x256, conv4 3x3x192, conv5 3x3x192.
    assert [tuple(layers[f"conv{i}"].weight.shape[1:]) for i in range(2, 6)] == [
        (48, 5, 5), (256, 3, 3), (192, 3, 3), (192, 3, 3)
    ]


def test_one_tower_has_half_the_kernels_but_full_conv5_and_fc():
    layers = AlexNet(towers=1).learned_layers()
    widths = {name: getattr(m, "out_channels", None) or m.out_features for name, m in layers.items()}
    assert widths == {"conv1": 48, "conv2": 128, "conv3": 192, "conv4": 192, "conv5": 256,
                      "fc6": 4096, "fc7": 4096, "fc8": 1000}
    assert all(m.groups == 1 for m in layers.values() if isinstance(m, nn.Conv2d))
    assert layers["fc6"].in_features == 256 * 6 * 6


def reference_lrn(a: np.ndarray, n=5, k=2.0, per_term=1e-4 / 5, beta=0.75) -> np.ndarray:
    """b_i = a_i / (k + per_term * sum of a_j^2 over the window)^beta, one map at a time in float64."""
    b = np.empty_like(a)
    channels = a.shape[1]
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        b[:, i] = a[:, i] / (k + per_term * (a[:, lo : hi + 1] ** 2).sum(axis=1)) ** beta
    return b


def test_lrn_is_what_the_authors_code_computed_and_the_printed_formula_is_an_option():
    x = torch.randn(2, 13, 4, 4, dtype=torch.float64) * 30  # large enough that the denominator matters
    # cuda-convnet2 (layer.py NormLayerParser, conv_util.cu kFCNorm): minDiv + scale / size * sum(a^2).
    ours = local_response_norm(x).numpy()
    np.testing.assert_allclose(ours, reference_lrn(x.numpy(), per_term=1e-4 / 5), rtol=1e-12)
    assert not np.allclose(ours, x.numpy() / 2**0.75)  # the squares did change something
    # torch's module computes the same with the paper's constants.
    torch_lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(x).numpy()
    np.testing.assert_allclose(ours, torch_lrn, rtol=1e-10)
    # The literal reading of the printed formula: alpha per squared term, five times stronger.
    printed = local_response_norm(x, formula="printed").numpy()
    np.testing.assert_allclose(printed, reference_lrn(x.numpy(), per_term=1e-4), rtol=1e-12)
    assert not np.allclose(printed, ours)
    with pytest.raises(ValueError, match="lrn_formula"):
        local_response_norm(x, formula="caffe")


@pytest.mark.parametrize("formula, per_term", [("cuda-convnet2", 1e-4 / 5), ("printed", 1e-4)])
def test_lrn_is_applied_per_tower(formula, per_term):
    x = torch.randn(1, 96, 3, 3, dtype=torch.float64) * 30
    towers = x.view(1, 2, 48, 3, 3)
    per_tower = torch.cat([torch.from_numpy(reference_lrn(towers[:, t].numpy(), per_term=per_term)) for t in (0, 1)], 1)
    torch.testing.assert_close(LocalResponseNorm(towers=2, formula=formula)(x), per_tower)
    # Boosting the last map of tower 0 changes the first map of tower 1 only when the towers are one.
    boosted = x.clone()
    boosted[:, 47] *= 100
    assert torch.equal(LocalResponseNorm(towers=2)(boosted)[:, 48], LocalResponseNorm(towers=2)(x)[:, 48])
    assert not torch.allclose(LocalResponseNorm(towers=1)(boosted)[:, 48], LocalResponseNorm(towers=1)(x)[:, 48])


def test_one_tower_lrn_is_torchs_local_response_norm_with_the_papers_constants():
    x = torch.randn(3, 48, 7, 7) * 40
    torch.testing.assert_close(LocalResponseNorm(towers=1)(x), nn.LocalResponseNorm(5, 1e-4, 0.75, 2)(x))


def test_alpha_times_s_squared_normalises_activations_scaled_by_1_over_s_as_alpha_does_raw_ones():
    raw = torch.rand(2, 48, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 300
    paper = LocalResponseNorm(towers=2)(raw)
    scaled = LocalResponseNorm(towers=2, alpha=1e-4 * 255**2)(raw / 255)
    torch.testing.assert_close(scaled * 255, paper)  # the same normalisation, in the smaller units


def test_two_tower_model_normalises_each_tower_separately():
    model = AlexNet(num_classes=10)
    norms = [model.features.conv1_lrn, model.features.conv2_lrn]
    assert [n.towers for n in norms] == [2, 2]
    assert [n.towers for n in (AlexNet(num_classes=10, towers=1).features.conv1_lrn,)] == [1]
    assert not hasattr(AlexNet(num_classes=10, lrn=False).features, "conv1_lrn")
    assert [n.formula for n in norms] == ["cuda-convnet2"] * 2
    assert AlexNet(num_classes=10, lrn_formula="printed").features.conv2_lrn.formula == "printed"
    assert AlexNet(num_classes=10).features.conv1_lrn.alpha == 1e-4  # the paper's
    assert AlexNet(num_classes=10, lrn_alpha=6.5025).features.conv2_lrn.alpha == 6.5025


def test_initial_weights_and_biases_follow_the_paper():
    torch.manual_seed(0)
    layers = AlexNet().learned_layers()
    for name, layer in layers.items():
        assert abs(layer.weight.std().item() - 0.01) < 0.0005, name
        assert abs(layer.weight.mean().item()) < 0.0005, name
    assert {name: layer.bias.unique().tolist() for name, layer in layers.items()} == {
        "conv1": [0.0], "conv2": [1.0], "conv3": [0.0], "conv4": [1.0], "conv5": [1.0],
        "fc6": [1.0], "fc7": [1.0], "fc8": [0.0],
    }


def test_kaiming_init_is_a_named_deviation():
    layers = AlexNet(num_classes=10, init="kaiming").learned_layers()
    assert abs(layers["conv1"].weight.std().item() - (2 / 363) ** 0.5) < 0.01
    assert all(layer.bias.abs().max().item() == 0 for layer in layers.values())


def test_dropout_is_active_in_training_and_inactive_in_eval():
    torch.manual_seed(0)
    model = AlexNet(num_classes=10, width=0.25)
    x = torch.randn(4, 3, 227, 227)
    assert not torch.equal(model.train()(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    assert not any(isinstance(m, nn.Dropout) for m in AlexNet(num_classes=10, dropout=0).modules())


def test_drop_layer_removes_one_middle_conv_and_rewires_the_next():
    layers = AlexNet(num_classes=10, drop_layer="conv4").learned_layers()
    assert "conv4" not in layers
    assert layers["conv5"].in_channels == 384  # conv3's maps, split over the two towers by groups=2
    model = AlexNet(num_classes=10, drop_layer="conv5")
    assert model.features.conv4_pool is not None and model.classifier.fc6.in_features == 384 * 6 * 6
    assert model(torch.zeros(1, 3, 227, 227)).shape == (1, 10)


def test_tanh_replaces_every_relu():
    model = AlexNet(num_classes=10, activation="tanh")
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 7
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def test_width_scales_kernels_and_keeps_towers_whole():
    layers = AlexNet(num_classes=10, width=0.25, input_size=67).learned_layers()
    assert [layers[f"conv{i}"].out_channels for i in range(1, 6)] == [24, 64, 96, 96, 64]
    assert layers["fc6"].out_features == 1024


@pytest.mark.parametrize(
    "kwargs, option",
    [({"drop_layer": "conv6"}, "drop_layer"), ({"towers": 3}, "towers"), ({"width": 0}, "width"),
     ({"dropout": 1.0}, "dropout"), ({"input_size": 30}, "input_size"), ({"activation": "gelu"}, "activation"),
     ({"lrn_formula": "alpha"}, "lrn_formula"),
     ({"lrn_alpha": 0.0}, "lrn_alpha")],
)
def test_impossible_options_name_themselves(kwargs, option):
    with pytest.raises(ValueError, match=option):
        AlexNet(**kwargs)
