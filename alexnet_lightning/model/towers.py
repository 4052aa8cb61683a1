"""The paper's two-GPU layout (Section 3.2) as a Lightning strategy: one process per tower, times data parallelism.

Each process holds one tower's half of every layer (conv1's 48 kernels, conv2's 128, ..., fc6's and fc7's 2048 units)
and the towers exchange activations only where the paper's GPUs did: at the inputs of conv3, fc6, fc7 and fc8, the
layers that read both towers' maps (an all-gather over the pair, whose backward hands each tower its gradient).

Why one process per tower rather than one process driving two devices: one process would need a thread or CUDA
streams per tower to run the towers at once, with every kernel of both launched from its one Python thread, and
there are no two devices to drive on a CPU, so it could not be tested here. A process per device is the layout that
torch.distributed, DDP, torchrun, SLURM and Lightning's cluster environments are built for: the tower pair is one
axis of a 2-D device mesh ("replica", "tower"), DDP over the other axis adds data parallelism, and no launcher is
ours. It runs on CPU with gloo, where it is tested, and on GPUs with NCCL, unchanged. The price: both processes of
a replica load its batch, and tower 0's copy is broadcast to tower 1, because a data pipeline seeded per process
(as the CLI's ``seed_everything(workers=True)`` seeds it) would augment the two copies differently.

fc8 is held whole by both towers, not split by rows. The paper lists it as one layer of 1000 units, and the softmax
needs all 1000 logits wherever the loss is computed: with a whole fc8 both towers compute the same logits and loss
from the gathered fc7 outputs, so nothing crosses after fc8 nor in fc8's backward (each tower keeps its own share of
the identical fc7-output gradient). Split by rows, the towers would exchange their logits forward and their
gradients of the fc7 outputs backward. The price is a second copy of fc8: 4.1 M of the net's 61 M parameters, and
4.1 M of its 724 M multiply-adds per image.

Checkpoints hold the single-device (grouped) model's state_dict and optimiser state: the towers' halves are
gathered on save and split on load, by `TowerAlexNet.unshard` and `TowerAlexNet.shard`.
"""

import atexit
from collections import OrderedDict
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.trainer.states import TrainerFn, TrainerStatus
from torch import Tensor, nn
from torch.distributed import ProcessGroup
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.optim import Optimizer

from alexnet_lightning.model.launcher import PatientLauncher
from alexnet_lightning.model.network import AlexNet, LocalResponseNorm

TOWERS = 2
WHOLE = ("fc8",)  # held whole by both towers (see the module docstring)
PREFIX = "network."  # where AlexNetModule keeps its AlexNet


class _GatherTowers(torch.autograd.Function):
    """Both towers' maps, concatenated along channels in tower order, as the grouped net holds them."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: ProcessGroup, whole: bool) -> Tensor:
        ctx.group, ctx.whole = group, whole
        x = x.contiguous()
        pieces = [torch.empty_like(x) for _ in range(TOWERS)]
        dist.all_gather(pieces, x, group=group)
        return torch.cat(pieces, 1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        own = dist.get_rank(ctx.group)
        pieces = torch.stack(grad.chunk(TOWERS, 1)).contiguous()  # channels_last maps give a strided stack
        if ctx.whole:  # both towers computed this same gradient: each keeps its own share
            return pieces[own], None, None
        # Each tower's half of the layer read both towers' maps, so a tower's gradient is the sum of both halves'
        # contributions: a reduce-scatter, done as an all-to-all because gloo and NCCL both have it.
        received = torch.empty_like(pieces)
        dist.all_to_all_single(received, pieces, group=ctx.group)
        return received.sum(0), None, None


class GatherTowers(nn.Module):
    """The towers' communication before a layer that reads both towers' maps."""

    def __init__(self, group: ProcessGroup, whole: bool):
        super().__init__()
        self.group, self.whole = group, whole

    @torch.compiler.disable  # a compiled tower runs in graphs between the exchanges, which stay eager collectives
    def forward(self, x: Tensor) -> Tensor:
        return _GatherTowers.apply(x, self.group, self.whole)

    def extra_repr(self) -> str:
        return f"whole={self.whole}"


class TowerAlexNet(nn.Module):
    """One tower of a two-tower `AlexNet`: its half of every layer (all of fc8), under the grouped net's names.

    Its layer `name` holds rows (output units) `tower` of the grouped net's `name`, so a tensor of one maps onto the
    other by `shard` and `unshard`; every other switch of the network (LRN, pooling, activation, dropout, a dropped
    layer) carries over, since the tower reuses the grouped net's modules.
    """

    def __init__(self, network: AlexNet, group: ProcessGroup):
        super().__init__()
        self.group, self.tower = group, dist.get_rank(group)
        first = next(iter(network.learned_layers()))  # conv1 reads the image, which both towers hold
        for part in ("features", "classifier"):
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            for name, layer in getattr(network, part).named_children():
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    if name != first and getattr(layer, "groups", 1) == 1:  # grouped convs read their own tower only
                        layers[f"{name}_gather"] = GatherTowers(group, whole=name in WHOLE)
                    layers[name] = self._tower_layer(name, layer)
                elif isinstance(layer, LocalResponseNorm):  # each GPU normalised only the maps it held
                    layers[name] = LocalResponseNorm(1, layer.size, layer.alpha, layer.beta, layer.k, layer.formula)
                else:
                    layers[name] = layer
            setattr(self, part, nn.Sequential(layers))
        self.load_state_dict({key: self.shard(key, tensor) for key, tensor in network.state_dict().items()})

    @staticmethod
    def _tower_layer(name: str, layer: nn.Conv2d | nn.Linear) -> nn.Module:
        like = {"device": layer.weight.device, "dtype": layer.weight.dtype}
        out = layer.weight.shape[0] if name in WHOLE else layer.weight.shape[0] // TOWERS
        if isinstance(layer, nn.Linear):
            return nn.Linear(layer.in_features, out, **like)
        in_channels = layer.in_channels // layer.groups  # a grouped conv reads its own tower's maps only
        return nn.Conv2d(in_channels, out, layer.kernel_size, layer.stride, layer.padding, **like)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

    def shard(self, key: str, full: Tensor) -> Tensor:
        """This tower's share of a grouped-net tensor (a parameter or an optimiser state shaped like one)."""
        if _layer(key) in WHOLE:
            return full
        return full.chunk(TOWERS)[self.tower].clone()

    def unshard(self, key: str, local: Tensor) -> Tensor:
        """The grouped-net tensor whose share this tower holds; a collective, so every tower must call it."""
        if _layer(key) in WHOLE:
            return local
        pieces = [torch.empty_like(local) for _ in range(TOWERS)]
        dist.all_gather(pieces, local.contiguous(), group=self.group)
        return torch.cat(pieces)


def destroy_process_group() -> None:
    """At exit, while the interpreter is whole. Left to the interpreter's shutdown, a gloo process group's threads
    free the tensors of their finished work after Python has gone, and the process may abort (SIGABRT, "terminate
    called without an active exception") after a run that succeeded (PyTorch PR 179291 describes it). Lightning
    destroys the group at exit for NCCL only."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _layer(key: str) -> str:
    return key.split(".")[-2]  # "features.conv3.weight" -> "conv3"


class TowerParallelStrategy(DDPStrategy):
    """One process per tower of the paper's two-GPU AlexNet, with DDP across replicas of the tower pair.

    Processes form a (replica, tower) mesh, rank = 2 * replica + tower: a replica's two towers are neighbouring
    ranks, so on one node, as the paper's two GPUs were in one machine. The data is sharded over replicas (both
    towers of a replica see the same batch) and a tower's gradients are averaged over the replicas of that tower.
    Takes DDPStrategy's arguments. After a finished `fit`/`validate`/`test` the module holds the whole grouped net
    again; after an interrupted one it keeps this process's tower, and its last checkpoint holds the whole net.
    """

    mesh: DeviceMesh
    _grouped: AlexNet

    def _configure_launcher(self) -> None:
        # The first call after Lightning has told the strategy its devices and nodes: fail in `Trainer(...)`.
        world_size = self.num_nodes * self.num_processes
        if world_size < TOWERS:
            raise ValueError(
                f"TowerParallelStrategy puts each of the paper's two towers on its own device and needs at least 2 "
                f"processes (devices x num_nodes); got {world_size}"
            )
        if world_size % TOWERS:
            raise ValueError(
                f"TowerParallelStrategy runs 2 processes (one per tower) per data-parallel replica and needs an even "
                f"number of processes (devices x num_nodes); got {world_size}"
            )
        super()._configure_launcher()
        if isinstance(self._launcher, _SubprocessScriptLauncher):  # a rank's SIGTERM stop must not kill rank 0's
            self._launcher = PatientLauncher(self.cluster_environment, self.num_processes, self.num_nodes)

    def connect(self, model: pl.LightningModule) -> None:
        network = getattr(model, "network", None)
        if not isinstance(network, AlexNet) or network.towers != TOWERS:
            got = f"towers={network.towers}" if isinstance(network, AlexNet) else type(network).__name__
            raise ValueError(
                f"TowerParallelStrategy needs a LightningModule whose `network` is the two-tower AlexNet(towers=2); "
                f"got {got}. Train the one-tower variant with an ordinary strategy."
            )
        for name, layer in network.learned_layers().items():
            if name not in WHOLE and layer.weight.shape[0] % TOWERS:
                raise ValueError(
                    f"{name} has {layer.weight.shape[0]} units, which do not split between two towers; "
                    f"choose a width that makes it even"
                )
        super().connect(model)

    def setup_distributed(self) -> None:
        super().setup_distributed()
        # init_device_mesh lays ranks out row-major: rank = replica * TOWERS + tower.
        self.mesh = init_device_mesh(
            self.root_device.type, (self.world_size // TOWERS, TOWERS), mesh_dim_names=("replica", "tower")
        )
        self._ddp_kwargs["process_group"] = self.mesh.get_group("replica")  # average a tower over its replicas only

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        # The data is sharded over replicas only: both towers of a replica read the same samples.
        return {"num_replicas": self.world_size // TOWERS, "rank": self.global_rank // TOWERS}

    def setup(self, trainer: pl.Trainer) -> None:
        # Out of fitting, Lightning broadcasts rank 0's module to all processes, which must precede the split;
        # in fitting, DDP and the optimisers must see the split module.
        if trainer.state.fn == TrainerFn.FITTING:
            self._split_network()
            super().setup(trainer)
        else:
            super().setup(trainer)
            self._split_network()
        # Each GPU dropped its own neurons (Section 4.2): processes seeded alike would make the two towers drop the
        # same units of their halves. Tower 1's data randomness is unused (batch_to_device), so a stream per process.
        torch.manual_seed(torch.initial_seed() + 1 + self.global_rank)

    def _split_network(self) -> None:
        module = self.lightning_module
        network = module.network.to(self.root_device)
        for tensor in network.state_dict().values():  # both towers split one model, and hold the same fc8
            sent = tensor.contiguous()  # channels_last weights are not, and collectives need contiguous tensors
            dist.broadcast(sent, src=0)
            tensor.copy_(sent)
        tower = TowerAlexNet(network, self.mesh.get_group("tower"))
        speed_options = getattr(module, "apply_speed_options", None)
        if speed_options is not None:  # channels_last and compile, as the grouped net got them in configure_model
            speed_options(tower)
        module.network = tower
        self._grouped = network.to("meta")  # its structure, to merge into after the stage

    def teardown(self) -> None:
        module = self.lightning_module
        if (
            module is not None
            and isinstance(module.network, TowerAlexNet)
            and module.trainer.state.status == TrainerStatus.RUNNING  # an interrupted process may be alone here
        ):
            tower = module.network
            grouped = self._grouped.to_empty(device=self.root_device)
            grouped.load_state_dict(self._grouped_state(tower.state_dict(), ""))
            if module.trainer.state.fn == TrainerFn.FITTING:  # the optimisers step the grouped net from now on
                swap = dict(zip(tower.parameters(), grouped.parameters()))  # the same names in the same order
                for optimizer in self.optimizers:
                    state = self.optimizer_state(optimizer)
                    for group in optimizer.param_groups:
                        group["params"] = [swap.get(param, param) for param in group["params"]]
                    optimizer.load_state_dict(state)
            module.network = grouped
            # A finished stage leaves no collective in flight: the process group can go when the process ends.
            atexit.unregister(destroy_process_group)
            atexit.register(destroy_process_group)
        super().teardown()

    def batch_to_device(self, batch: Any, device: torch.device | None = None, dataloader_idx: int = 0) -> Any:
        batch = super().batch_to_device(batch, device, dataloader_idx)
        group = self.mesh.get_group("tower")

        def from_tower_0(tensor: Tensor) -> Tensor:
            tensor = tensor.contiguous()
            dist.broadcast(tensor, src=dist.get_global_rank(group, 0), group=group)
            return tensor

        return apply_to_collection(batch, Tensor, from_tower_0)

    def lightning_module_state_dict(self) -> dict[str, Any]:
        return self._grouped_state(super().lightning_module_state_dict(), PREFIX)

    def optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        return self._map_optimizer_state(optimizer, super().optimizer_state(optimizer), "unshard")

    def load_optimizer_state_dict(self, checkpoint: dict[str, Any]) -> None:
        states = [
            self._map_optimizer_state(o, s, "shard") for o, s in zip(self.optimizers, checkpoint["optimizer_states"])
        ]
        super().load_optimizer_state_dict({**checkpoint, "optimizer_states": states})

    def _grouped_state(self, state: dict[str, Any], prefix: str) -> dict[str, Any]:
        network = self.lightning_module.network
        if not isinstance(network, TowerAlexNet):
            return state
        return {k: network.unshard(k, v) if k.startswith(prefix) else v for k, v in state.items()}

    def _map_optimizer_state(self, optimizer: Optimizer, state: dict[str, Any], how: str) -> dict[str, Any]:
        """`shard` or `unshard` the per-parameter tensors of an optimiser state (SGD's momentum buffers)."""
        network = self.lightning_module.network
        if not isinstance(network, TowerAlexNet):
            return state
        convert = getattr(network, how)
        names = {param: name for name, param in self.lightning_module.named_parameters()}
        params = [param for group in optimizer.param_groups for param in group["params"]]  # state_dict's numbering
        per_param = {}
        for index, values in state["state"].items():
            name = names[params[index]]
            per_param[index] = {
                k: convert(name, v) if name.startswith(PREFIX) and torch.is_tensor(v) and v.dim() > 0 else v
                for k, v in values.items()
            }
        return {**state, "state": per_param}
