"""The inference record: what classifying needs besides the weights, read from a checkpoint or an export.

A checkpoint's ``"inference"`` entry (``AlexNetModule.inference_record``) holds the network's options, the readings,
the data's preprocessing (mean, value scale, resize and crop sizes) and classes (ids and names), and the errors
measured. An export (``export.py``) is a safetensors file: the network's weights, the mean as ``preprocess.mean``, and
the rest of the record as JSON in its metadata.

Files are read without running code from them: a checkpoint with ``torch.load(weights_only=True)``, which refuses a
pickle of arbitrary objects (``UnsafeFile``) instead of executing it; safetensors holds no code at all.
"""

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

MEAN_KEY = "preprocess.mean"  # the mean's tensor in an export
METADATA_KEY = "alexnet_lightning.record"  # the record's JSON in an export's metadata


class UnsafeFile(ValueError):
    """A checkpoint that holds more than tensors, strings, numbers, lists and dicts: loading it could run code."""


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents read with ``weights_only=True``; raises ``UnsafeFile`` if it needs more, and
    ``ValueError`` naming the file if it is no checkpoint."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's restricted unpickler met an object it will not build
        reason = str(err).split("Please file an issue")[0].strip().splitlines()
        raise UnsafeFile(
            f"{path} holds objects other than tensors, strings, numbers, lists and dicts, and loading those could "
            f"run code from the file: it was not loaded. ({reason[-1] if reason else 'restricted unpickler'}) Load "
            f"only a file whose origin you trust with torch.load(weights_only=False), then save what it holds."
        ) from None
    except (OSError, RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"Cannot read the checkpoint {path}: {type(err).__name__}: {err}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (no state_dict in it)")
    return checkpoint


def network_weights(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The AlexNet's weights of an AlexNetModule's state dict (``network.`` entries; a compiled network's
    ``_orig_mod.`` prefix removed)."""
    return {k.removeprefix("network.").replace("_orig_mod.", ""): v
            for k, v in state_dict.items() if k.startswith("network.")}


def read(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The inference record and the network's weights of a checkpoint (``.ckpt``) or an export (safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):  # torch.save's zip format
        checkpoint = load_checkpoint(path)
        record = checkpoint.get("inference")
        if record is None or record.get("data") is None:
            raise ValueError(
                f"{path} holds no inference record (the mean, sizes and classes): it was written before checkpoints "
                f"kept one, or trained without ImageNetDataModule. Its weights alone cannot classify an image."
            )
        return record, network_weights(checkpoint["state_dict"])
    return read_export(path)


def read_export(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is neither a checkpoint nor a safetensors export: {err}") from None
    if METADATA_KEY not in metadata or MEAN_KEY not in tensors:
        raise ValueError(f"{path} is a safetensors file but not an alexnet-lightning export (no {METADATA_KEY})")
    record = json.loads(metadata[METADATA_KEY])
    record["data"]["mean"] = tensors.pop(MEAN_KEY)
    return record, tensors


def to_export(record: dict[str, Any], weights: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and metadata of an export: the weights and the mean; the rest of the record as JSON."""
    data = {k: v for k, v in record["data"].items() if k != "mean"}
    rest = {**record, "data": data}
    tensors = {k: v.contiguous() for k, v in weights.items()} | {MEAN_KEY: record["data"]["mean"].contiguous()}
    return tensors, {METADATA_KEY: json.dumps(rest)}
