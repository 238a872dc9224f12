"""`python -m kaleido benchmark` over many configs, eager and compiled, into one Markdown table
(docs/performance.md's GPU table):

    python benchmarks/benchmark_table.py --configs 'configs/*/*_gpu.yaml' --output bench/ -- --steps 20 --warmup 5
    python benchmarks/benchmark_table.py --configs configs/shapes/kaleido_text_gpu.yaml --tag nhwc --output bench/ \
        -- --overrides '[model.init_args.unet.channels_last=true]'       # a variant, its own rows

Each (config, mode) runs in its own process (a compile cache or an out-of-memory error stays with its
run), writes ``<folder>-<config stem>_<mode>.json`` and its log beside it; a run that fails is a table row that
says so, and the others go on. ``--render_only true`` rebuilds ``table.md`` from the JSON files already
in ``--output``. Arguments after ``--`` go to every ``benchmark`` call.
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

MODES = {"eager": "false", "compiled": "true", "cudagraphs": "reduce-overhead"}  # cudagraphs: opt in with --modes
COLUMNS = (
    "config", "mode", "batch", "step ms", "images/s", "GFLOP/image", "MFU", "MFU of measured matmul",
    "loader / conditioning / denoiser / optimiser", "step / denoiser-only", "DDPM CFG step / raw forward",
    "device busy, kernels per step", "Trainer.fit step / step, between steps", "peak GiB allocated (reserved)",
)


def row(result: dict[str, Any], name: str, mode: str) -> list[str]:
    """One table row from a ``benchmark`` JSON."""
    train, sampling = result["training"], result["sampling"]
    shares = " / ".join(f"{100 * train['shares'][part]:.0f}" for part in ("loader", "conditioning", "denoiser", "optimizer"))
    mfu, of_matmul = ("–" if value is None else f"{100 * value:.1f}%" for value in (train["mfu"], train.get("mfu_of_matmul")))
    ddpm = sampling["samplers"].get("ddpm", {})
    ratio = ddpm.get("step_over_raw_forward")
    profile = train.get("profile")  # with --profile_steps only
    busy = "–" if not profile else f"{profile['busy_share']:.0%}, {profile['kernels_per_step']:,.0f}"
    fit = result.get("fit")  # with --fit_steps only
    fit_ratio = "–" if not fit else f"{fit['over_training_step']:.2f}" + (
        f", {1000 * fit['between_steps_s']:.1f} ms" if "between_steps_s" in fit else "")  # JSON of older commits lack it
    return [
        name, mode, str(result["settings"]["batch_size"]), f"{1000 * train['step_s']:.1f}", f"{train['images_per_s']:,.0f}",
        f"{train['flops_per_image'] / 1e9:.2f}", mfu, of_matmul, shares + " %", f"{result['denoiser_only']['step_over_denoiser_only']:.2f}",
        "–" if ratio is None else f"{ratio:.2f}", busy, fit_ratio,
        "–" if train.get("peak_memory_gib") is None else f"{train['peak_memory_gib']:.1f}"
        + (f" ({train['peak_reserved_gib']:.1f})" if train.get("peak_reserved_gib") is not None else ""),
    ]


def render(output: Path) -> str:
    """``table.md`` from every ``<folder>-<stem>_<mode>.json`` (and ``.failed``) in ``output``, configs in name order."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    runs = sorted({tuple(path.stem.rsplit("_", 1)) for path in [*output.glob("*_*.json"), *output.glob("*_*.failed")]})
    device = ""
    for name, mode in runs:
        path = output / f"{name}_{mode}.json"
        if path.is_file():
            result = json.loads(path.read_text())
            device = device or f"{result['device_name']}, torch {result['torch']}, {result['date'][:10]}"
            lines.append("| " + " | ".join(row(result, name, mode)) + " |")
        else:
            reason = (output / f"{name}_{mode}.failed").read_text().strip().splitlines()[-1][:120]
            lines.append("| " + " | ".join([name, mode, f"failed: {reason}"] + [""] * (len(COLUMNS) - 3)) + " |")
    table = "\n".join(lines) + "\n" + (f"\n{device}\n" if device else "")
    (output / "table.md").write_text(table)
    return table


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="configs/*/*_gpu.yaml", help="a glob of training configs")
    parser.add_argument("--modes", default="eager,compiled", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--render_only", default="false", choices=("true", "false"))
    parser.add_argument("--tag", default="", help="appended to each row's name: a variant (e.g. with --overrides after --)")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    modes = args.modes.split(",")
    if unknown := [m for m in modes if m not in MODES]:
        parser.error(f"--modes: unknown {unknown}; accepted: {', '.join(MODES)}")
    args.output.mkdir(parents=True, exist_ok=True)
    configs = sorted(glob.glob(args.configs))
    if args.render_only == "false":
        if not configs:
            parser.error(f"--configs {args.configs!r} matches no file")
        for config in configs:
            for mode in modes:
                tag = f"+{args.tag}" if args.tag else ""
                stem = args.output / f"{Path(config).parent.name}-{Path(config).stem}{tag}_{mode}"  # configs/mnist and configs/shapes share stems
                command = [sys.executable, "-m", "kaleido", "benchmark", "--config", config, "--compile", MODES[mode],
                           "--output", f"{stem}.json", *extra]
                print(" ".join(command), flush=True)
                with open(f"{stem}.log", "w") as log:
                    done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
                if done.returncode != 0:
                    Path(f"{stem}.failed").write_text(Path(f"{stem}.log").read_text()[-2000:] or f"exit status {done.returncode}")
    print(render(args.output))


if __name__ == "__main__":
    main()
