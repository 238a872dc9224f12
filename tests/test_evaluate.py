"""`python -m kaleido evaluate` end to end: tiny Kaleido and baseline checkpoints from the CLI's `fit`,
a tiny timm feature extractor with local random weights (nothing downloaded)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from kaleido.__main__ import main
from kaleido.data.contract import build_datamodule
from kaleido.metrics.report import matched_precision

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "tests/configs/tiny_kaleido.yaml"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> dict[str, Path]:  # noqa: ARG001
    """A few `fit` steps of the tiny config, and of the same config as the baseline (no latents)."""
    root = tmp_path_factory.mktemp("fit")
    variants = {"kaleido": [], "baseline": ["--model", "kaleido.DiffusionModel", "--data.init_args.latents", "[]"]}
    found = {}
    for name, extra in variants.items():
        main(["fit", "--config", str(TINY_CONFIG), "--trainer.default_root_dir", str(root / name), *extra])
        found[name] = sorted((root / name).rglob("*.ckpt"))[-1]
    return found


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights for timm's tiny `test_vit` (64 features), saved locally."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "test_vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _args(checkpoints: dict[str, Path], features: Path, output: Path, cache: Path) -> list[str]:
    return [
        "evaluate", "--ckpt_path", str(checkpoints["kaleido"]), "--baseline_ckpt_path", str(checkpoints["baseline"]),
        "--cfg_scales", "[1,3]", "--num_samples", "16", "--sampler", "ddim", "--steps", "3", "--batch_size", "8",
        "--seed", "1", "--feature_extractor", "timm:test_vit", "--feature_weights", str(features),
        "--reference_cache", str(cache), "--output", str(output), "--device", "cpu",
    ]  # fmt: skip


def _without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "sampling_seconds"} for row in rows]


def test_evaluate_end_to_end_and_reproducible(
    checkpoints: dict[str, Path], features: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    main(_args(checkpoints, features, tmp_path / "a", cache))
    assert f"reference statistics (once; cached in {cache})" in capsys.readouterr().err  # minutes on big sets: say so
    out = tmp_path / "a"
    for name in ("metrics.json", "metrics.csv", "fid_vs_cfg.png", "recall_vs_cfg.png"):
        assert (out / name).is_file(), name
    for model in ("kaleido", "baseline"):
        for scale in ("1", "3"):
            assert Image.open(out / "grids" / f"{model}_cfg{scale}.png").size[0] > 32
    with open(out / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    runs = [(r["model"], float(r["cfg_scale"])) for r in rows]
    assert runs == [("kaleido", 1), ("kaleido", 3), ("baseline", 1), ("baseline", 3)]
    shared = "fid precision recall vendi mean_similarity mode_coverage mode_tv color_tv count_coverage".split()
    for row in rows:
        assert all(math.isfinite(float(row[key])) for key in shared), row
        assert 0 <= float(row["recall"]) <= 1 and 1 <= float(row["vendi"]) <= 16
    adherence = [row["adherence_text_objects"] for row in rows]  # Kaleido only
    assert all(0 <= float(a) <= 1 for a in adherence[:2]) and adherence[2:] == ["", ""]
    table = (out / "metrics.md").read_text().splitlines()
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    column = header.index("text objects (chance)")
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    kaleido_row = next(r for r in rows if r["model"] == "kaleido" and float(r["cfg_scale"]) == 3)
    objects, chance = float(kaleido_row["adherence_text_objects"]), float(kaleido_row["adherence_text_chance_objects"])
    assert cells[1][column] == f"{objects:.3f} ({chance:.3f})" and cells[2][column] == ""  # the baseline has no z

    report = json.loads((out / "metrics.json").read_text())
    assert report["reference"]["num_images"] == 64 and report["reference"]["precision_recall_images"] == 16
    assert set(report["sample_metrics"]) == {"kaleido_cfg1", "kaleido_cfg3", "baseline_cfg1", "baseline_cfg3"}
    assert len(list(cache.iterdir())) == 1  # the reference statistics, cached

    # The same seeds again (reference statistics now read from the cache), with the Kaleido checkpoint
    # also given a second time as a further model: every Kaleido row repeats the first run's numbers.
    more = ["--more_ckpt_paths", f"[{checkpoints['kaleido']}]"]
    main(_args(checkpoints, features, tmp_path / "b", cache) + more)
    assert "reference statistics" not in capsys.readouterr().err  # read from the cache
    again = json.loads((tmp_path / "b" / "metrics.json").read_text())
    names = ["kaleido-text", "kaleido-text-2", "baseline"]
    assert [r["model"] for r in again["results"]] == [name for name in names for _ in (1, 3)]
    assert list(again["settings"]["models"]) == names
    first = _without_timing(report["results"])
    for name in names:
        rows = [{**r, "model": name} for r in first if r["model"] == ("baseline" if name == "baseline" else "kaleido")]
        assert _without_timing([r for r in again["results"] if r["model"] == name]) == rows
    assert (tmp_path / "b" / "grids" / "kaleido-text-2_cfg3.png").is_file()
    assert len(list(cache.iterdir())) == 1


def test_evaluate_loads_the_weights_asked_for(checkpoints: dict[str, Path]) -> None:
    """`--weights trained` measures the optimiser's weights of every model, not the EMA average."""
    from kaleido.evaluate import _load_models

    loaded = {
        weights: _load_models(checkpoints["kaleido"], checkpoints["baseline"], [], "cpu", None, weights)  # type: ignore[arg-type]
        for weights in ("averaged", "trained")
    }
    for weights, key in (("averaged", "state_dict"), ("trained", "current_model_state")):
        for model, path in loaded[weights].values():
            assert model.loaded_weights == weights  # both checkpoints keep an average
            stored = torch.load(path, weights_only=True)[key]
            assert all(torch.equal(value, stored[name]) for name, value in model.state_dict().items())
    averaged, trained = (loaded[w]["kaleido"][0].state_dict() for w in ("averaged", "trained"))
    assert any(not torch.equal(averaged[name], trained[name]) for name in averaged)


def test_evaluations_run_apart_join_into_the_joint_report(
    checkpoints: dict[str, Path], features: Path, tmp_path: Path
) -> None:
    """One model, or one model and scale, per process (as with one GPU each), joined by `report`:
    the joint run's rows."""
    cache = tmp_path / "cache"
    main(_args(checkpoints, features, tmp_path / "joint", cache))

    def alone(ckpt: Path, output: str, *extra: str) -> Path:
        args = _args(checkpoints, features, tmp_path / output, cache)
        del args[3:5]  # --baseline_ckpt_path BASELINE
        args[args.index("--ckpt_path") + 1] = str(ckpt)
        main([*args, *extra])
        return tmp_path / output

    def report(*inputs: Path, output: str = "all") -> dict:
        main(["report", "--inputs", f"[{','.join(map(str, inputs))}]", "--output", str(tmp_path / output)])
        return json.loads((tmp_path / output / "metrics.json").read_text())

    kaleido = alone(checkpoints["kaleido"], "kaleido", "--name", "kaleido-text")
    baseline = [alone(checkpoints["baseline"], f"baseline_{s}", "--cfg_scales", f"[{s}]") for s in (3, 1)]
    joined = report(kaleido, *baseline)
    expected = json.loads((tmp_path / "joint" / "metrics.json").read_text())
    renamed = [{**r, "model": "kaleido-text" if r["model"] == "kaleido" else r["model"]} for r in expected["results"]]
    assert _without_timing(joined["results"]) == _without_timing(renamed)
    assert list(joined["settings"]["models"]) == ["kaleido-text", "baseline"]
    assert joined["settings"]["loaded_weights"] == {"kaleido-text": "averaged", "baseline": "averaged"}
    for name in ("metrics.csv", "fid_vs_cfg.png", "recall_vs_cfg.png", "grids/kaleido-text_cfg3.png", "grids/baseline_cfg1.png"):
        assert (tmp_path / "all" / name).is_file(), name

    with pytest.raises(SystemExit, match="measured in several inputs"):
        report(baseline[0], baseline[0], output="x")
    with pytest.raises(SystemExit, match="model name 'baseline' stands for .* and for"):
        report(baseline[1], alone(checkpoints["kaleido"], "impostor", "--name", "baseline", "--cfg_scales", "[3]"))
    with pytest.raises(SystemExit, match="evaluated differently .*'seed': \\(1, 2\\)"):
        report(kaleido, alone(checkpoints["baseline"], "other_seed", "--seed", "2"), output="x")
    with pytest.raises(SystemExit, match="--name 'baseline' is taken"):
        main([*_args(checkpoints, features, tmp_path / "x", cache), "--name", "baseline"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--cfg_scales": "[]"}, "error: --cfg_scales is empty"),
        ({"--ckpt_path": "missing.ckpt"}, "error: no checkpoint at missing.ckpt"),
        ({"--baseline_ckpt_path": "KALEIDO"}, "error: .* holds a Kaleido checkpoint; expected one of: DiffusionModel"),
        ({"--ckpt_path": "BASELINE"}, "error: .* holds a DiffusionModel .*it must be Kaleido"),
        ({"--num_samples": "3"}, "error: --num_samples must be >= 4"),
    ],
)
def test_evaluate_bad_input_says_what(
    checkpoints: dict[str, Path], features: Path, tmp_path: Path, change: dict[str, str], message: str
) -> None:
    args = _args(checkpoints, features, tmp_path / "out", tmp_path / "cache")
    named = {"KALEIDO": str(checkpoints["kaleido"]), "BASELINE": str(checkpoints["baseline"])}
    for flag, value in change.items():
        args[args.index(flag) + 1] = named.get(value, value)
    with pytest.raises(SystemExit, match=message):
        main(args)


def test_unknown_sampler_is_refused_by_the_parser() -> None:
    with pytest.raises(SystemExit, match=r"^error: --sampler: 'euler' is not accepted; expected one of 'ddpm', 'ddim', 'dpmpp_2m', 'dpmpp_2m_sde'$"):
        main(["evaluate", "--ckpt_path", "x.ckpt", "--sampler", "euler"])


def test_data_comes_from_the_config_beside_the_checkpoint(
    checkpoints: dict[str, Path], features: Path, tmp_path: Path
) -> None:
    # A checkpoint moved away from its config.yaml: which data it was trained on must be told.
    lone = tmp_path / "lone.ckpt"
    shutil.copy(checkpoints["kaleido"], lone)
    args = _args({"kaleido": lone, "baseline": checkpoints["baseline"]}, features, tmp_path / "out", tmp_path / "cache")
    with pytest.raises(SystemExit, match="cannot tell which data .* pass --data_config"):
        main(args)
    # The data section alone is a valid --data_config, and the latents do not change the reference key.
    config = checkpoints["kaleido"].parents[1] / "config.yaml"
    section = tmp_path / "data.yaml"
    section.write_text(
        "class_path: kaleido.shapes.ShapesDataModule\ninit_args: {shapes: {resolution: 16, max_objects: 1}, num_train: 64}\n"
    )
    assert build_datamodule(section).identity() == build_datamodule(config).identity()


def test_adherence_command_measures_each_type_against_chance_and_the_data(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    def measure(output: str, *extra: str) -> dict:
        main(["adherence", "--ckpt_path", str(checkpoints["kaleido"]), "--num_samples", "6", "--sampler", "ddim",
              "--num_steps", "2", "--batch_size", "4", "--device", "cpu", "--data_items", "12", "--output",
              str(tmp_path / output), *extra])  # fmt: skip
        return json.loads((tmp_path / output / "adherence.json").read_text())

    result = measure("a")
    text = result["per_type"]["text"]
    assert {"objects", "exact", "unparsed", "chance_objects", "data_objects", "data_exact"} <= set(text)
    assert all(0.0 <= value <= 1.0 for value in text.values() if not math.isnan(value))  # chance: NaN below 2 parsed
    assert text["data_objects"] >= 0.9  # the parser reads the training renders back: the ceiling of a sample
    assert result["skipped"] == {} and Image.open(tmp_path / "a" / "grid.png").size[0] > 16
    again = measure("b", "--conditions", "[a circle, a square]")
    assert [e["condition"] for e in again["examples"]] == ["a circle", "a square"] * 3
    assert measure("c", "--conditions", "[a circle, a square]")["per_type"] == again["per_type"]  # seeded

    with pytest.raises(SystemExit, match="holds a DiffusionModel checkpoint; expected one of: Kaleido"):
        main(["adherence", "--ckpt_path", str(checkpoints["baseline"]), "--output", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--num_samples, --batch_size and --num_steps must be >= 1"):
        main(["adherence", "--ckpt_path", str(checkpoints["kaleido"]), "--num_samples", "0"])


def test_evaluate_sweeps_guiders_and_report_joins_old_rows_as_plain_cfg(
    checkpoints: dict[str, Path], features: Path, tmp_path: Path
) -> None:
    """`--guiders` adds a run per (model, guider, scale), each row naming its guider and settings; a report
    written before guiders (no guider anywhere) joins as plain CFG, and all lines share one FID–recall plot."""
    cache = tmp_path / "cache"
    args = _args(checkpoints, features, tmp_path / "swept", cache)
    del args[3:5]  # Kaleido alone
    args[args.index("--cfg_scales") + 1] = "[3]"
    apg = '{"class_path": "apg", "init_args": {"eta": 0.5}}'
    main([*args, "--guiders", f"[cfg, {apg}, cads]"])
    swept = json.loads((tmp_path / "swept" / "metrics.json").read_text())
    assert [(r["model"], r["guider"]) for r in swept["results"]] == [("kaleido", g) for g in ("cfg", "apg_eta0.5", "cads")]
    assert swept["results"][1]["guider_settings"] == {"eta": 0.5, "norm_threshold": 15.0, "momentum": -0.5}
    spec = {"class_path": "kaleido.diffusion.guiders.apg.APG", "init_args": swept["results"][1]["guider_settings"]}
    assert swept["settings"]["guiders"]["apg_eta0.5"] == spec
    for name in ("kaleido_cfg3", "kaleido_apg_eta0.5_cfg3", "kaleido_cads_cfg3"):
        assert (tmp_path / "swept" / "grids" / f"{name}.png").is_file() and name in swept["sample_metrics"]
    assert len({r["fid"] for r in swept["results"]}) == 3  # the guiders change the samples
    with open(tmp_path / "swept" / "metrics.csv") as file:
        assert json.loads(list(csv.DictReader(file))[1]["guider_settings"])["eta"] == 0.5

    # The baseline as an evaluation written before guiders existed: no guider in its rows or settings.
    old = tmp_path / "old"
    base = _args(checkpoints, features, old, cache)
    del base[3:5]
    base[base.index("--ckpt_path") + 1] = str(checkpoints["baseline"])
    main([*base, "--cfg_scales", "[1,3]"])
    report = json.loads((old / "metrics.json").read_text())
    report["settings"].pop("guiders")
    report["results"] = [{k: v for k, v in r.items() if k not in ("guider", "guider_settings")} for r in report["results"]]
    (old / "metrics.json").write_text(json.dumps(report))
    main(["report", "--inputs", f"[{tmp_path / 'swept'},{old}]", "--output", str(tmp_path / "all")])
    joined = json.loads((tmp_path / "all" / "metrics.json").read_text())
    runs = [(r["model"], r["guider"], r["cfg_scale"]) for r in joined["results"]]
    assert runs == [("kaleido", g, 3.0) for g in ("cfg", "apg_eta0.5", "cads")] + [("baseline", "cfg", 1.0), ("baseline", "cfg", 3.0)]
    assert list(joined["settings"]["guiders"]) == ["cfg", "apg_eta0.5", "cads"]
    for name in ("fid_vs_cfg.png", "recall_vs_cfg.png", "fid_vs_recall.png"):
        assert Image.open(tmp_path / "all" / name).size[0] > 100
    with open(tmp_path / "all" / "matched_precision.csv") as file:
        assert [row["line"] for row in csv.DictReader(file)] == ["kaleido + cfg", "kaleido + apg_eta0.5", "kaleido + cads", "baseline + cfg"]
    with pytest.raises(SystemExit, match=r"\(model, guider, CFG scale\) \[\('baseline', 'cfg', 1.0\)"):
        main(["report", "--inputs", f"[{old},{old}]", "--output", str(tmp_path / "x")])


def test_guiders_that_do_not_act_at_scale_one_share_its_samples(
    checkpoints: dict[str, Path], features: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At γ = 1 only CADS's condition hook changes what is drawn: interval and APG draw plain CFG's samples,
    so that run is sampled once and its row, grid and details are shared, marked `same_samples_as`."""
    import kaleido.evaluate as evaluate_module
    from kaleido.diffusion.guiders import build_guider

    assert [build_guider(name).acts_at_scale_one() for name in ("cfg", "interval", "apg", "cads")] == [False, False, False, True]
    sampled: list[float] = []
    sweep = evaluate_module.sample_sweep

    def counting(model, prompts, scale, *rest):  # type: ignore[no-untyped-def]
        sampled.append(scale)
        return sweep(model, prompts, scale, *rest)

    monkeypatch.setattr(evaluate_module, "sample_sweep", counting)
    out = tmp_path / "shared"
    args = _args(checkpoints, features, out, tmp_path / "cache")
    args[args.index("--ckpt_path") + 1] = str(checkpoints["baseline"])
    del args[args.index("--baseline_ckpt_path") : args.index("--baseline_ckpt_path") + 2]
    main([*args, "--guiders", "[interval, cfg, apg, cads]"])
    assert sorted(sampled) == [1, 1, 3, 3, 3, 3]  # γ = 1: interval's (the first) and CADS's
    rows = {(r["guider"], r["cfg_scale"]): r for r in json.loads((out / "metrics.json").read_text())["results"]}
    first = rows[("interval", 1.0)]
    assert "same_samples_as" not in first and "same_samples_as" not in rows[("cads", 1.0)]
    for guider in ("cfg", "apg"):
        row = rows[(guider, 1.0)]
        assert row["same_samples_as"] == "baseline_interval_cfg1" and row["sampling_seconds"] == 0.0
        assert {k: row[k] for k in ("fid", "recall", "precision")} == {k: first[k] for k in ("fid", "recall", "precision")}
        assert row["guider_settings"] == build_guider(guider).settings()
    assert (out / "grids" / "baseline_cfg1.png").read_bytes() == (out / "grids" / "baseline_interval_cfg1.png").read_bytes()
    assert (out / "grids" / "baseline_apg_cfg1.png").is_file()
    table = (out / "metrics.md").read_text().splitlines()  # the docs' table: a row per run, in the lines' order
    assert table[0].startswith("| model | guider | CFG | FID | precision | recall | Vendi |") and "mode tv" in table[0]
    assert len(table) == 2 + 8 and table[2].startswith("| baseline | interval | 1 | ")
    assert table[4].startswith("| baseline | cfg (= baseline_interval_cfg1) | 1 | ") and f"| {first['fid']:.2f} |" in table[4]


def test_evaluate_resumes_a_sweep_that_stopped_half_way(checkpoints: dict[str, Path], features: Path, tmp_path: Path) -> None:
    """The tables are written after every run; --resume keeps the finished runs and samples only the rest,
    with the numbers a whole sweep gives; a resume under other settings is refused in one line."""
    out, cache = tmp_path / "sweep", tmp_path / "cache"
    args = _args(checkpoints, features, out, cache)
    args[args.index("--ckpt_path") + 1] = str(checkpoints["baseline"])
    del args[args.index("--baseline_ckpt_path") : args.index("--baseline_ckpt_path") + 2]
    main(args)
    whole = json.loads((out / "metrics.json").read_text())
    assert whole["complete"] and [r["cfg_scale"] for r in whole["results"]] == [1, 3]

    # As if stopped after its first run: what the per-run write leaves behind.
    stopped = {**whole, "complete": False, "results": whole["results"][:1]}
    (out / "metrics.json").write_text(json.dumps(stopped))
    main([*args, "--resume", "true"])
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["complete"]
    assert resumed["results"][0] == whole["results"][0]  # kept as it was, timing included: not sampled again
    assert _without_timing(resumed["results"]) == _without_timing(whole["results"])

    with pytest.raises(SystemExit, match="--resume: .*other settings .*'seed': \\(1, 2\\)"):
        main([*args, "--resume", "true", "--seed", "2"])


def test_a_run_s_metrics_overlap_the_next_run_s_sampling_and_a_failure_stops_the_sweep(
    checkpoints: dict[str, Path], features: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run is measured in a second thread while the next one samples: the rows keep the runs' order,
    and a measure that fails stops the sweep with its own error, the runs measured before it kept."""
    import threading

    import kaleido.evaluate_runs as runs_module

    out, cache = tmp_path / "overlap", tmp_path / "cache"
    args = _args(checkpoints, features, out, cache)
    args[args.index("--ckpt_path") + 1] = str(checkpoints["baseline"])
    del args[args.index("--baseline_ckpt_path") : args.index("--baseline_ckpt_path") + 2]
    args[args.index("--cfg_scales") + 1] = "[1,2,3]"
    threads: list[str] = []
    calls = {"n": 0}
    vendi = runs_module.vendi_score

    def failing_third(features: torch.Tensor) -> float:
        threads.append(threading.current_thread().name)
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("the third run's measure failed")
        return vendi(features)

    monkeypatch.setattr(runs_module, "vendi_score", failing_third)
    with pytest.raises(RuntimeError, match="the third run's measure failed"):
        main(args)
    assert threads and all(name.startswith("kaleido-measure") for name in threads)
    kept = json.loads((out / "metrics.json").read_text())
    assert not kept["complete"] and [r["cfg_scale"] for r in kept["results"]] == [1, 2]


def test_matched_precision_compares_each_line_at_the_precision_all_reach() -> None:
    """By hand: line b reaches precision 0.6 at best, so every line is judged over its runs at >= 0.6."""
    def run(model: str, guider: str, scale: float, precision: float, fid: float, recall: float) -> dict[str, object]:
        return {"model": model, "guider": guider, "cfg_scale": scale, "precision": precision, "fid": fid, "recall": recall}

    rows = [
        run("a", "cfg", 1, 0.5, 10.0, 0.9), run("a", "cfg", 2, 0.7, 8.0, 0.6), run("a", "cfg", 4, 0.9, 9.0, 0.4),
        run("b", "cfg", 1, 0.4, 7.0, 0.95), run("b", "cfg", 2, 0.6, 12.0, 0.7),
    ]
    table = matched_precision(rows, ["a", "b"])
    assert [t["line"] for t in table] == ["a", "b"] and {t["matched_precision"] for t in table} == {0.6}
    assert (table[0]["fid"], table[0]["fid_cfg_scale"], table[0]["recall"], table[0]["recall_cfg_scale"]) == (8.0, 2, 0.6, 2)
    assert (table[1]["fid"], table[1]["recall"], table[1]["scales"]) == (12.0, 0.7, [2])  # b's FID 7 is below the level
