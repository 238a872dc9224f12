"""Plot the toy of the paper's Fig. 3 (kaleido/toy.py): samples of the baseline and of Kaleido at each CFG scale.

    python benchmarks/toy_fig3.py --output toy_fig3.png --seed 0

Rows: baseline (class only), Kaleido (class + sub-mode token z ~ p(z | c)); columns: CFG scales. Each
panel's title gives the sub-modes that keep at least 10% of their class's samples. About 15 s on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from jsonargparse import CLI
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kaleido.toy import CENTERS, covered_submodes, run_toy

CLASS_COLORS = ("tab:blue", "tab:orange")


def main(
    output: Path = Path("toy_fig3.png"),
    cfg_scales: tuple[float, ...] = (1.0, 5.0, 8.0, 25.0),
    num_samples: int = 2000,
    seed: int = 0,
) -> None:
    samples = run_toy(cfg_scales, num_samples, seed)
    c = torch.arange(num_samples) % 2
    figure = Figure(figsize=(3 * len(cfg_scales), 6))
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, len(cfg_scales), squeeze=False, sharex=True, sharey=True)
    for row, (model, per_scale) in enumerate(samples.items()):
        for col, scale in enumerate(cfg_scales):
            ax, points = axes[row][col], per_scale[scale]
            for k in range(2):
                ax.scatter(*points[c == k].T, s=2, alpha=0.4, color=CLASS_COLORS[k], label=f"class {'AB'[k]}")
            ax.scatter(*CENTERS.T, marker="x", color="black", s=30)
            ax.set_title(f"{model}, CFG {scale:g}: {covered_submodes(points, c)}/4 sub-modes", fontsize=9)
            ax.set_xlim(-1, 1)
            ax.set_ylim(-1, 1)
    axes[0][0].legend(loc="lower right", fontsize=7, markerscale=4)
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    print(f"wrote {output}")


if __name__ == "__main__":
    CLI(main, as_positional=False)
