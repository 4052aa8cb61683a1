import yaml

from alexnet_lightning.model.network import AlexNet
from alexnet_lightning.study.variants import ABLATIONS, VARIANTS, generated_files, merge


def test_committed_overlays_and_sweep_are_generated_from_the_registry():
    for path, text in generated_files().items():
        assert path.read_text() == text, f"{path} is stale: run python -m alexnet_lightning.study.variants"


def test_every_model_override_is_an_argument_of_the_network():
    network_args = set(AlexNet.__init__.__code__.co_varnames)
    for variant in VARIANTS.values():
        assert set(variant.overrides.get("model", {})) <= network_args, variant.name
        assert set(variant.overrides) <= {"model", "data"}, variant.name


def test_registry_holds_the_paper_table():
    assert ABLATIONS == ["no_lrn", "no_overlap", "no_split", "no_pca", "no_dropout", "drop_layer", "tanh"]
    assert (VARIANTS["no_lrn"].paper_top1, VARIANTS["no_lrn"].paper_top5) == (1.4, 1.2)
    assert (VARIANTS["no_split"].paper_top1, VARIANTS["no_split"].paper_top5) == (1.7, 1.2)
    assert yaml.safe_load(generated_files()[next(iter(generated_files()))]) == VARIANTS["no_lrn"].overrides


def test_merge_overrides_section_by_section():
    base = {"model": {"lr": 0.01, "lrn": True}, "data": {"batch_size": 128}}
    assert merge(base, {"model": {"lrn": False}}) == {"model": {"lr": 0.01, "lrn": False}, "data": {"batch_size": 128}}
    assert base["model"]["lrn"] is True  # the base is not changed
