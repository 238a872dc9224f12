"""A latent type defined outside kaleido works by entry point and by class_path, through the CLI."""

import re
import subprocess
import sys
from pathlib import Path

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
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "kaleido", *args], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_plugin_by_entry_point_and_class_path(tmp_path: Path) -> None:
    site = make_plugin(tmp_path)
    listed = run(site, tmp_path, "latents")
    assert re.search(r"^count +entry point my_latents\.count:CountLatent \(my-latents\)$", listed.stdout, re.M), listed.stderr

    for spec in ('["text", "count"]', '[{"class_path": "my_latents.count.CountLatent", "init_args": {"max_count": 4}}]'):
        root = tmp_path / f"run{len(spec)}"
        fit = run(site, tmp_path, "fit", "--config", str(TINY), "--trainer.default_root_dir", str(root),
                  "--trainer.callbacks=[]", f"--data.init_args.latents={spec}")
        assert fit.returncode == 0, fit.stderr[-3000:]
        checkpoint = next(root.rglob("*.ckpt"))
        sample = run(site, tmp_path, "sample", "--ckpt_path", str(checkpoint), "--condition", "a circle",
                     "--num_samples", "2", "--num_steps", "2", "--output", str(root / "samples"))
        assert sample.returncode == 0, sample.stderr[-3000:]
        lines = (root / "samples" / "samples.jsonl").read_text().splitlines()
        assert len(lines) == 2


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
