"""The Lightning CLI: `alexnet-lightning fit|validate|test --config configs/paper.yaml [--model.lrn false ...]`."""

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from alexnet_lightning.datamodule import ImageNetDataModule
from alexnet_lightning.module import AlexNetModule


class AlexNetCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # One place for each fact: the data decides the class count, the network its crop size.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("model.input_size", "data.crop_size")


def main(args: list[str] | None = None, run: bool = True) -> AlexNetCLI:
    return AlexNetCLI(
        AlexNetModule, ImageNetDataModule, args=args, run=run, auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
    )


def console() -> None:
    """The `alexnet-lightning` command (its exit status must not be the CLI object that main returns)."""
    main()


if __name__ == "__main__":
    console()
