"""The paper's "resize once" as a fast path: 256x256 shards, JPEG or raw, read a batch at a time.

    python -m alexnet_lightning.data prepare SOURCE DEST [--encoding jpeg|raw] [--quality 90] [--size 256]
                                             [--shard-size 2048] [--workers N]

SOURCE is a data root (an ImageFolder layout, or the ILSVRC-2012 archives: ``sources.py``) or ``builtin``.
Every image becomes its central square exactly as ``sources.resize_and_centre`` makes it, stored per split in
shards of ``--shard-size`` images:

- ``--encoding jpeg`` (the default): ``NNNNN.jpeg.npy``, the JPEG files (``--quality``, default 90, as FFCV
  stores ImageNet) one after the other as uint8 bytes, and ``NNNNN.offsets.npy`` (int64 [n + 1]: file i is bytes
  offsets[i] .. offsets[i + 1]); for ImageNet's 1.28 M training images an estimated 30 GB (FFCV stores them at
  256 px on the longer side, quality 90, in about 22 GB);
- ``--encoding raw``: ``NNNNN.images.npy``, uint8 [n, 3, size, size]; about 250 GB for ImageNet, for small sets.

Beside them ``NNNNN.labels.npy`` (int64 [n]) and ``NNNNN.json`` (the unreadable files skipped), each written
atomically, the json last. ``prepared.json`` is written when every shard is there: a folder without it is an
unfinished prepare, which the same command resumes shard by shard. Folders of format 1 (raw only) are read as
raw shards.

Training then reads batches by index from memory-mapped shards; JPEG shards are decoded in the loader's
workers on the CPU, or on the GPU (nvjpeg, batched) after the batch's transfer (``Encoded``).
``transforms.BatchAugmentation`` then does the crop, mirror, mean subtraction and PCA lighting of the whole batch
on the device the batch is on, with the reference transforms' values.
"""

import json
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg
from torchvision.transforms import v2

from alexnet_lightning.data import sources, standin
from alexnet_lightning.files import write_atomic
from alexnet_lightning.progress import progress
from alexnet_lightning.signals import Sigterm, ignore_sigterm_in_worker

FORMAT = 2  # 2: JPEG or raw shards; 1: raw only, in the files of format 2's raw encoding
ENCODINGS = ("jpeg", "raw")


def _as_list(batch: list) -> list:
    return batch


def _encoding(encoding: str, quality: int) -> dict:
    """How the shards are stored, as recorded in prepared.json and in every shard's json."""
    if encoding not in ENCODINGS:
        raise ValueError(f"--encoding must be one of {ENCODINGS}, got {encoding!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"--quality must be in 1 .. 100, got {quality}")
    return {"encoding": "jpeg", "quality": quality} if encoding == "jpeg" else {"encoding": "raw"}


def prepare(
    source: str | None, dest: Path, size: int = 256, shard_size: int = 2048, workers: int = 0,
    encoding: str = "jpeg", quality: int = 90,
) -> Path:
    """Writes the shards of ``source`` (``None``: the built-in set) into ``dest``; returns ``dest``.

    Shards already written by an earlier, interrupted call are kept; they must have the same encoding.
    """
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    stored = _encoding(encoding, quality)
    root = standin.ensure() if source is None else Path(source)
    kind = sources.layout(root)
    if kind == "prepared":
        raise ValueError(f"{source} is already prepared")
    meta = {"format": FORMAT, "size": size, **stored, "source": str(root.resolve()), "splits": {}}
    transform = sources.resize_and_centre(size)
    if encoding == "jpeg":  # encoded in the loader's processes, in parallel
        transform = v2.Compose([transform, partial(encode_jpeg, quality=quality)])
    for split in sources.SPLITS:
        dataset = sources.open_split(root, kind, split, transform)
        # The folder names, which the labels index; ImageNet's ``classes`` are names, "crane" for two of them.
        meta["classes"] = getattr(dataset.folder, "wnids", dataset.folder.classes)
        folder = dest / split
        folder.mkdir(parents=True, exist_ok=True)
        shards = math.ceil(len(dataset) / shard_size)
        done = {k: folder / f"{k:05d}.json" for k in range(shards) if (folder / f"{k:05d}.json").is_file()}
        for path in done.values():
            record = json.loads(path.read_text())  # format 1 wrote raw shards and no encoding
            recorded = {key: record[key] for key in ("encoding", "quality") if key in record} or {"encoding": "raw"}
            if recorded != stored:
                raise ValueError(
                    f"{path} is a shard of another encoding ({', '.join(map(str, recorded.values()))}) than this "
                    f"prepare's ({', '.join(map(str, stored.values()))}): finish it with the same --encoding and "
                    f"--quality, or prepare into another folder"
                )
        todo = [k for k in range(shards) if k not in done]
        batches = [list(range(k * shard_size, min(len(dataset), (k + 1) * shard_size))) for k in todo]
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=_as_list,
                            worker_init_fn=ignore_sigterm_in_worker)
        for k, indices, samples in progress(zip(todo, batches, loader), f"Preparing {split}", len(todo)):
            kept = [sample for sample in samples if sample is not None]
            labels = np.array([label for _, label in kept], np.int64)
            skipped = [dataset.folder.samples[i][0] for i, s in zip(indices, samples) if s is None]
            if encoding == "raw":
                images = [image.numpy() for image, _ in kept]
                images = np.stack(images) if images else np.empty((0, 3, size, size), np.uint8)
                write_atomic(folder / f"{k:05d}.images.npy", lambda f, a=images: np.save(f, a))
            else:
                files = [data.numpy() for data, _ in kept]
                offsets = np.cumsum([0] + [len(data) for data in files], dtype=np.int64)
                data = np.concatenate(files) if files else np.empty(0, np.uint8)
                write_atomic(folder / f"{k:05d}.jpeg.npy", lambda f, a=data: np.save(f, a))
                write_atomic(folder / f"{k:05d}.offsets.npy", lambda f, a=offsets: np.save(f, a))
            write_atomic(folder / f"{k:05d}.labels.npy", lambda f, a=labels: np.save(f, a))
            record = json.dumps({"images": len(kept), "skipped": skipped, **stored}).encode()
            write_atomic(folder / f"{k:05d}.json", lambda f, data=record: f.write(data))
            written = sum((folder / f"{j:05d}.json").is_file() for j in range(shards))
            Sigterm.exit_if_received(f"{written} of the {shards} shards of {folder} are written and kept; a rerun "
                                     f"writes the others, shard by shard")  # a signal while recorded (__main__)
        records = [json.loads((folder / f"{k:05d}.json").read_text()) for k in range(shards)]
        meta["splits"][split] = {
            "shards": shards,
            "images": sum(r["images"] for r in records),
            "skipped": [path for r in records for path in r["skipped"]],
        }
    write_atomic(dest / "prepared.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return dest


def read_meta(root: Path) -> dict:
    """The contents of ``root/prepared.json``, checked, with its ``encoding``; errors name the file."""
    path = root / "prepared.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot read {path}: {err}") from err
    if meta.get("format") not in (1, FORMAT):
        raise ValueError(
            f"{path} has format {meta.get('format')!r}; this version reads formats 1 and {FORMAT}: prepare again"
        )
    return {"encoding": "raw", **meta}


class Encoded(NamedTuple):
    """A batch of JPEG files: their bytes one after the other, and the offsets [B + 1] at which each starts.
    What the loader hands over when the batch's device decodes it."""

    data: Tensor
    offsets: Tensor

    def decode(self, device: torch.device | str = "cpu") -> Tensor:
        """The images, uint8 [B, 3, S, S] on ``device``: batched on the GPU (nvjpeg) for a CUDA device, one by one
        (libjpeg-turbo) on the CPU. The bytes stay on the host, where ``decode_jpeg`` reads them."""
        bounds = self.offsets.tolist()
        files = [self.data[start:end] for start, end in zip(bounds, bounds[1:])]
        if torch.device(device).type == "cuda" and guard_device_decode:
            return torch.stack(guarded_decode(files, torch.device(device)))
        return torch.stack(decode_jpeg(files, mode=ImageReadMode.RGB, device=device))


guard_device_decode = True  # False only to measure the guard's cost (experiments/benchmark.py)
_decode_streams: dict[tuple[Any, torch.device], Any] = {}  # one side stream per device: one memory pool


def guarded_decode(files: list[Tensor], device: torch.device, decode: Callable = decode_jpeg,
                   cuda: Any = torch.cuda) -> list[Tensor]:
    """torchvision's batched nvjpeg decode, made to respect the caller's stream.

    The decode writes its outputs from nvjpeg's own stream without waiting for the caller's stream, so the caching
    allocator may hand it memory that kernels still queued on the caller's stream read (the previous step's): wrong
    values or NaNs in code that never touched the decoder (pytorch/vision PR #9606, closed unmerged; torchcodec fixed
    the same defect by waiting for the stream before the hardware decode, meta-pytorch/torchcodec PR #1634). Here the
    decode runs on a side stream, with memory from that stream's own pool, after everything queued on the caller's
    stream; the caller's stream then waits for the decode, and the outputs are recorded on it, so that their memory
    is not reused before its kernels have read them. No host synchronisation. ``decode`` and ``cuda`` are
    replaceable for tests."""
    caller = cuda.current_stream(device)
    if (cuda, device) not in _decode_streams:
        _decode_streams[cuda, device] = cuda.Stream(device)
    side = _decode_streams[cuda, device]
    side.wait_stream(caller)
    with cuda.stream(side):
        images = decode(files, mode=ImageReadMode.RGB, device=device)
    caller.wait_stream(side)
    for image in images:
        image.record_stream(caller)
    return images


class PreparedSplit(Dataset):
    """One split of a prepared folder. ``dataset[keys]`` with a list of keys gives a whole batch:
    ``(images uint8 [B, 3, S, S], labels [B], skipped 0, seed)``, the images of JPEG shards as ``Encoded`` bytes
    when ``decode`` is False. A key is an index, or a ``(seed, epoch, index)`` triple from
    ``datamodule.ResumableSampler``, whose first key seeds the batch's augmentation; plain indices give the seed
    -1 (no augmentation)."""

    def __init__(self, root: Path, split: str, decode: bool = True) -> None:
        self.folder = root / split
        meta = read_meta(root)
        self.jpeg, self.decode = meta["encoding"] == "jpeg", decode
        shards = meta["splits"][split]["shards"]
        parts = ("jpeg", "offsets") if self.jpeg else ("images",)
        self.files = [[self.folder / f"{k:05d}.{part}.npy" for part in parts] for k in range(shards)]
        missing = [str(f) for files in self.files for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"Prepared shard(s) missing: {', '.join(missing)}")
        labels = [np.load(self.folder / f"{k:05d}.labels.npy") for k in range(shards)]
        self.labels = torch.from_numpy(np.concatenate(labels))
        self.starts = np.cumsum([0] + [len(part) for part in labels])
        self.shards: list[tuple[np.ndarray, ...]] | None = None  # memory maps, opened in the process that reads

    def __len__(self) -> int:
        return len(self.labels)

    def _open(self) -> list[tuple[np.ndarray, ...]]:
        if self.shards is None:
            self.shards = [tuple(np.load(f, mmap_mode="r") for f in files) for files in self.files]
            for files, arrays, start, end in zip(self.files, self.shards, self.starts, self.starts[1:]):
                if self.jpeg:
                    data, offsets = arrays
                    fits = data.dtype == np.uint8 and len(offsets) == end - start + 1 and offsets[-1] == len(data)
                else:
                    fits = arrays[0].dtype == np.uint8 and arrays[0].ndim == 4 and len(arrays[0]) == end - start
                if not fits:
                    raise ValueError(f"{files[0]} does not match its labels: prepare again")
        return self.shards

    def __getitem__(self, key: int | tuple[int, int, int]) -> tuple[Tensor | Encoded, Tensor, Tensor, Tensor]:
        return self.__getitems__([key])

    def __getitems__(self, keys: list) -> tuple[Tensor | Encoded, Tensor, Tensor, Tensor]:
        shards = self._open()
        indices = np.array([key[2] if isinstance(key, tuple) else key for key in keys])
        shard_of = np.searchsorted(self.starts, indices, side="right") - 1
        located = list(zip(shard_of.tolist(), (indices - self.starts[shard_of]).tolist()))
        seed = torch.tensor(sources.sample_seed(*keys[0]) if isinstance(keys[0], tuple) else -1)
        labels = self.labels[indices]
        if not self.jpeg:
            return torch.from_numpy(np.stack([shards[s][0][i] for s, i in located])), labels, torch.tensor(0), seed
        files = [shards[s][0][shards[s][1][i] : shards[s][1][i + 1]] for s, i in located]
        offsets = np.cumsum([0] + [len(f) for f in files], dtype=np.int64)
        batch = Encoded(torch.from_numpy(np.concatenate(files)), torch.from_numpy(offsets))
        if not self.decode:
            return batch, labels, torch.tensor(0), seed
        try:
            return batch.decode(), labels, torch.tensor(0), seed
        except RuntimeError as err:
            names = sorted({str(self.files[s][0]) for s, _ in located})
            raise ValueError(f"Cannot decode an image of {', '.join(names)} ({err}): prepare again") from err

    def __getstate__(self) -> dict:  # loader processes open their own memory maps
        return {**self.__dict__, "shards": None}
