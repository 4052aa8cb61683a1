"""GPU-only paths checked on this CPU through stand-ins: CUDA random states of devices that are not there, the order
of stream calls around the batched nvjpeg decode."""

import contextlib

import pytest
import torch
import torchvision

from alexnet_lightning.data import shards
from alexnet_lightning.training.checkpoints import RandomState


def test_a_checkpoint_from_more_gpus_restores_the_cuda_states_of_the_devices_there(monkeypatch):
    checkpoint: dict = {}
    RandomState().on_save_checkpoint(None, None, checkpoint)
    states = [torch.full((16,), device, dtype=torch.uint8) for device in range(4)]  # written where 4 were visible
    checkpoint["rng_states"]["cuda"] = states
    restored = []

    def set_rng_state(state: torch.Tensor, device: int) -> None:
        if device >= 1:
            raise RuntimeError("CUDA error: invalid device ordinal")  # what a missing device gives
        restored.append((device, state))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda all: [set_rng_state(s, i) for i, s in enumerate(all)])
    RandomState().on_load_checkpoint(None, None, checkpoint)
    assert len(restored) == 1 and restored[0][0] == 0 and torch.equal(restored[0][1], states[0])


class StandInStream:
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def wait_stream(self, other: "StandInStream") -> None:
        self.log.append(f"{self.name} waits for {other.name}")


class StandInCuda:
    """torch.cuda's stream calls, logged: the caller's stream, a new side stream, the context that makes it current."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.caller = StandInStream("caller", self.log)

    def current_stream(self, device):
        return self.caller

    def Stream(self, device):  # noqa: N802 (torch.cuda's name)
        return StandInStream("side", self.log)

    @contextlib.contextmanager
    def stream(self, stream):
        self.log.append(f"enter {stream.name}")
        yield
        self.log.append(f"leave {stream.name}")


def test_the_device_decode_waits_for_the_callers_stream_and_records_its_outputs_on_it():
    cuda = StandInCuda()

    class Image:
        def record_stream(self, stream):
            cuda.log.append(f"record on {stream.name}")

    def decode(files, mode, device):
        cuda.log.append(f"decode {len(files)}")
        return [Image() for _ in files]

    images = shards.guarded_decode([torch.zeros(3), torch.zeros(4)], torch.device("cuda", 0), decode, cuda)
    assert len(images) == 2
    assert cuda.log == ["side waits for caller", "enter side", "decode 2", "leave side", "caller waits for side",
                        "record on caller", "record on caller"]


def test_the_cpu_decode_is_not_guarded(monkeypatch):
    monkeypatch.setattr(shards, "guarded_decode", lambda *args: pytest.fail("guarded on the CPU"))
    jpeg = torchvision.io.encode_jpeg(torch.zeros(3, 8, 8, dtype=torch.uint8))
    batch = shards.Encoded(torch.cat([jpeg, jpeg]), torch.tensor([0, len(jpeg), 2 * len(jpeg)]))
    assert batch.decode("cpu").shape == (2, 3, 8, 8)
