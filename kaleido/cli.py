"""LightningCLI for ``fit`` / ``validate`` / ``test``: models and data modules by ``class_path``."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.model_helpers import is_overridden

from kaleido.checkpoint_io import check_checkpoint_file
from kaleido.compiler_check import check_compiler
from kaleido.progress import use_kaleido_progress_bar
from kaleido.resume import resolve_resume


class KaleidoCLI(LightningCLI):
    """The data module builds the tokenizer (vocabulary, latent types, length limits) and knows the
    image size; both flow to the model, never set twice by hand."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.tokenizer", "model.init_args.tokenizer", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.init_args.image_size", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Lightning's trainer, with kaleido's progress bar in place of the default one (no host sync per
        step: :mod:`kaleido.progress`)."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        configured = config.get("trainer", {}).get("callbacks") or []
        configured = list(configured) if isinstance(configured, list) else [configured]  # the Trainer extends that list
        refuse_repeated_state(configured)
        trainer = super().instantiate_trainer(**kwargs)
        use_kaleido_progress_bar(trainer, configured)
        return trainer

    def _parse_ckpt_path(self) -> None:
        """Build the model from the config, never from the hyperparameters stored in ``--ckpt_path``.

        LightningCLI (2.6.6, no option to turn it off) re-parses a checkpoint's ``hyper_parameters`` as
        ``model`` options; kaleido's are plain data for ``kaleido.load`` (``t5: {d_model: ...}``), not
        ``class_path`` / ``init_args``, so resuming failed ("Option 't5.d_model' is not accepted").
        The config names the model; a checkpoint of another architecture fails to load by its shapes.
        """

    def before_fit(self) -> None:
        """``--ckpt_path last`` (or a checkpoint of one of this logger's runs) resumes that run in its own
        ``version_N`` (:mod:`kaleido.resume`); a compiled model gets batches of one shape, and a machine
        where it cannot compile says so now, in one line (:mod:`kaleido.compiler_check`)."""
        config = self.config_init[self.subcommand]
        config["ckpt_path"] = resolve_resume(self.trainer, config.get("ckpt_path"))
        pad_for_compile(self.model, self.datamodule)
        check_compiler_before_fit(self.model, self.trainer)

    def before_validate(self) -> None:
        """A truncated or foreign ``--ckpt_path`` file fails in one line, before Lightning reads it."""
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt_path not in (None, "last", "best", "hpc"):
            check_checkpoint_file(ckpt_path)

    before_test = before_validate


def refuse_repeated_state(callbacks: list[Any]) -> None:
    """Two callbacks that keep state under one key (two ``kaleido.callbacks.EMA``, say: a config that lists
    one, plus ``--trainer.callbacks+=kaleido.callbacks.EMA``) cannot both be checkpointed; Lightning says so
    in a traceback. Here it is one line that names them."""
    seen: dict[str, Any] = {}
    for callback in callbacks:
        if not isinstance(callback, Callback) or not is_overridden("state_dict", instance=callback, parent=Callback):
            continue
        key = callback.state_key
        if key in seen:
            name = f"{type(callback).__module__}.{type(callback).__qualname__}"
            raise ValueError(
                f"trainer.callbacks holds {name} twice with the same state ({key}); a run keeps one: remove one "
                "(a config that already lists it needs no --trainer.callbacks+=)"
            )
        seen[key] = callback


def check_compiler_before_fit(model: LightningModule, trainer: Trainer) -> None:
    """:func:`~kaleido.compiler_check.check_compiler` on the run's device when the model compiles; not under
    a launcher that forks (``ddp_fork``, ``ddp_notebook``): CUDA must not start before the fork."""
    compile = getattr(model, "compile_training", False)
    if not compile or getattr(getattr(trainer.strategy, "launcher", None), "_start_method", None) == "fork":
        return
    check_compiler(compile, trainer.strategy.root_device)
    print(f"note: model.compile is {compile!r}: the first training step compiles the networks, 1-4 minutes on a cold "
          "cache (later runs read it from torch's cache); --model.init_args.compile false trains eager")


def pad_for_compile(model: LightningModule, data: LightningDataModule) -> None:
    """A compiled training step (``compile: true`` or a mode) is traced for one batch shape, and the token
    ids of a batch are padded to its longest text unless ``data.pad_to_limits``: each new length would
    recompile (a minute or more on a GPU), and past torch's recompile limit the step would run eager, with
    only a log line to say so. So a compiled fit pads to the tokenizer's limits, and says it does."""
    if getattr(model, "compile_training", False) and getattr(data, "pad_to_limits", None) is False:
        data.pad_to_limits = True  # type: ignore[attr-defined]
        print("note: model.compile is on, so every batch's token ids are padded to the tokenizer's limits "
              "(data.pad_to_limits: true): one compiled graph serves every step. Set it in the config to silence this.")


def cli_main(args: list[str] | None = None) -> KaleidoCLI:
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+ GPUs; no effect on the CPU
    return KaleidoCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": False},  # a bad option raises, and `python -m kaleido` says it in one line
        args=args,
    )
