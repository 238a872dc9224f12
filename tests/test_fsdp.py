"""FSDP (issue 20, item 3): the strategy fragment, kaleido's wrap units, EMA's refusal, and FSDP checkpoints
(full, and sharded then consolidated) loading with ``kaleido.load`` on one device.

A real FSDP fit cannot run here: torch's FullyShardedDataParallel needs an accelerator ("FSDP needs a
non-CPU accelerator device", torch 2.14) and Lightning refuses ``fsdp`` with ``accelerator=cpu``."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from transformers.models.t5.modeling_t5 import T5Block

import kaleido
from kaleido.__main__ import main
from kaleido.callbacks import EMA
from kaleido.checkpoint_io import CHECKPOINT_KEY
from kaleido.fsdp import KaleidoFSDP, module_classes
from kaleido.modules.common import checkpoint_record
from kaleido.nn.blocks import AttentionBlock, ResBlock
from tests.conftest import tiny_model_kwargs

ROOT = Path(__file__).resolve().parents[1]
FRAGMENT = ROOT / "configs/strategies/fsdp.yaml"


def test_fragment_merges_into_a_run_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "tests/configs/tiny_kaleido.yaml"), "--config", str(FRAGMENT), "--print_config"])
    assert exit_info.value.code in (0, None)
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert trainer["strategy"]["class_path"] == "kaleido.fsdp.KaleidoFSDP"
    assert trainer["strategy"]["init_args"]["state_dict_type"] == "full"
    assert trainer["precision"] == "bf16-mixed" and trainer["accelerator"] == "gpu"
    assert trainer["max_steps"] == 3  # the run's own settings stay


def test_strategy_wraps_denoiser_blocks_and_t5_layers(text_data) -> None:  # type: ignore[no-untyped-def]
    init_args = yaml.safe_load(FRAGMENT.read_text())["trainer"]["strategy"]["init_args"]
    strategy = KaleidoFSDP(**init_args)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)
    assert {ResBlock, AttentionBlock, T5Block} <= set(policy._module_classes)
    assert strategy._state_dict_type == "full" and strategy.kwargs["use_orig_params"]
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **tiny_model_kwargs())
    units = [name for name, m in model.named_modules() if isinstance(m, tuple(policy._module_classes))]
    assert any(n.startswith("denoiser.") for n in units) and any(n.startswith("prior.t5.") for n in units), units
    with pytest.raises(ValueError, match="cannot import FSDP wrap class_path 'kaleido.nn.Nope'"):
        module_classes(["kaleido.nn.Nope"])


def test_ema_refuses_fsdp_at_setup(text_data) -> None:  # type: ignore[no-untyped-def]
    trainer = Trainer(accelerator="cpu", devices=1, strategy=KaleidoFSDP(), logger=False, enable_progress_bar=False)
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **tiny_model_kwargs())
    with pytest.raises(ValueError, match="EMA callback does not work under FSDP"):
        EMA(decay=0.9).setup(trainer, model, "fit")


class ClippingStrategy(SingleDeviceStrategy):
    """A strategy that clips by its own means, as KaleidoFSDP does: records each call and clips."""

    def __init__(self) -> None:
        super().__init__(device=torch.device("cpu"))
        self.clipped: list[float] = []

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        self.clipped.append(max_norm)
        return torch.nn.utils.clip_grad_norm_(self.lightning_module.parameters(), max_norm)


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_norm_clipping_goes_through_a_strategy_that_clips(text_data, algorithm: str) -> None:  # type: ignore[no-untyped-def]
    """Lightning's FSDP plugin refuses norm clipping (found on the GPU, 2026-12-03): kaleido's modules hand
    norm clipping to a strategy with its own ``clip_grad_norm`` (KaleidoFSDP: FSDP's, over every shard);
    clipping by value stays Lightning's."""
    strategy = ClippingStrategy()
    trainer = Trainer(accelerator="cpu", strategy=strategy, max_steps=2, gradient_clip_val=0.5, gradient_clip_algorithm=algorithm,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0)
    trainer.fit(kaleido.Kaleido(tokenizer=text_data.tokenizer, **tiny_model_kwargs()), datamodule=text_data)
    assert strategy.clipped == ([0.5, 0.5] if algorithm == "norm" else [])


def test_kaleido_fsdp_clips_with_fsdp_s_own_norm() -> None:
    """KaleidoFSDP.clip_grad_norm calls the root FSDP unit's clip_grad_norm_ (a collective over the shards)."""
    calls: list[float] = []

    class Root(torch.nn.Module):
        def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
            calls.append(max_norm)
            return torch.tensor(3.0)

    strategy = KaleidoFSDP()
    strategy.model = Root()
    assert strategy.clip_grad_norm(2.0).item() == 3.0 and calls == [2.0]


def _lightning_checkpoint(model: kaleido.Kaleido) -> dict:
    """What Lightning's FSDPStrategy gathers on rank 0 with state_dict_type="full": the module's own keys
    (FSDP's full state dict strips its wrappers' prefixes) and the optimiser state keyed by parameter name."""
    names = [n for n, _ in model.named_parameters()]
    optim = {"state": {n: {"step": torch.tensor(2.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
                       for n, p in model.named_parameters()},
             "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": names}]}
    return {"epoch": 0, "global_step": 2, "pytorch-lightning_version": "2.6.6", "state_dict": model.state_dict(),
            "optimizer_states": [optim], "lr_schedulers": [], "hyper_parameters": dict(model.hparams),
            CHECKPOINT_KEY: checkpoint_record(model, model.tokenizer)}


def _loads_and_samples(path: Path, model: kaleido.Kaleido) -> None:
    loaded = kaleido.load(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images = loaded.generate(["a square"], num_steps=2, seed=0).images
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()


def test_full_fsdp_checkpoint_loads_on_one_device(text_data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **tiny_model_kwargs())
    path = tmp_path / "last.ckpt"
    torch.save(_lightning_checkpoint(model), path)
    _loads_and_samples(path, model)


def test_sharded_fsdp_checkpoint_loads_after_consolidating(text_data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """state_dict_type="sharded": Lightning writes a folder (torch.distributed.checkpoint shards of
    {"model", "optimizer_0"} and meta.pt with the rest); Lightning's consolidate_checkpoint makes one file."""
    import torch.distributed.checkpoint as dcp

    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **tiny_model_kwargs())
    checkpoint = _lightning_checkpoint(model)
    folder = tmp_path / "last.ckpt"
    dcp.save({"model": checkpoint.pop("state_dict")}, storage_writer=dcp.FileSystemWriter(folder), no_dist=True)
    checkpoint.pop("optimizer_states")
    torch.save(checkpoint, folder / "meta.pt")
    with pytest.raises(ValueError, match="consolidate_checkpoint"):
        kaleido.load(folder)
    subprocess.run([sys.executable, "-m", "lightning.pytorch.utilities.consolidate_checkpoint", str(folder)],
                   check=True, capture_output=True, text=True)
    _loads_and_samples(tmp_path / "last.ckpt.consolidated", model)


@pytest.mark.skip(reason="torch 2.14's FSDP needs an accelerator ('FSDP needs a non-CPU accelerator device') "
                         "and Lightning refuses fsdp with accelerator=cpu: the real FSDP fit runs on GPUs only")
def test_fsdp_fit_on_two_processes() -> None:
    """Written for a GPU machine: `fit --config tests/configs/tiny_kaleido.yaml --config
    configs/strategies/fsdp.yaml` without EMA, then kaleido.load(last.ckpt)."""
