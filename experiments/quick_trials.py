"""Schedules for the quick preset tried cheaply: the preset's network, data and augmentation in a plain loop.

    python experiments/quick_trials.py --width 0.125 --epochs 24 --warmup 1 --lr 0.04 --steps 16,20 --seed 0

One single-threaded process builds the quick preset's network and data module through the CLI
(`--config quick`, its width, batch and learning rate overridden by the flags), holds the built-in set in memory
(the data module's own split and ``BatchAugmentation``, one seed per batch rather than the runner's per-sample keys),
trains with the preset's SGD (momentum, weight decay) under the schedule the flags name, and prints one JSON line:
the arguments, the validation top-1 error (%) after each epoch (centre crops of the 3,000 validation images), the
running training error and the seconds. What the loop leaves out (Lightning's loop, checkpoints, the ten-crop test)
makes it cheaper than a cell of the study (33 to 49 s against about 50 s for 14 epochs, two at a time), so its
figures compare schedules, not cells (docs/quick-preset.md).
"""

import argparse
import json
import time

import torch

from alexnet_lightning.training import cli as alexnet_cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=0.1875)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--steps", default="5,10", help="epochs after which the lr is divided by 10, or 'linear' "
                                                        "(linear decay to 0)")
    parser.add_argument("--warmup", type=float, default=0.0, help="epochs of linear warm-up from 0")
    parser.add_argument("--fc8-std", type=float, help="fc8's weights N(0, this) instead of He's")
    parser.add_argument("--no-lrn", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    cli = alexnet_cli.main(["--config", "quick", *(["--config", "no_lrn"] if args.no_lrn else []),
                            "--seed_everything", str(args.seed), "--model.width", str(args.width),
                            "--model.lr", str(args.lr), "--data.batch_size", str(args.batch),
                            "--data.in_memory", "true", "--trainer.logger", "false"], run=False)
    data, network, hp = cli.datamodule, cli.model.network, cli.model.hparams
    data.prepare_data()
    data.setup("fit")
    if args.fc8_std:
        torch.nn.init.normal_(network.classifier.fc8.weight, 0, args.fc8_std)
    optimizer = torch.optim.SGD(network.parameters(), lr=args.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    images, labels = data.train_set.images, data.train_set.labels
    steps_per_epoch = len(images) // args.batch
    total = steps_per_epoch * args.epochs
    reductions = [] if args.steps == "linear" else [int(e) for e in args.steps.split(",") if e]

    def lr_at(step: int) -> float:
        if step < args.warmup * steps_per_epoch:
            return args.lr * (step + 1) / (args.warmup * steps_per_epoch)
        if args.steps == "linear":
            return args.lr * (1 - step / total)
        return args.lr * 0.1 ** sum(step / steps_per_epoch >= e for e in reductions)

    order = torch.Generator().manual_seed(args.seed)
    val, train, start, step = [], [], time.time(), 0
    for _ in range(args.epochs):
        network.train()
        permutation, wrong = torch.randperm(len(images), generator=order), 0
        for b in range(steps_per_epoch):
            batch = permutation[b * args.batch:(b + 1) * args.batch]
            x = data.augmentation.train(images[batch], args.seed * 100_000 + step)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            logits = network(x)
            loss = torch.nn.functional.cross_entropy(logits, labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            wrong += (logits.argmax(1) != labels[batch]).sum().item()
            step += 1
        network.eval()
        with torch.no_grad():
            val_wrong = sum((network(data.augmentation.centre(data.val_set.images[b:b + 500])).argmax(1)
                             != data.val_set.labels[b:b + 500]).sum().item() for b in range(0, len(data.val_set), 500))
        val.append(round(100 * val_wrong / len(data.val_set), 1))
        train.append(round(100 * wrong / (steps_per_epoch * args.batch), 1))
    print(json.dumps({**vars(args), "val_top1": val, "train_top1": train, "seconds": round(time.time() - start)}))


if __name__ == "__main__":
    main()
