"""LightningCLI for ``fit`` / ``validate`` / ``test``: models and data modules by ``class_path``."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI


class KaleidoCLI(LightningCLI):
    """The data module builds the tokenizer (vocabulary, latent types, length limits) and knows the
    image size; both flow to the model, never set twice by hand."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.tokenizer", "model.init_args.tokenizer", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.init_args.image_size", apply_on="instantiate")


def cli_main(args: list[str] | None = None) -> KaleidoCLI:
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+ GPUs; no effect on the CPU
    return KaleidoCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
