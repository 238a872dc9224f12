"""Shared fixtures: a tiny tokenizer and tiny models built from config (random init, nothing downloaded)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

from kaleido.modules.settings import SamplingSettings, T5Settings, UNetSettings
from kaleido.shapes import ShapesConfig, ShapesDataModule, ShapesTextLatent

# One intra-op thread in the test process and in the processes the tests start (they inherit
# OMP_NUM_THREADS): the models here are tiny, so a second thread gains little, and on 2 cores anything
# else running (a subprocess, a loader worker, the other pytest-xdist worker) leaves each op's threads
# waiting for one another's time slice: the same tests then ran up to 10 times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# CI replays the same examples every run: a red CI is then always reproducible.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

TINY_T5 = T5Settings(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16)
TINY_UNET = UNetSettings(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2, cond_layers=1)
TINY_SAMPLING = SamplingSettings(sampler="ddim", num_steps=3)


def tiny_datamodule(latents: bool = True, **kwargs: object) -> ShapesDataModule:
    settings = dict(
        latents=[ShapesTextLatent()] if latents else [],
        shapes=ShapesConfig(resolution=16, max_objects=2),
        num_train=64,
        num_val=8,
        num_test=8,
        batch_size=4,
    )
    settings.update(kwargs)
    return ShapesDataModule(**settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def single_thread():  # type: ignore[no-untyped-def]
    """Hundreds of tiny sequential ops: a second intra-op thread only adds sync overhead on 2 cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def text_data() -> ShapesDataModule:
    return tiny_datamodule()


@pytest.fixture(scope="session")
def baseline_data() -> ShapesDataModule:
    return tiny_datamodule(latents=False)


def tiny_model_kwargs() -> dict:
    return {"image_size": 16, "t5": TINY_T5, "unet": TINY_UNET, "sampling": TINY_SAMPLING}
