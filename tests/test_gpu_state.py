"""GPU-only state handled on this CPU through stand-ins: CUDA random states of devices that are not there."""

import torch

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
