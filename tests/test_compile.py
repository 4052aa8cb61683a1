"""compile is a speed option: the checkpoint, the tower split and a study's later cells do not depend on it.

Compiling is lazy, so these tests compile with a counting backend (dynamo traces the network, the graphs run eager):
what is checked is what dynamo sees and what the checkpoints hold, not inductor's kernels (the self-check runs those).
"""

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

from alexnet_lightning.model.module import AlexNetModule
from alexnet_lightning.model.network import AlexNet
from alexnet_lightning.model.towers import TowerAlexNet, TowerParallelStrategy
from tests.test_towers import EXACT, join, spawn

SMALL = {"num_classes": 10, "width": 0.125, "input_size": 67}


class CountingBackend:
    """A torch.compile backend that counts the frames dynamo compiles and runs their graphs eagerly."""

    def __init__(self) -> None:
        self.frames, self.symbolic = 0, 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        self.frames += 1
        self.symbolic += any(not isinstance(x, torch.Tensor) for x in example_inputs)  # a dynamic graph's sizes
        return graph.forward


def compile_with(backend: CountingBackend, real=torch.compile):
    """torch.compile with ``backend`` in place of inductor, mode dropped (it is inductor's)."""

    def fake(model, *, mode=None, dynamic=None, **options):
        return real(model, backend=backend, dynamic=dynamic)

    return fake


@pytest.fixture
def counting(monkeypatch) -> CountingBackend:
    backend = CountingBackend()
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", compile_with(backend))
    yield backend
    torch._dynamo.reset()


def loader(count: int = 12, batch: int = 4) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count, 3, 67, 67, generator=generator)
    return DataLoader(TensorDataset(images, torch.randint(10, (count,), generator=generator)), batch_size=batch)


def fit(module: AlexNetModule, folder: Path, steps: int, ckpt_path: Path | None = None) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=1, default_root_dir=folder)
    trainer.fit(module, loader(), loader(), ckpt_path=ckpt_path)
    return trainer


def module(compile: bool, paper_optimisation: dict, **options) -> AlexNetModule:
    torch.manual_seed(0)
    return AlexNetModule(**paper_optimisation, **SMALL, compile=compile, **options)


def test_compiling_keeps_the_networks_names_and_attribute(paper_optimisation, counting):
    compiled = module(True, paper_optimisation, channels_last=True)
    compiled.configure_model()
    compiled.configure_model()  # Lightning may call the hook twice: compiled once
    assert isinstance(compiled.network, AlexNet)
    assert all("_orig_mod" not in key for key in compiled.state_dict())
    assert compiled.state_dict().keys() == module(False, paper_optimisation).state_dict().keys()
    compiled(torch.randn(2, 3, 67, 67))
    assert counting.frames >= 1  # the forward did go through the compiler


def test_each_batch_shape_gets_a_static_graph_of_its_own(paper_optimisation, counting):
    """A second batch size would otherwise make dynamo recompile the network for dynamic shapes, which then runs
    every later step; the few shapes of validation and ten-crop testing each get one static graph instead."""
    compiled = module(True, paper_optimisation)
    compiled.configure_model()
    with torch.no_grad():
        for size in (4, 3, 4, 3):
            compiled(torch.randn(size, 3, 67, 67))
    assert (counting.frames, counting.symbolic) == (2, 0)


def test_training_drops_its_last_partial_batch_and_evaluation_keeps_it(tiny_imagefolder):
    from alexnet_lightning.data.datamodule import ImageNetDataModule

    for in_memory in (False, True):  # files read one by one, and the split held in memory
        data = ImageNetDataModule(16, root=str(tiny_imagefolder), num_workers=0, statistics_images=16,
                                  resize_size=72, crop_size=67, in_memory=in_memory)
        data.prepare_data()
        data.setup("fit")
        assert len(data.train_set) == 60 and len(data.train_dataloader()) == 3  # 60 = 3 x 16 + 12
        assert {len(batch[1]) for batch in data.train_dataloader()} == {16}
        assert len(data.val_set) == 30 and len(data.val_dataloader()) == 2


@pytest.mark.slow
@pytest.mark.parametrize("written, resumed", [(True, False), (False, True)])
def test_a_checkpoint_crosses_compile_settings_with_the_same_weights(
    written, resumed, paper_optimisation, counting, tmp_path
):
    first = module(written, paper_optimisation)
    fit(first, tmp_path, 2).save_checkpoint(tmp_path / "a.ckpt")
    state = torch.load(tmp_path / "a.ckpt", weights_only=True)["state_dict"]
    assert not any("_orig_mod" in key for key in state)
    # Tested with the other setting: the same weights.
    other = AlexNetModule.load_from_checkpoint(tmp_path / "a.ckpt", compile=resumed)
    for key, value in first.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    # Into a plain network, strictly, as export and classification load it.
    plain = AlexNet(**SMALL)
    plain.load_state_dict({k.removeprefix("network."): v for k, v in state.items() if k.startswith("network.")})
    # Resumed with the other setting: training goes on from the checkpoint's step.
    again = module(resumed, paper_optimisation)
    assert fit(again, tmp_path, 4, ckpt_path=tmp_path / "a.ckpt").global_step == 4
    assert counting.frames >= 1


def test_a_checkpoint_of_the_compiled_wrapper_loads_uncompiled(paper_optimisation, tmp_path):
    """Checkpoints written before the network was compiled in place hold ``network._orig_mod.`` keys."""
    source = module(False, paper_optimisation)
    state = {k.replace("network.", "network._orig_mod.", 1): v for k, v in source.state_dict().items()}
    checkpoint = {"state_dict": state, "hyper_parameters": dict(source.hparams), "readings": source.readings(),
                  "pytorch-lightning_version": L.__version__}
    torch.save(checkpoint, tmp_path / "old.ckpt")
    loaded = AlexNetModule.load_from_checkpoint(tmp_path / "old.ckpt", compile=False)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())


def _towers_worker(rank: int, world_size: int, port: int, optimisation: dict, folder: Path) -> None:
    join(rank, world_size, port)
    dist.init_process_group("gloo")  # before Lightning's, which then reuses it; for the counting backend only
    backend = CountingBackend()
    torch.compile = compile_with(backend)  # a process of its own: nothing else sees it
    seen = {}

    class Look(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, index):
            tower = module.network
            seen["tower"] = isinstance(tower, TowerAlexNet) and tower._compiled_call_impl is not None
            seen["channels_last"] = tower.features.conv1.weight.is_contiguous(memory_format=torch.channels_last)

    torch.manual_seed(0)
    net = AlexNetModule(**optimisation | {"lr_schedule": "step"}, **EXACT, compile=True, channels_last=True)
    run = L.Trainer(accelerator="cpu", devices=world_size, max_steps=2, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                    strategy=TowerParallelStrategy(), callbacks=[Look()])
    run.fit(net, loader(16, 8))
    torch.save({**seen, "frames": backend.frames, "step": run.global_step}, folder / f"rank{rank}.pt")


@pytest.mark.slow
def test_towers_with_compile_and_channels_last_fit_a_few_steps(paper_optimisation, tmp_path):
    spawn(_towers_worker, 2, paper_optimisation, tmp_path)
    for rank in range(2):
        seen = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert seen == {"tower": True, "channels_last": True, "frames": seen["frames"], "step": 2}
        assert seen["frames"] >= 2  # the tower's layers ran compiled, in graphs between the exchanges


@pytest.mark.slow
def test_each_cell_of_a_study_with_compile_compiles(study_args, tmp_path, monkeypatch, counting):
    """In one process, dynamo's cache keeps every earlier cell's graphs until its recompile limit; then later cells
    run eager, silently. Three variants: each cell compiles frames of its own."""
    from alexnet_lightning.study import cell as study_cell
    from alexnet_lightning.study import runner

    overlay = tmp_path / "compile.yaml"
    overlay.write_text("model:\n  compile: true\ntrainer:\n  max_steps: 2\n  limit_val_batches: 1\n"
                       "  limit_test_batches: 1\n")
    limit = torch._dynamo.config.patch(recompile_limit=3)  # reached sooner, as in a longer study
    frames: list[int] = []
    train_cell = study_cell.train_cell

    def counted(*args, **kwargs):
        before = counting.frames
        train_cell(*args, **kwargs)
        frames.append(counting.frames - before)

    monkeypatch.setattr(study_cell, "train_cell", counted)
    with limit:
        assert runner.main([*study_args, "--config", str(overlay), "--no-lrn", "--no-dropout", "--seeds", "1"]) == 0
    assert len(frames) == 3 and all(count > 0 for count in frames), frames
