"""The notebooks run top to bottom (nbclient, this interpreter as the kernel), are committed without
outputs, and write nothing outside their temp dir."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

try:
    import nbclient
    import nbformat
except ImportError as error:  # fail, not skip: a skipped notebook test lets the notebooks rot unseen
    raise ImportError(f"the notebook tests need the dev extras (pip install -e '.[dev]'): {error}") from error

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 180  # seconds; a whole notebook takes well under a minute on 2 CPU cores


def test_the_notebooks_are_there_without_outputs() -> None:
    assert [p.stem for p in NOTEBOOKS] == [
        "01_quickstart",
        "02_latent_editing",
        "03_custom_latent_type",
        "04_real_images",
    ]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [cell for cell in nb.cells if cell.cell_type == "code"]
        assert all(not cell.outputs and cell.execution_count is None for cell in code), (
            f"clear the outputs of {path.name}"
        )
        assert nb.cells[0].cell_type == "markdown" and "for real runs" in nb.cells[0].source.lower(), path.name
        assert "KALEIDO_NOTEBOOK_STEPS" in code[0].source, f"{path.name}: small settings first"


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kernel spec for *this* interpreter, so the notebooks import the kaleido under test whatever
    kernels the machine has installed."""
    try:
        from ipykernel.kernelspec import write_kernel_spec
    except ImportError:
        pytest.fail("executing the notebooks needs ipykernel: pip install -e '.[dev]'")
    kernels = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(kernels / "kaleido-test", overrides={"display_name": f"kaleido tests ({sys.executable})"})
    return kernels


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, kernel_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    cwd, temp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    temp.mkdir()
    # The kernel inherits this environment: the package under test, one thread, offline, temp files in `temp`.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for name, value in {
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TMPDIR": str(temp),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # a debugger warning on stderr otherwise
    before = {p: p.stat().st_mtime_ns for p in (ROOT / "notebooks").rglob("*")}

    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name="kaleido-test", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))
    client = nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(cwd)}})
    start = time.perf_counter()
    try:
        client.execute(cleanup_kc=True)  # the kernel is ours: stop it, not leave it polling beside the next tests
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{path.name} failed:\n{str(error)[-4000:]}")
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert any("image/png" in out.get("data", {}) for out in outputs), "the notebook shows images"
    assert not [out for out in outputs if out.output_type == "error"]
    assert not any(cwd.iterdir()), "nothing written to the working directory"
    assert not any(temp.iterdir()), "the notebook removes its temp dir"
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "notebooks").rglob("*")} == before, (
        "nothing written next to the notebooks"
    )
