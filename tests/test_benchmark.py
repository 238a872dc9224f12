"""``python -m kaleido benchmark`` on a tiny config: it runs and reports, counts the FLOPs of the step it
times, leaves MFU null on a CPU, and a bad flag fails in one line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from kaleido.__main__ import main
from kaleido.benchmark import build, format_table

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tests' tiny Kaleido config, smaller still, with one batch shape (the FLOPs do not depend on
    which batch was counted) and gradient clipping (fit's path)."""
    config = yaml.safe_load((ROOT / "tests/configs/tiny_kaleido.yaml").read_text())
    config["trainer"]["gradient_clip_val"] = 1.0
    config["data"]["init_args"].update(batch_size=4, num_train=16, pad_to_limits=True)
    path = tmp_path_factory.mktemp("benchmark") / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def result(config: Path, single_thread: None) -> dict[str, Any]:  # noqa: ARG001
    output = config.parent / "out" / "benchmark.json"
    main(["benchmark", "--config", str(config), "--steps", "2", "--warmup", "1", "--sample_steps", "2", "--profile_steps", "2", "--fit_steps", "2",
          "--fit_host_profile", "2", "--output", str(output)])
    return json.loads(output.read_text())


def test_the_command_reports_every_measure(result: dict[str, Any]) -> None:
    assert result["settings"]["batch_size"] == 4 and result["settings"]["device"] == "cpu"
    assert result["model"] == "Kaleido" and result["torch"] == torch.__version__
    training = result["training"]
    assert training["images_per_s"] > 0 and training["step_s"] > 0 and training["first_step_s"] > 0
    assert training["compile_s"] is None  # eager
    assert training["peak_memory_gib"] is None and training["peak_reserved_gib"] is None  # CUDA's allocator only
    assert set(training["shares"]) == {"loader", "conditioning", "denoiser", "optimizer"}
    assert sum(training["shares"].values()) == pytest.approx(1.0)
    assert all(share >= 0 for share in training["shares"].values())
    assert result["denoiser_only"]["step_s"] > 0 and result["denoiser_only"]["step_over_denoiser_only"] > 0
    sampling = result["sampling"]
    assert sampling["raw_forward_s"] > 0 and {"ddpm", "ddim"} <= set(sampling["samplers"])
    for measures in sampling["samplers"].values():
        assert measures["images_per_s"] > 0 and measures["step_over_raw_forward"] >= 0
    assert "training step" in format_table(result) and "ddpm CFG" in format_table(result)


def test_the_profile_says_where_the_step_goes(result: dict[str, Any]) -> None:
    profile = result["training"]["profile"]
    assert profile["steps"] == 2 and profile["unit"] == "CPU operators"
    assert profile["kernels_per_step"] > 100 and profile["mean_kernel_us"] > 0
    assert 0 < profile["busy_s_per_step"] and 0 < profile["busy_share"] <= 1.05  # self times tile a CPU step
    assert sum(profile["by_category"].values()) == pytest.approx(1.0)
    assert profile["by_category"]["convolution"] > 0 and profile["by_category"]["matmul"] > 0
    top = [entry["us_per_step"] for entry in profile["top"]]
    assert top == sorted(top, reverse=True) and len(top) == 12
    assert "device busy" in format_table(result)
    sampling = result["sampling"]["profile"]  # the raw forward of the doubled batch, profiled the same way
    assert sampling["steps"] == 2 and sampling["kernels_per_step"] > 10 and sum(sampling["by_category"].values()) == pytest.approx(1.0)
    assert "sampling profile" in format_table(result)


def test_fit_runs_the_config_s_trainer_beside_the_bare_step(result: dict[str, Any]) -> None:
    fit = result["fit"]
    assert fit["steps"] == 2 and fit["warmup"] == 1 and fit["step_s"] > 0
    assert 0 <= fit["between_steps_s"] <= fit["step_s"]  # one gap between the two timed steps, inside them
    assert fit["images_per_s"] == pytest.approx(result["settings"]["batch_size"] / fit["step_s"])
    assert fit["over_training_step"] == pytest.approx(fit["step_s"] / result["training"]["step_s"])
    assert "Trainer.fit step" in format_table(result)


def test_fit_counts_no_syncs_on_a_cpu(result: dict[str, Any]) -> None:
    # Work on a CPU is synchronous: there is no host sync to count.
    assert result["fit"]["syncs_per_step"] is None and result["fit"]["sync_sites"] is None
    assert [line.split()[2:] for line in format_table(result).splitlines() if "host syncs" in line] == [["–", "(counted", "on", "CUDA", "only)"]]


def test_the_host_profile_says_where_fit_s_host_time_goes(result: dict[str, Any]) -> None:
    profile = result["fit"]["host_profile"]
    assert result["settings"]["fit_host_profile"] == 2 and profile["steps"] == 2
    assert profile["step_s"] > 0 and profile["calls_per_step"] > 100
    for key in ("by_cumulative", "by_own"):
        entries = profile[key]
        assert 0 < len(entries) <= 15 and all(entry["ms_per_step"] > 0 and entry["calls_per_step"] > 0 for entry in entries)
        assert [entry["ms_per_step"] for entry in entries] == sorted((entry["ms_per_step"] for entry in entries), reverse=True)
        assert all(entry["ms_per_step"] <= 1e3 * profile["step_s"] * 1.05 for entry in entries)
        assert all("_lsprof" not in entry["function"] for entry in entries)  # the profiler's own entries left out
    assert any("kaleido/" in entry["function"] or "lightning/" in entry["function"] for entry in profile["by_cumulative"])
    table = format_table(result)
    assert "host profile (2 steps)" in table and profile["by_own"][0]["function"][:100] in table


def test_a_sync_is_counted_at_the_line_outside_torch_that_made_it() -> None:
    """The counting of torch's sync warnings, driven without a GPU: warnings raised here, one of them
    through a function that lives in torch's folder, as ``.item()`` would."""
    import warnings

    from kaleido.benchmark.host import SYNC_WARNING, TORCH_DIR, SyncCounter, call_site

    namespace: dict[str, Any] = {"warnings": warnings}
    exec(compile(f"def item():\n    warnings.warn({SYNC_WARNING + ' (Triggered internally at x.cpp:1.)'!r})\n",
                 TORCH_DIR + "fake_tensor.py", "exec"), namespace)
    counter = SyncCounter()
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        counter.hook()
        try:
            for _ in range(3):
                namespace["item"]()  # the site: this line
            warnings.warn(SYNC_WARNING)  # the site: this line, no torch frame
            warnings.warn("something else")  # not a sync: shown as before
        finally:
            counter.unhook()
        warnings.warn(SYNC_WARNING)  # after unhook: shown, not counted
    through, direct = sorted(counter.sites, key=lambda site: -counter.sites[site])
    assert counter.sites[through] == 3 and through.endswith(" (via torch/fake_tensor.py:2 item)")
    assert counter.sites[direct] == 1 and "via" not in direct and direct.split(" ")[0] != through.split(" ")[0]
    for site in (through, direct):
        assert site.split(":")[0].endswith("test_benchmark.py") and " test_a_sync_is_counted_at_the_line_outside_torch_that_made_it" in site
    assert [str(w.message) for w in shown] == ["something else", SYNC_WARNING]
    report = counter.report(steps=2)
    assert report["syncs_per_step"] == 2.0 and report["sync_sites"][0]["count"] == 3 and report["sync_sites"][0]["per_step"] == 1.5
    # The innermost frame outside torch, however deep the torch frames below it.
    frames = [(TORCH_DIR + "_tensor.py", 40, "item"), (TORCH_DIR + "nn/modules/module.py", 9, "_call_impl"),
              ("/somewhere/lightning/pytorch/loops/loop.py", 12, "advance"), ("/somewhere/main.py", 1, "main")]
    assert call_site(frames) == "/somewhere/lightning/pytorch/loops/loop.py:12 advance (via torch/_tensor.py:40 item)"


def test_the_sync_count_covers_each_timed_step_s_whole_cycle_once(config: Path) -> None:
    """On CUDA the count runs from the end of the last warmup step (the timer's hook) to the end of the last
    timed one: a sync in a step's body and one in its tail (hooks after the timer's, e.g. logging) count
    once per step each. Driven on a CPU: the warnings raised by hand, the counter only catching them."""
    import warnings

    from lightning.pytorch import Callback, Trainer

    from kaleido.benchmark.fit import StepTimer
    from kaleido.benchmark.host import SYNC_WARNING, SyncCounter

    class CatchOnly(SyncCounter):  # no CUDA: torch's debug mode left alone
        def start(self) -> None:
            self.hook()

        def stop(self) -> None:
            self.unhook()

    class InTheBody(Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            warnings.warn(SYNC_WARNING)

    model, data, _ = build(config, [])
    model.on_train_batch_end = lambda *args: warnings.warn(SYNC_WARNING)  # type: ignore[method-assign]  # after the timer's hook
    timer = StepTimer(warmup=1, steps=2, device="cpu")
    timer.syncs = counter = CatchOnly()
    trainer = Trainer(callbacks=[InTheBody(), timer], max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the same warnings outside the counted steps
        trainer.fit(model, datamodule=data)
    timer.close()
    assert timer.steps == 2 and sorted(counter.sites.values()) == [2, 2]
    assert {site.split(" ")[1] for site in counter.sites} == {"on_train_batch_start", "<lambda>"}
    assert counter.report(timer.steps)["syncs_per_step"] == 2.0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution"),  # cuDNN: a GEMM in name only
        ("triton_red_fused_native_group_norm_silu_3", "normalisation"),
        ("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>", "attention"),
        ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNN", "matmul"),
        ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdam>", "optimizer"),
        ("triton_poi_fused_add_mul_silu_7", "elementwise and other"),
    ],
)
def test_kernels_are_grouped_by_what_they_do(name: str, expected: str) -> None:
    from kaleido.benchmark.profile import category

    assert category(name) == expected


def test_mfu_is_null_on_a_cpu_and_says_why(result: dict[str, Any]) -> None:
    assert result["training"]["mfu"] is None and result["settings"]["peak_tflops"] is None
    assert result["training"]["mfu_of_matmul"] is None and result["settings"]["matmul_tflops"] is None  # measured on a GPU only
    assert "CPU" in result["settings"]["peak_source"]
    assert result["training"]["achieved_tflops"] > 0


def test_the_roofline_counts_the_same_step_as_the_flops(result: dict[str, Any]) -> None:
    """Its operators' FLOPs are the counter's; a CPU has no bandwidth in the table, so there is no bound."""
    line = result["training"]["roofline"]
    assert line["flops_per_image"] == pytest.approx(result["training"]["flops_per_image"])
    assert line["bytes_per_image"] > 0 and line["bytes_per_image_by_kind"]["flop operators"] > 0
    assert line["eager_bound_s"] is None and result["settings"]["bandwidth_tbs"] is None
    assert "roofline" in format_table(result)


def test_a_compiled_config_is_built_with_batches_of_one_shape(config: Path, tmp_path: Path) -> None:
    """Compiling named in the config itself (not by --compile) pads the batches as fit does."""
    compiled = tmp_path / "compiled.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["model"]["init_args"]["compile"] = True
    settings["data"]["init_args"]["pad_to_limits"] = False
    compiled.write_text(yaml.safe_dump(settings))
    _, data, _ = build(compiled, [])
    assert data.pad_to_limits is True
    _, eager, _ = build(compiled, ["--model.init_args.compile", "false"])
    assert eager.pad_to_limits is False


def test_the_measured_matmul_rate_times_one_product() -> None:
    from kaleido.benchmark.peaks import matmul_tflops

    rate = matmul_tflops("cpu", "32", size=128, calls=3, warmup=1)
    assert 0 < rate < 100  # TFLOP/s of a 128³ product on a CPU: counted as 2·128³ per call


def test_flops_match_an_independent_count_of_the_training_step(config: Path, result: dict[str, Any]) -> None:
    model, data, _ = build(config, [])
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    # One backward of the whole loss, as the model's own training step. The CPU's fused attention counted
    # by the formulas of CUDA's flash kernel, which the counter registers for CUDA only.
    aten = torch.ops.aten
    cpu_attention = {
        aten._scaled_dot_product_flash_attention_for_cpu: flop_registry[aten._scaled_dot_product_flash_attention].__wrapped__,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: flop_registry[aten._scaled_dot_product_flash_attention_backward].__wrapped__,
    }
    with FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        cond = model.condition(batch)
        loss = model.diffusion_loss(batch["image"], cond) + sum(cond.losses.values())
        loss.backward()
    assert result["training"]["flops_per_image"] > 0
    assert result["training"]["flops_per_image"] * len(batch["image"]) == counter.get_total_flops()
    parts = result["training"]["flops_per_image_by_part"]
    assert parts["denoiser"] > parts["conditioning"] > 0
    assert any("attention" in str(op) for op in counter.get_flop_counts()["Global"])  # attention is counted


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--precision", "fp16"], "--precision: 'fp16' is not accepted"),
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--sample_steps", "1"], "--sample_steps must be >= 2"),
        (["--device", "tpu"], "device 'tpu' is not"),
        (["--profile_steps", "-1"], "--profile_steps must be >= 0, got -1"),
        (["--bandwidth_tbs", "0"], "--bandwidth_tbs must be > 0, got 0"),
        (["--fit_steps", "-2"], "--fit_steps must be >= 0, got -2"),
        (["--fit_host_profile", "-1"], "--fit_host_profile must be >= 0, got -1"),
        (["--fit_host_profile", "2"], "--fit_host_profile profiles steps after --fit_steps timed ones: give --fit_steps too"),
        (["--overrides", "[model.init_args.compile]"], "--overrides: 'model.init_args.compile' is not key=value"),
    ],
)
def test_a_bad_flag_is_one_line(config: Path, flags: list[str], words: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", "--config", str(config), *flags])
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and words in message and "\n" not in message


def test_an_override_builds_the_variant_it_names(config: Path) -> None:
    model, data, _ = build(config, ["--model.init_args.unet.channels_last", "true", "--data.init_args.batch_size", "2"])
    assert model.denoiser.channels_last is True and data.batch_size == 2


def test_fit_trains_a_model_the_sampling_measures_left_in_eval_mode(config: Path) -> None:
    # In eval mode a compiled model's training step would run its uncompiled networks: fit's figure would
    # then be the eager step's.
    from lightning.pytorch import Callback, Trainer

    from kaleido.benchmark.fit import measure_fit

    class Modes(Callback):
        seen: list[bool] = []

        def on_train_batch_start(self, trainer: Trainer, pl_module: Any, *args: Any) -> None:
            self.seen.append(pl_module.training)

    model, data, _ = build(config, [])
    model.eval()
    modes = Modes()
    measure_fit(lambda **kw: Trainer(callbacks=[modes], logger=False, enable_progress_bar=False, enable_model_summary=False,
                                     enable_checkpointing=False, **kw), model, data, 2, 1, "cpu", "32")
    assert modes.seen == [True, True, True, True]  # the warmup step, the two timed ones, fit's last (untimed) step


def test_fit_s_last_step_which_writes_last_ckpt_is_outside_the_measured_steps(config: Path) -> None:
    """kaleido's ModelCheckpoint (save_last) writes last.ckpt at fit's last step: a once-a-run cost (seconds
    for a large model) that the timed and profiled steps must not carry."""
    from lightning.pytorch import Callback, Trainer

    from kaleido.benchmark.fit import StepTimer, measure_fit
    from kaleido.callbacks import ModelCheckpoint

    class AtTheLastStep(Callback):  # before the timer in the list: its hooks of a step run first
        seen: list[tuple[int, int, int]] = []

        def on_train_batch_end(self, trainer: Trainer, pl_module: Any, *args: Any) -> None:
            if trainer.global_step == trainer.max_steps:
                timer = next(c for c in trainer.callbacks if isinstance(c, StepTimer))
                self.seen.append((trainer.global_step, timer.steps, timer.profiled))

    model, data, _ = build(config, [])
    last = AtTheLastStep()
    measure_fit(lambda **kw: Trainer(callbacks=[ModelCheckpoint(save_last=True), last], logger=False, enable_progress_bar=False,
                                     enable_model_summary=False, **kw), model, data, 2, 1, "cpu", "32", host_profile_steps=1)
    assert last.seen == [(5, 2, 1)]  # 1 warmup + 2 timed + 1 profiled + the last: both windows closed before it


def test_a_missing_config_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"^error: no config at .*missing\.yaml$"):
        main(["benchmark", "--config", str(tmp_path / "missing.yaml")])


def test_the_table_script_renders_measured_and_failed_runs(result: dict[str, Any], tmp_path: Path) -> None:
    """benchmarks/benchmark_table.py: one row per (config, mode) from the command's JSON; a failed run is a
    row that says why, not a missing one."""
    spec = importlib.util.spec_from_file_location("benchmark_table", ROOT / "benchmarks" / "benchmark_table.py")
    assert spec is not None and spec.loader is not None
    table_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table_script)
    (tmp_path / "shapes-tiny_gpu_eager.json").write_text(json.dumps(result))
    (tmp_path / "shapes-tiny_gpu_compiled.failed").write_text("Traceback ...\ntorch.OutOfMemoryError: CUDA out of memory\n")
    table = table_script.render(tmp_path).splitlines()
    compiled, eager = table[2], table[3]
    step_ms = f"{1000 * result['training']['step_s']:.1f}"
    assert eager.startswith(f"| shapes-tiny_gpu | eager | {result['settings']['batch_size']} | {step_ms} |")
    assert compiled.startswith("| shapes-tiny_gpu | compiled | failed: torch.OutOfMemoryError: CUDA out of memory |")
    profile = result["training"]["profile"]
    fit = result["fit"]
    assert eager.endswith(f" | {profile['busy_share']:.0%}, {profile['kernels_per_step']:,.0f} | "
                          f"{fit['over_training_step']:.2f}, {1000 * fit['between_steps_s']:.1f} ms | – |")  # no peak memory on a CPU
    cells = [cell.strip() for cell in eager.strip("|").split("|")]
    assert cells[6] == cells[7] == "–"  # MFU, and MFU of the measured matmul: none on a CPU
    assert (tmp_path / "table.md").read_text().startswith("| config | mode |")


def test_a_run_cut_short_in_fit_keeps_the_step_and_sampling_figures(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--fit_steps`` adds minutes at the end (a fresh Trainer, its workers, compiling again): the JSON
    holds everything measured before it, so a run stopped there (a lease's end, a crash) loses only fit."""
    import kaleido.benchmark.command as command

    def interrupted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise KeyboardInterrupt  # ^C in the middle of fit (a timeout's SIGTERM ends it there too, before the last write)

    monkeypatch.setattr(command, "measure_fit", interrupted)
    output = config.parent / "cut" / "benchmark.json"
    with pytest.raises(KeyboardInterrupt):
        main(["benchmark", "--config", str(config), "--steps", "1", "--warmup", "0", "--sample_steps", "2", "--fit_steps", "2",
              "--output", str(output)])
    written = json.loads(output.read_text())
    assert written["training"]["step_s"] > 0 and written["sampling"]["raw_forward_s"] > 0 and "fit" not in written


def test_sampling_precision_script_measures_bf16_against_float32(text_data) -> None:  # type: ignore[no-untyped-def]
    """benchmarks/sampling_precision.py: a row per (t, γ); bf16 moves x0, float32 does not move itself, and
    the float32 last layer is put back after each measure."""
    import kaleido
    from tests.conftest import tiny_model_kwargs

    spec = importlib.util.spec_from_file_location("sampling_precision", ROOT / "benchmarks" / "sampling_precision.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    torch.manual_seed(0)
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **tiny_model_kwargs()).eval()
    torch.nn.init.normal_(model.denoiser.out[-1].weight, std=0.1)  # zero-initialised: its output would be exactly 0
    last = model.denoiser.out[-1]
    rows = script.measure(model, ["a circle", "a square"], [500, 20], [1.0, 4.0])
    assert [(r["t"], r["cfg_scale"]) for r in rows] == [(500, 1.0), (500, 4.0), (20, 1.0), (20, 4.0)]
    assert all(r["bf16"] > 0 and r["bf16_last_layer_fp32"] >= 0 and r["model_error"] > 0 for r in rows), rows
    assert model.denoiser.out[-1] is last
    assert script.rms(torch.ones(3), torch.ones(3)) == 0.0
