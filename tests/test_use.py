"""Using a trained network: the checkpoint's inference record, alexnet-classify and load(), the export, the hub entry,
and that none of them runs code from the file it reads."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from alexnet_lightning.model.module import AlexNetModule
from alexnet_lightning.training.cli import main as cli
from alexnet_lightning.use import classify, export
from alexnet_lightning.use.record import UnsafeFile, read
from tests.conftest import REPO


def handmade_checkpoint(path: Path, root: Path, seed: int = 0) -> AlexNetModule:
    """A checkpoint as the CLI writes one (state dict and inference record) of a freshly initialised network."""
    torch.manual_seed(seed)
    module = AlexNetModule(lr=0.01, momentum=0.9, weight_decay=5e-4, lr_factor=0.1, lr_reductions=3, num_classes=10,
                           width=0.1875, input_size=67, init="kaiming", lrn_alpha=6.5025)
    record = module.inference_record()
    wnids = sorted(p.name for p in (root / "train").iterdir())
    record["data"] = {"root": str(root), "mean": torch.rand(3, 72, 72), "value_scale": 1.0, "resize_size": 72,
                      "crop_size": 67, "wnids": wnids, "names": [w.upper() for w in wnids]}
    torch.save({"state_dict": module.state_dict(), "inference": record}, path)
    return module.eval()


class WouldRunCode:
    """Unpickling it creates the marker file: what a malicious checkpoint could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def classify_json(checkpoint: Path, *paths: Path, capsys, extra: tuple[str, ...] = ()) -> tuple[int, list, str]:
    code = classify.main([str(checkpoint), *map(str, paths), "--json", *extra])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else [], err


def test_classify_names_and_skips_unreadable_files_and_ranks_by_the_networks_softmax(tiny_imagefolder, tmp_path,
                                                                                     capsys):
    module = handmade_checkpoint(tmp_path / "m.ckpt", tiny_imagefolder)
    folder = tmp_path / "images"
    folder.mkdir()
    good = sorted((tiny_imagefolder / "val" / "circle").iterdir())[:2]
    for file in good:
        shutil.copy(file, folder / file.name)
    (folder / "broken.jpg").write_bytes(good[0].read_bytes()[:40] if good[0].suffix == ".jpg" else b"\xff\xd8\xff")
    (folder / "text.png").write_text("not an image")
    code, rows, err = classify_json(tmp_path / "m.ckpt", folder, tmp_path / "missing.jpg", capsys=capsys)
    assert code == 0 and [Path(r["file"]).name for r in rows] == sorted(f.name for f in good)
    for name in ("broken.jpg", "text.png", "missing.jpg"):
        assert f"skipped {folder / name if name != 'missing.jpg' else tmp_path / name}" in err
    model, preprocess, classes = classify.load(tmp_path / "m.ckpt")
    for row in rows:  # the module's own network on the recorded preprocessing gives the same top 5
        image = Image.open(row["file"]).convert("RGB")
        with torch.no_grad():
            probs = module(preprocess(image)[None]).softmax(-1)[0]
        expected = [classes[i] for i in probs.topk(5).indices]
        assert [t["name"] for t in row["top5"]] == expected and classes[0] == classes[0].upper()
        assert abs(row["top5"][0]["probability"] - float(probs.max())) < 1e-5
    code, rows, err = classify_json(tmp_path / "m.ckpt", folder / "text.png", capsys=capsys)
    assert code == 1 and rows == [] and "text.png" in err  # nothing classified: a failure, not a crash


def test_ten_crop_averages_the_softmax_over_the_papers_ten_crops(tiny_imagefolder, tmp_path, capsys):
    handmade_checkpoint(tmp_path / "m.ckpt", tiny_imagefolder, seed=1)
    file = sorted((tiny_imagefolder / "val" / "kite").iterdir())[0]
    _, [row], _ = classify_json(tmp_path / "m.ckpt", file, capsys=capsys, extra=("--ten-crop",))
    model, crops, _ = classify.load(tmp_path / "m.ckpt", ten_crops=True)
    with torch.no_grad():
        probs = model(crops(Image.open(file).convert("RGB"))).softmax(-1).mean(0)  # [10, 3, S, S] -> the mean
    assert [t["probability"] for t in row["top5"]] == pytest.approx(probs.topk(5).values.tolist(), abs=1e-5)
    _, [centre], _ = classify_json(tmp_path / "m.ckpt", file, capsys=capsys)
    assert centre["top5"] != row["top5"]


def test_the_hub_entry_and_the_export_give_the_checkpoints_logits(tiny_imagefolder, tmp_path):
    module = handmade_checkpoint(tmp_path / "m.ckpt", tiny_imagefolder)
    card = export.export(tmp_path / "m.ckpt", tmp_path / "out" / "alexnet.safetensors")
    x = torch.randn(4, 3, 67, 67)
    with torch.no_grad():
        expected = module(x)
        for kind, path in (("checkpoint", tmp_path / "m.ckpt"), ("export", tmp_path / "out" / "alexnet.safetensors")):
            network = torch.hub.load(str(REPO), "alexnet", source="local", **{kind: str(path)})
            assert not network.training and torch.equal(network(x), expected), kind
    record, _ = read(tmp_path / "out" / "alexnet.safetensors")
    assert record["data"]["wnids"] == sorted(p.name for p in (tiny_imagefolder / "train").iterdir())
    assert torch.equal(record["data"]["mean"], torch.load(tmp_path / "m.ckpt")["inference"]["data"]["mean"])
    text = card.read_text()
    assert card == tmp_path / "out" / "alexnet.md" and "Preset: quick" in text and "cuda-convnet2" in text
    assert "One weird trick" in text and "width=0.1875" in text


def test_a_pickle_that_would_run_code_is_refused_by_the_hub_entry_and_the_command(tmp_path, capsys):
    marker = tmp_path / "ran"
    torch.save({"state_dict": {}, "inference": {"data": WouldRunCode(marker)}}, tmp_path / "evil.ckpt")
    with pytest.raises(UnsafeFile, match="could run code"):
        torch.hub.load(str(REPO), "alexnet", source="local", checkpoint=str(tmp_path / "evil.ckpt"))
    assert classify.main([str(tmp_path / "evil.ckpt"), str(tmp_path)]) == 2
    assert export.main([str(tmp_path / "evil.ckpt"), str(tmp_path / "e.safetensors")]) == 2
    assert capsys.readouterr().err.count("could run code") == 2
    assert not marker.exists()
    torch.load(tmp_path / "evil.ckpt", weights_only=False)  # the file is what the test claims: it runs code
    assert marker.exists()


def test_a_checkpoint_without_an_inference_record_is_refused_naming_the_file(tmp_path, capsys):
    torch.save({"state_dict": {}}, tmp_path / "old.ckpt")
    (tmp_path / "noise.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    assert classify.main([str(tmp_path / "old.ckpt"), str(tmp_path)]) == 2
    assert f"{tmp_path / 'old.ckpt'} holds no inference record" in capsys.readouterr().err
    with pytest.raises(ValueError, match="noise.safetensors"):
        read(tmp_path / "noise.safetensors")


@pytest.fixture(scope="module")
def fitted(tiny_imagefolder, tmp_path_factory):
    """A one-epoch fit of the quick preset through the CLI on a copy of the tiny data, then that copy moved away."""
    tmp = tmp_path_factory.mktemp("fitted")
    shutil.copytree(tiny_imagefolder, tmp / "data")
    run = cli(["fit", "--config", "quick", "--data.root", str(tmp / "data"), "--trainer.max_epochs", "1",
               "--data.batch_size", "16", "--data.num_workers", "0", "--data.statistics_images", "32",
               "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp / "run")])
    mean = run.datamodule.mean.clone()
    (tmp / "data").rename(tmp / "moved")
    return tmp / "run" / "checkpoints" / "last.ckpt", tmp / "moved", mean


@pytest.mark.slow
def test_a_fitted_checkpoint_records_what_inference_needs_and_loads_with_weights_only(fitted):
    checkpoint, moved, mean = fitted
    record = torch.load(checkpoint, weights_only=True)["inference"]
    assert torch.equal(record["data"]["mean"], mean) and record["data"]["mean"].shape == (3, 72, 72)
    assert record["data"]["wnids"] == sorted(p.name for p in (moved / "train").iterdir())
    assert (record["data"]["resize_size"], record["data"]["crop_size"], record["data"]["value_scale"]) == (72, 67, 1)
    assert record["network"]["width"] == 0.1875 and record["network"]["num_classes"] == 10
    assert record["readings"] == {"lrn_formula": "cuda-convnet2", "lighting_formula": "cuda-convnet2",
                                  "lighting_rescale": False}
    # 60 images in batches of 16: 3 steps, the partial fourth batch dropped
    assert 0 <= record["measured"]["val/top1_error"] <= 1 and record["global_step"] == 3


@pytest.mark.slow
def test_the_data_moved_away_the_command_and_load_give_the_same_top5(fitted, capsys):
    checkpoint, moved, _ = fitted
    code, rows, _ = classify_json(checkpoint, moved / "val", capsys=capsys)
    assert code == 0 and len(rows) == 30
    model, preprocess, classes = classify.load(checkpoint)
    for row in rows:
        with torch.no_grad():
            probs = model(preprocess(Image.open(row["file"]).convert("RGB"))[None]).softmax(-1)[0]
        assert [t["name"] for t in row["top5"]] == [classes[i] for i in probs.topk(5).indices]
