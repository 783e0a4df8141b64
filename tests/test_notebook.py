"""GLM-examples.ipynb: committed without outputs, and runs top to bottom on a fresh clone (no ../shared)."""

import json
import shutil
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "GLM-examples.ipynb"


def cell_text(cell):
    return "".join(output.get("text", "") for output in cell.outputs if output.output_type == "stream")


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(REPO / NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_notebook_runs_top_to_bottom_on_a_fresh_clone(tmp_path, monkeypatch):
    # The copy's parent (tmp_path) has no shared/ folder: the notebook must train its own BPE.
    clone = tmp_path / "repo"
    shutil.copytree(REPO / "prompts", clone / "prompts")
    for path in REPO.glob("*.py"):
        shutil.copy(path, clone)
    shutil.copy(REPO / NOTEBOOK, clone)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel inherits it: one thread, as conftest gives tests
    notebook = nbformat.read(clone / NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(clone)}}).execute()

    code = {cell.source.splitlines()[0]: cell_text(cell) for cell in notebook.cells if cell.cell_type == "code"}
    assert "8003 tokens" in code["if USE_HUB_MODEL:"]  # the offline BPE: 8000 tokens + sop, eop, [MASK]
    # Figure 1 for "The soup was hot and the bread was fresh.", spans "hot and" then "fresh" (tokens 3-4, 8):
    # Part A  <s> The soup was [M] the bread was [M] . </s>, Part B  [S] hot and, [S] fresh.
    table = [line.split() for line in code[next(c for c in code if "The soup was hot" in c)].splitlines()]
    assert table[2] == ["position", *map(str, range(11)), "4", "4", "4", "8", "8"]
    assert table[3] == ["block", "position", *["0"] * 11, "1", "2", "3", "1", "2"]
    figures = clone / "runs" / "notebook"
    assert sorted(p.name for p in figures.glob("*.png")) == [
        "figure1_blank_infilling.png", "figure2a_cloze.png", "fine_tuning.png", "scores_before.png"]
    results = json.loads((figures / "fine_foods" / "results.json").read_text())
    assert results["prompt_name"] == "overall_verdict" and results["test"]["accuracy"] is not None
