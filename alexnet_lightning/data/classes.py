"""The class ids of a data root in label order, and their names: what a checkpoint's inference record keeps so that
a trained network names its classes without the data."""

from pathlib import Path

from alexnet_lightning.data import shards, sources


def class_ids_and_names(root: Path, layout: str | None, meta_root: Path) -> tuple[list[str], list[str]]:
    """The class ids in label order (a prepared folder's meta, the devkit, or the train folders) and their names (the
    devkit's ``meta.bin`` in ``meta_root``, written when the archives are extracted; else the ids)."""
    if (root / "prepared.json").is_file():
        wnids = list(shards.read_meta(root)["classes"])
    elif layout == "archives":
        wnids = sources.devkit_wnids(root)
    else:
        wnids = sources.find_classes(root / "train")[0]
    names = list(wnids)
    if (meta_root / "meta.bin").is_file():
        from torchvision.datasets.imagenet import load_meta_file

        known = load_meta_file(str(meta_root))[0]
        names = [", ".join(known[w]) if w in known else w for w in wnids]
    return wnids, names
