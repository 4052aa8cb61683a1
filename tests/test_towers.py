"""The two-tower strategy computes and trains what the grouped single-device net does, on processes over gloo."""

import os
import socket
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from lightning.pytorch.cli import LightningArgumentParser
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from alexnet_lightning import CONFIGS
from alexnet_lightning.model.module import AlexNetModule
from alexnet_lightning.model.network import AlexNet
from alexnet_lightning.model.towers import TowerAlexNet, TowerParallelStrategy

REPO = Path(__file__).resolve().parents[1]
SMALL = {"num_classes": 10, "width": 0.25, "input_size": 67}
# No dropout, so that runs on one and on two processes draw nothing at random; He init, so that every layer's
# gradient is far from zero and its comparison means something.
EXACT = {**SMALL, "dropout": 0.0, "init": "kaiming"}
BATCH = 8  # per step, over all replicas
STEPS = 3  # per epoch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(worker: Callable, nprocs: int, *args: object) -> None:
    mp.spawn(worker, args=(nprocs, free_port(), *args), nprocs=nprocs)


def join(rank: int, world_size: int, port: int) -> None:
    """The environment torchrun gives a process: Lightning sees processes made outside it and launches none."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank),
        LOCAL_RANK=str(rank), NODE_RANK="0",
    )  # fmt: skip
    torch.set_num_threads(1)


def data(batch_size: int, shuffled: bool = False, other: int = 0) -> DataLoader:
    """Random images; `shuffled` in the order Lightning gives the replicas of a distributed run;
    `other` > 0 changes every image and label, as a pipeline seeded per process changes its augmentations."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH * STEPS, 3, SMALL["input_size"], SMALL["input_size"], generator=generator)
    labels = torch.randint(SMALL["num_classes"], (BATCH * STEPS,), generator=generator)
    dataset = TensorDataset(images + other, (labels + other) % SMALL["num_classes"])
    seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # Lightning seeds the samplers it injects so
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, seed=seed) if shuffled else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler)


def trainer(devices: int, epochs: int, **kwargs: object) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=devices, max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kwargs,
    )  # fmt: skip


def fit(
    module: AlexNetModule, devices: int, epochs: int, batch_size: int, other: int = 0, **fit_kwargs: object
) -> L.Trainer:
    run = trainer(devices, epochs, strategy=TowerParallelStrategy() if devices > 1 else "auto")
    run.fit(module, data(batch_size, shuffled=devices == 1, other=other), data(batch_size), **fit_kwargs)
    return run


def network_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=True)["state_dict"]


def assert_same_weights(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in reference.items()}
    for key in reference:
        torch.testing.assert_close(
            state[key], reference[key], rtol=1e-4, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}"
        )


def _forward_backward_worker(rank: int, world_size: int, port: int) -> None:
    join(rank, world_size, port)
    dist.init_process_group("gloo")
    for variant in ({}, {"drop_layer": "conv3"}, {"lrn": False, "overlapping_pool": False, "activation": "tanh"}):
        torch.manual_seed(0)
        grouped = AlexNet(**EXACT, **variant)
        x, y = torch.randn(4, 3, 67, 67), torch.randint(10, (4,))
        logits = grouped(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()

        tower = TowerAlexNet(grouped, dist.group.WORLD)
        tower_logits = tower(x)
        tower_loss = F.cross_entropy(tower_logits, y)
        tower_loss.backward()

        torch.testing.assert_close(tower_logits, logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tower_loss, loss, rtol=1e-5, atol=1e-6)
        fc8 = grouped.classifier.fc8.weight.numel() + grouped.classifier.fc8.bias.numel()
        count = sum(p.numel() for p in grouped.parameters())
        assert sum(p.numel() for p in tower.parameters()) == (count - fc8) // 2 + fc8  # half of all but fc8
        reference = dict(grouped.named_parameters())
        for name, param in tower.named_parameters():
            expected = reference[name].grad  # float rounding is relative to the largest entry summed
            atol = 1e-5 * expected.abs().max().item()
            torch.testing.assert_close(
                tower.unshard(name, param.grad), expected, rtol=1e-4, atol=atol, msg=lambda m, name=name: f"{name}: {m}"
            )
    dist.destroy_process_group()


@pytest.mark.slow
def test_towers_give_the_grouped_nets_logits_loss_and_gradients():
    spawn(_forward_backward_worker, 2)


def _fit_worker(rank: int, world_size: int, port: int, optimisation: dict, folder: Path) -> None:
    join(rank, world_size, port)
    torch.manual_seed(0)
    module = AlexNetModule(**optimisation, **EXACT)
    # Tower 1's own data differs from tower 0's: the towers must still both train on tower 0's.
    run = fit(module, world_size, 1, BATCH, other=rank)
    run.save_checkpoint(folder / "towers.ckpt")
    torch.save(torch.rand(3), folder / f"draws{rank}.pt")  # what each tower's dropout would draw
    assert isinstance(module.network, AlexNet)  # the grouped net again after fit, and after validate
    metrics = run.validate(module, data(BATCH), verbose=False)[0]
    assert isinstance(module.network, AlexNet)
    torch.save(metrics, folder / f"metrics{rank}.pt")

    torch.manual_seed(1)  # other weights, which the checkpoint replaces
    module = AlexNetModule(**optimisation, **EXACT)
    fit(module, world_size, 2, BATCH, ckpt_path=folder / "single.ckpt").save_checkpoint(folder / "then_towers.ckpt")


@pytest.mark.slow
def test_training_under_the_strategy_matches_one_device_and_checkpoints_cross_both_ways(paper_optimisation, tmp_path):
    torch.manual_seed(0)
    single_module = AlexNetModule(**paper_optimisation, **EXACT)
    single_run = fit(single_module, 1, 1, BATCH)
    single_run.save_checkpoint(tmp_path / "single.ckpt")
    torch.manual_seed(0)
    fit(AlexNetModule(**paper_optimisation, **EXACT), 1, 2, BATCH).save_checkpoint(tmp_path / "single2.ckpt")
    spawn(_fit_worker, 2, paper_optimisation, tmp_path)

    # An epoch under the strategy = an epoch on one device, saved with the single-device keys and shapes.
    single, towers = (torch.load(tmp_path / f, weights_only=True) for f in ("single.ckpt", "towers.ckpt"))
    assert_same_weights(towers["state_dict"], single["state_dict"])
    momentum = [
        {i: s["momentum_buffer"] for i, s in c["optimizer_states"][0]["state"].items()} for c in (towers, single)
    ]
    assert_same_weights(*momentum)
    # Validation under the strategy gives the single device's numbers.
    expected = single_run.validate(single_module, data(BATCH), verbose=False)[0]
    for rank in range(2):
        metrics = torch.load(tmp_path / f"metrics{rank}.pt", weights_only=True)
        assert metrics == pytest.approx(expected, rel=1e-5)
    # A second epoch from the other's checkpoint, either way, continues the uninterrupted single-device run.
    torch.manual_seed(1)
    module = AlexNetModule(**paper_optimisation, **EXACT)
    fit(module, 1, 2, BATCH, ckpt_path=tmp_path / "towers.ckpt").save_checkpoint(tmp_path / "then_single.ckpt")
    uninterrupted = network_state(tmp_path / "single2.ckpt")
    assert_same_weights(network_state(tmp_path / "then_towers.ckpt"), uninterrupted)
    assert_same_weights(network_state(tmp_path / "then_single.ckpt"), uninterrupted)
    # The towers draw their own dropout masks.
    assert not torch.equal(torch.load(tmp_path / "draws0.pt"), torch.load(tmp_path / "draws1.pt"))


def _replicas_worker(rank: int, world_size: int, port: int, optimisation: dict, folder: Path) -> None:
    join(rank, world_size, port)
    torch.manual_seed(0)
    module = AlexNetModule(**optimisation, **EXACT)
    fit(module, world_size, 1, BATCH // (world_size // 2))
    torch.save(module.network.state_dict(), folder / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_replicas_of_two_towers_train_like_one_device_on_their_joint_batch(paper_optimisation, tmp_path):
    spawn(_replicas_worker, 4, paper_optimisation, tmp_path)
    # Each process holds its replica's two towers, merged: equal on all four only if each tower's replicas are.
    states = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(4)]
    for state in states[1:]:
        assert all(torch.equal(state[k], states[0][k]) for k in states[0])
    torch.manual_seed(0)
    reference = AlexNetModule(**paper_optimisation, **EXACT)
    fit(reference, 1, 1, BATCH)
    assert_same_weights(states[0], reference.network.state_dict())


def _exit_worker(rank: int, world_size: int, port: int, optimisation: dict, folder: Path) -> None:
    join(rank, world_size, port)
    destroy = dist.destroy_process_group

    def destroy_and_mark(*args: object, **kwargs: object) -> None:  # a process of its own: nothing else sees it
        destroy(*args, **kwargs)
        (folder / f"destroyed{rank}").touch()

    dist.destroy_process_group = destroy_and_mark
    fit(AlexNetModule(**optimisation, **EXACT), world_size, 1, BATCH)
    assert dist.is_initialized()  # the module's network and a later stage may still need it


@pytest.mark.slow
def test_a_finished_fit_destroys_its_process_group_when_the_process_exits(paper_optimisation, tmp_path):
    """Left to the interpreter's shutdown, gloo's threads may abort the process after a run that succeeded."""
    spawn(_exit_worker, 2, paper_optimisation, tmp_path)
    assert (tmp_path / "destroyed0").exists() and (tmp_path / "destroyed1").exists()


@pytest.mark.parametrize(("devices", "num_nodes", "message"), [(1, 1, "at least 2"), (3, 1, "even"), (1, 3, "even")])
def test_a_process_count_that_does_not_split_in_two_towers_fails_at_trainer_construction(devices, num_nodes, message):
    with pytest.raises(ValueError, match=message):
        L.Trainer(accelerator="cpu", devices=devices, num_nodes=num_nodes, strategy=TowerParallelStrategy())


@pytest.mark.parametrize(("network", "message"), [({"towers": 1}, "towers=1"), ({"width": 0.0105}, "fc6 has 43 units")])
def test_a_network_that_does_not_split_in_two_towers_fails_before_training(
    paper_optimisation, monkeypatch, network, message
):
    monkeypatch.setenv("LOCAL_RANK", "0")  # as under torchrun, so that fit launches no processes
    module = AlexNetModule(**paper_optimisation, **{**SMALL, **network})
    with pytest.raises(ValueError, match=message):
        trainer(2, 1, strategy=TowerParallelStrategy()).fit(module, data(BATCH))
    assert module.global_step == 0


def test_the_config_overlay_selects_the_strategy_on_two_devices():
    parser = LightningArgumentParser()
    parser.add_lightning_class_args(L.Trainer, "trainer")
    config = parser.instantiate_classes(parser.parse_path(CONFIGS / "strategy" / "towers.yaml"))
    run = L.Trainer(**vars(config.trainer))
    assert isinstance(run.strategy, TowerParallelStrategy)
    assert run.num_devices == 2
