"""``python -m kaleido benchmark``: how fast a training config trains and samples (docs/performance.md).

The model and the data module are built from the config as ``fit`` builds them (KaleidoCLI: its links of
the tokenizer and the image size, its seed), without a Trainer: the benchmark runs the steps itself.

How each number is measured:

* **Training step**: the loop of ``fit`` without Lightning around it: the next batch from the config's
  training loader (its ``num_workers``) moved to the device, the model's conditioning and diffusion loss
  under autocast, the backward, gradient clipping as the config's trainer clips, Adam from
  ``configure_optimizers``, ``zero_grad``. Not included: logging, callbacks (EMA), the learning-rate
  scheduler. ``step_s`` is the host clock over ``steps`` steps after ``warmup`` steps, synchronised with
  the GPU at both ends and never in between (the GPU runs ahead of the host as in ``fit``).
  ``peak_memory_gib`` / ``peak_reserved_gib`` (CUDA; null elsewhere): the most memory allocated / reserved by
  the caching allocator during those steps (under CUDA graphs the allocated figure misses the graphs' pool).
* **Shares**: a mark at each boundary of every step (CUDA events recorded on the stream, read once after
  the loop; the host clock on a CPU, where work is synchronous), each interval named by the part it ends.
  ``loader``: from the end of the previous step to the batch being on the device (waiting on the loader
  and the copy; on a GPU, only the time the stream starved). ``conditioning``: the prior (Kaleido: T5
  encoder and decoder, AR loss, latent conditioner) or the condition encoder (baseline), forward and
  backward. ``denoiser``: the noise, the denoiser's forward, the loss and its backward. ``optimizer``:
  clipping, Adam, ``zero_grad``. The backward is split at the conditioning (the denoiser's first, then
  the conditioning's, fed the gradient the denoiser sent it): the gradients of one backward of the total
  loss, with a boundary to time at. The intervals tile the loop, so the shares sum to 1.
* **FLOPs per image**: ``torch.utils.flop_counter.FlopCounterMode`` over one step's forward and backward
  (eager: the counter cannot see inside compiled graphs), divided by the batch size; matmuls,
  convolutions and attention (what the counter counts; the optimiser's element-wise work is not).
  **MFU** = FLOPs per image × images/s / the peak: the ``--peak_tflops`` given, else :data:`PEAK_TFLOPS`
  by the GPU's name; none on a CPU, where MFU is null. On a GPU ``mfu_of_matmul`` reads the same FLOPs
  against the rate of one large matmul measured there first (:func:`matmul_tflops`).
* **Denoiser-only step**: the same model, batch and optimiser with the conditioning computed once without
  gradient: the denoiser's forward and backward and the optimiser's step, the prior neither run nor
  trained. ``step / denoiser-only`` is what the prior costs at equal denoiser.
* **Sampling**: one raw denoiser forward of the doubled batch (2B rows: conditional and unconditional)
  against one CFG sampling step, the marginal cost of a step of the sampler's loop on a conditioning
  drawn once: ``(T(sample_steps) - T(1)) / (sample_steps - 1)`` (the prior's sampling of z stays out:
  its run-to-run jitter, divided by the steps, would read as step time); and the whole ``generate``
  (z drawn, conditioning, every step) in images/s, for each sampler.

``--compile true`` runs the model's own ``compile`` path (the denoiser and the prior through
``torch.compile``, static batch shapes); the first step, which compiles, is reported apart.
"""

from kaleido.benchmark.command import benchmark, build, format_table, main
from kaleido.benchmark.peaks import PEAK_TFLOPS, matmul_tflops, peak
from kaleido.benchmark.sampling import SAMPLERS, measure_sampling
from kaleido.benchmark.training import (
    CPU_ATTENTION_FLOPS,
    PARTS,
    count_flops,
    fit_optimizer_step,
    measure_denoiser_only,
    measure_training,
    rates,
    training_parts,
)

__all__ = [
    "CPU_ATTENTION_FLOPS",
    "PARTS",
    "PEAK_TFLOPS",
    "SAMPLERS",
    "benchmark",
    "build",
    "count_flops",
    "fit_optimizer_step",
    "format_table",
    "main",
    "measure_denoiser_only",
    "measure_sampling",
    "measure_training",
    "matmul_tflops",
    "peak",
    "rates",
    "training_parts",
]
