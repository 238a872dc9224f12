"""kaleido's progress bar: the metrics it shows are read (a host sync on a GPU) every n training steps, not
every step; ``fit`` uses it unless the config names a progress bar or turns the bar off."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar

from kaleido.cli import KaleidoCLI
from kaleido.progress import KaleidoRichProgressBar, KaleidoTQDMProgressBar

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", [KaleidoRichProgressBar, KaleidoTQDMProgressBar])
def test_metrics_are_read_every_n_training_steps(kind: type, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []

    def read(self: Any, trainer: Any, pl_module: Any) -> dict[str, Any]:
        reads.append(trainer.global_step)
        return {"train/loss": trainer.global_step}

    monkeypatch.setattr(ProgressBar, "get_metrics", read)
    bar = kind(metrics_every_n_steps=50)
    shown = [bar.get_metrics(SimpleNamespace(training=True, global_step=step), None) for step in range(120)]
    assert reads == [0, 50, 100]
    assert shown[49] == {"train/loss": 0} and shown[50] == {"train/loss": 50}
    bar.get_metrics(SimpleNamespace(training=False, global_step=120), None)  # validation: read as Lightning does
    assert reads == [0, 50, 100, 120]
    bar.get_metrics(SimpleNamespace(training=True, global_step=0), None)  # a new fit from step 0: read again
    assert reads[-1] == 0
    with pytest.raises(ValueError, match="metrics_every_n_steps must be >= 1"):
        kind(metrics_every_n_steps=0)


def _trainer(*args: str) -> Any:
    cli = KaleidoCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                     save_config_callback=None, args=["--config", str(ROOT / "tests/configs/tiny_kaleido.yaml"), *args])
    return cli.trainer


def test_fit_uses_kaleido_s_bar_unless_the_config_names_one() -> None:
    bars = [c for c in _trainer("--trainer.log_every_n_steps", "7").callbacks if isinstance(c, ProgressBar)]
    assert len(bars) == 1 and isinstance(bars[0], (KaleidoRichProgressBar, KaleidoTQDMProgressBar))
    assert bars[0].metrics_every_n_steps == 7
    named = _trainer("--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar", "--trainer.callbacks.refresh_rate", "5")
    bars = [c for c in named.callbacks if isinstance(c, ProgressBar)]
    assert [type(b) for b in bars] == [TQDMProgressBar] and bars[0].refresh_rate == 5
    off = _trainer("--trainer.enable_progress_bar", "false")
    assert not any(isinstance(c, (ProgressBar, RichProgressBar)) for c in off.callbacks)
