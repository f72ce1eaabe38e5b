"""The lecture notebooks: committed executed and clean, and runnable in quick mode under nbval.

Quick mode: papermill injects ``quick=True`` (prepare only), then nbval (lax) executes every cell in a
fresh kernel of this environment, as CI does. Committed form: executed top to bottom, no errors,
no machine paths, the skeleton's sections and a ``parameters`` cell.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import quick_parameters

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
LECTURES = ["01_markov_chains", "02_forward_process", "03_posterior", "04_elbo_to_l_simple", "05_unet", "06_training", "07_ddim",
             "08_guidance", "09_ddgan"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")                  # the colours of an IPython traceback
MACHINE_PATH = re.compile(r"(?<![\w.:/~])/(?:[\w.-]+/){2,}|\b[A-Z]:\\")


def code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]


def test_the_nine_lectures_are_present():
    assert [p.stem for p in NOTEBOOKS] == LECTURES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_executed_in_order_and_clean(path):
    nb = json.loads(path.read_text())
    cells = code_cells(nb)
    counts = [c["execution_count"] for c in cells]
    assert None not in counts, f"{path.name}: {counts.count(None)} code cells were not executed"
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: not run top to bottom in a fresh kernel"
    for i, cell in enumerate(cells, 1):
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"{path.name} cell {i}: {out.get('ename')}: {out.get('evalue')}"
            text = "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
            m = MACHINE_PATH.search(text)
            assert m is None, f"{path.name} cell {i} shows a machine path {m.group(0)!r}"
    tagged = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1 and "quick = False" in "".join(tagged[0]["source"]), \
        f"{path.name}: needs one 'parameters' cell defining quick = False"
    markdown = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    for heading in ("## Learning objectives", "## Exercises", "## Summary", "## Further reading"):
        assert heading in markdown, f"{path.name}: no '{heading}' section"
    assert any(o.get("data", {}).get("image/png") for c in cells for o in c.get("outputs", [])), \
        f"{path.name}: no figure in the committed outputs"


# What "\varepsilon", "\nabla", "\times", "\frac", "\beta" … become when written in a Python string without r"":
# "\v", "\f", "\b", "\a", "\t", "\r" turn into control characters, "\n" into a line break before the command's tail,
# and str.splitlines (used to store a cell's source as lines) also breaks at "\v" and "\f": hence "arepsilon" below.
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
BROKEN_N_COMMAND = re.compile(r"\n(?:arepsilon|abla|otin|onumber|u[_^}])")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_markdown_has_no_latex_mangled_by_string_escapes(path):
    """Bug caught: 08_guidance showed "$\\n arepsilon_c - \\n arepsilon_u$" where "\\varepsilon" had lost its "\\v"."""
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"])
        for bad in (CONTROL.search(text), BROKEN_N_COMMAND.search(text)):
            assert bad is None, f"{path.name} cell {i}: {text[max(0, bad.start() - 30):bad.end() + 10]!r}"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode_under_nbval(path, tmp_path):
    import papermill

    prepared = tmp_path / path.name
    papermill.execute_notebook(str(path), str(prepared), parameters=quick_parameters(path),
                               prepare_only=True, kernel_name="python3", progress_bar=False)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    if "PYTEST_XDIST_WORKER" in os.environ:      # two notebooks share two cores: one thread each
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--nbval-lax", "--nbval-current-env",
         "-p", "no:cacheprovider", "-p", "no:xdist", str(prepared)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{path.name} failed in quick mode:\n{result.stdout[-6000:]}"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_cell_can_be_run_twice_in_a_row(path, tmp_path, monkeypatch):
    """A student presses Shift-Enter on a cell a second time: the cell must run again, in quick mode, from the
    state it left. Catches: 06's resume demo trained into the same run folder on a second run and stopped with
    "already holds checkpoints"; any cell that consumes or deletes what it needs, or asserts on a state it changed."""
    import nbformat
    import papermill
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    prepared = tmp_path / path.name
    papermill.execute_notebook(str(path), str(prepared), parameters=quick_parameters(path),
                               prepare_only=True, kernel_name="python3", progress_bar=False)
    nb = nbformat.read(prepared, as_version=4)
    monkeypatch.setenv("MPLBACKEND", "Agg")               # the kernel inherits it: no window for plt.show()
    client = NotebookClient(nb, kernel_name="python3", timeout=900, resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel():
        if "PYTEST_XDIST_WORKER" in os.environ:           # two notebooks share two cores: one thread each
            client.execute_cell(nbformat.v4.new_code_cell("import torch; torch.set_num_threads(1)"), 0)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            for run in ("first", "second"):
                try:
                    client.execute_cell(cell, i)
                except CellExecutionError as e:
                    pytest.fail(f"{path.name} cell {i} fails on its {run} run:\n{ANSI.sub('', str(e))[-3000:]}")
