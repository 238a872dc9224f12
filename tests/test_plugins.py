"""A latent type defined outside kaleido works by entry point and by class_path, through the CLI, and is a
first-class citizen: its adherence hook is measured by LogSamples, `evaluate` and `adherence`, and its draw
hook draws it in their grids."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny_kaleido.yaml"


def make_plugin(tmp_path: Path) -> Path:
    """Writes docs/plugins.md's example as an installed distribution with an entry point."""
    site = tmp_path / "site"
    package = site / "my_latents"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    code = re.search(r"```python\n# my_latents/count.py\n(.*?)```", (ROOT / "docs/plugins.md").read_text(), re.S)
    assert code, "docs/plugins.md lost its worked example"
    (package / "count.py").write_text(code.group(1))
    dist = site / "my_latents-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-latents\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kaleido.latents]\ncount = my_latents.count:CountLatent\n")
    return site


def run(site: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    # A clean environment: the plugin's site and the kaleido under test; the test session's thread limit.
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    env.update({name: os.environ[name] for name in ("OMP_NUM_THREADS",) if name in os.environ})
    return subprocess.run([sys.executable, "-m", "kaleido", *args], cwd=tmp_path, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The plugin installed once for the module: its site, and a directory to run the commands in."""
    home = tmp_path_factory.mktemp("plugin")
    return make_plugin(home), home


@pytest.fixture(scope="module")
def fitted(installed: tuple[Path, Path]) -> tuple[subprocess.CompletedProcess, Path]:
    """One `fit` with the plugin's type named by its entry point beside `text` (the tiny config, whose
    LogSamples measures adherence), shared by both tests below: the run and its root."""
    site, home = installed
    root = home / "fit"
    fit = run(site, home, "fit", "--config", str(TINY), "--trainer.default_root_dir", str(root),
              "--data.init_args.latents=[text, count]")
    assert fit.returncode == 0, fit.stderr[-3000:]
    return fit, root


def test_plugin_by_entry_point_and_class_path(
    installed: tuple[Path, Path], fitted: tuple[subprocess.CompletedProcess, Path], tmp_path: Path
) -> None:
    site, _ = installed
    listed = run(site, tmp_path, "latents")
    assert re.search(r"^count +entry point my_latents\.count:CountLatent \(my-latents\)$", listed.stdout, re.M), listed.stderr

    # By entry point: the shared fit. By class_path: a fit of its own, with the type's init_args.
    root = tmp_path / "class_path"
    spec = '[{"class_path": "my_latents.count.CountLatent", "init_args": {"max_count": 4}}]'
    fit = run(site, tmp_path, "fit", "--config", str(TINY), "--trainer.default_root_dir", str(root),
              "--trainer.callbacks=[]", f"--data.init_args.latents={spec}")
    assert fit.returncode == 0, fit.stderr[-3000:]
    by_entry_point, by_class_path = next(fitted[1].rglob("*.ckpt")), next(root.rglob("*.ckpt"))
    for name, checkpoint in (("entry_point", by_entry_point), ("class_path", by_class_path)):
        sample = run(site, tmp_path, "sample", "--ckpt_path", str(checkpoint), "--condition", "a circle",
                     "--num_samples", "2", "--num_steps", "2", "--output", str(tmp_path / name))
        assert sample.returncode == 0, sample.stderr[-3000:]
        lines = (tmp_path / name / "samples.jsonl").read_text().splitlines()
        assert len(lines) == 2


MARK = (1, 254, 3)  # the example's mark colour (docs/plugins.md)


@pytest.fixture
def feature_weights(tmp_path: Path) -> Path:
    """Random weights for timm's tiny `test_vit`, saved locally (nothing downloaded)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path / "test_vit.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_vit").state_dict().items()}, str(path))
    return path


def test_plugin_hooks_are_measured_and_drawn_by_every_command(
    installed: tuple[Path, Path], fitted: tuple[subprocess.CompletedProcess, Path], tmp_path: Path, feature_weights: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    site, _ = installed
    fit, root = fitted  # the tiny config's LogSamples measured adherence
    assert "LogSamples: adherence: skipping the 'text' latent: TextLatent declares no adherence hook" in fit.stdout + fit.stderr
    events = EventAccumulator(str(next(root.rglob("events.out.tfevents.*")).parent)).Reload()
    assert {"val/adherence/count/exact", "val/adherence/count/chance_within_one"} <= set(events.Tags()["scalars"])
    assert "samples/drawn_latents" in events.Tags()["images"]
    checkpoint = next(root.rglob("*.ckpt"))

    measured = run(site, tmp_path, "adherence", "--ckpt_path", str(checkpoint), "--num_samples", "6", "--sampler", "ddim",
                   "--num_steps", "2", "--device", "cpu", "--output", str(tmp_path / "adh"))
    assert measured.returncode == 0, measured.stderr[-3000:]
    result = json.loads((tmp_path / "adh" / "adherence.json").read_text())
    assert set(result["per_type"]) == {"count"} and set(result["skipped"]) == {"text"}
    assert {"exact", "within_one", "unparsed", "chance_exact"} <= set(result["per_type"]["count"])
    assert 0.0 <= result["per_type"]["count"]["within_one"] <= 1.0

    evaluated = run(site, tmp_path, "evaluate", "--ckpt_path", str(checkpoint), "--cfg_scales", "[2]", "--num_samples", "8",
                    "--sampler", "ddim", "--steps", "2", "--batch_size", "8", "--feature_extractor", "timm:test_vit",
                    "--feature_weights", str(feature_weights), "--reference_cache", str(tmp_path / "cache"),
                    "--output", str(tmp_path / "eval"), "--device", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    row = json.loads((tmp_path / "eval" / "metrics.json").read_text())["results"][0]
    assert {"adherence_count_exact", "adherence_count_within_one", "adherence_count_unparsed"} <= set(row)
    assert not any(key.startswith("adherence_text") for key in row)
    assert (tmp_path / "eval" / "grids" / "kaleido_cfg2.png").is_file() and (tmp_path / "adh" / "grid.png").is_file()

    # The draw hook: a given z with 3 objects draws 3 marks over every sample of `sample`'s latents.png.
    z = "text: a red circle in the center, on a black background\ncount: 3 objects"
    sampled = run(site, tmp_path, "sample", "--ckpt_path", str(checkpoint), "--condition", "a circle", "--num_samples", "2",
                  "--num_steps", "2", "--latent", z, "--output", str(tmp_path / "drawn"))
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    marks = (np.asarray(Image.open(tmp_path / "drawn" / "latents.png").convert("RGB")) == MARK).all(axis=-1)
    assert marks.sum() == 2 * 3 * 4  # two samples, three marks of 2 x 2 pixels each
    assert not (np.asarray(Image.open(tmp_path / "drawn" / "grid.png").convert("RGB")) == MARK).all(axis=-1).any()


def test_plugin_parse_errors_are_clear(tmp_path: Path) -> None:
    site = make_plugin(tmp_path)
    sys.path.insert(0, str(site))
    try:
        from my_latents.count import CountLatent

        from kaleido.latents import LatentParseError, registry

        latent = CountLatent(max_count=4)
        assert latent.parse(latent.format(3)) == 3
        try:
            latent.parse("7 objects")
        except LatentParseError as error:
            assert "expected a number in 0..4 at position 0" in str(error)
        else:
            raise AssertionError("7 > max_count must not parse")
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("my_latents.count", None)
        sys.modules.pop("my_latents", None)
        registry._REGISTRY.pop("count", None)  # the decorator registered it in this process
        registry._ORIGIN.pop("count", None)
