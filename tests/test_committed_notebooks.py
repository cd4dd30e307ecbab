"""The executed notebooks as committed: what a reader opening them sees must be clean and current --
no errors or tracebacks, no warnings, no paths of the machine that ran them, progress bars as a
widget rather than a stream of text lines, and a small file."""

import json
import re

import pytest

from longgen_core.runner import numbered_notebooks

NOTEBOOKS = numbered_notebooks()
MACHINE_PATH = re.compile(r"(/work/|/root/|/home/|/tmp/|site-packages|[A-Z]:\\\\Users)")


def _outputs(nb):
    return [(i, o) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" for o in c.get("outputs", [])]


def _text(output) -> str:
    text = output.get("text", "")
    data = output.get("data", {})
    return "".join(text) + "".join(data.get("text/plain", "")) + "".join(output.get("traceback", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_outputs_are_clean(path):
    nb = json.loads(path.read_text())
    problems = []
    for i, output in _outputs(nb):
        text = _text(output)
        if output["output_type"] == "error" or "Traceback" in text:
            problems.append(f"cell {i}: an error or traceback")
        if "Warning" in text:
            problems.append(f"cell {i}: a warning: {text[:120]!r}")
        if MACHINE_PATH.search(text):
            problems.append(f"cell {i}: a machine path: {MACHINE_PATH.search(text).group(0)!r}")
    if MACHINE_PATH.search(json.dumps(nb["metadata"])):
        problems.append("notebook metadata holds a machine path")
    streams = sum(1 for _, o in _outputs(nb) if o.get("name") == "stderr")
    if streams > 3:  # a text progress bar leaves one output per update
        problems.append(f"{streams} stderr outputs (progress bars as text?)")
    if path.stat().st_size > 3 * 2**20:
        problems.append(f"{path.stat().st_size / 2**20:.1f} MB")
    assert not problems, f"{path.name}: " + "; ".join(problems) + " -- re-execute it with `make refresh`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_the_first_cell_says_what_you_learn_how_long_it_takes_and_where_to_run_it(path):
    nb = json.loads(path.read_text())
    first = "".join(nb["cells"][0]["source"])
    assert nb["cells"][0]["cell_type"] == "markdown" and first.startswith(f"# {path.name[:2]} ·")
    assert "**What you will learn**" in first and "**Time**" in first
    assert f"https://mybinder.org/v2/gh/<owner>/<repo>/HEAD?labpath=notebooks%2F{path.name}" in first


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_the_files_a_notebook_points_to_exist(path):
    """Every ``longgen_core/...`` path written in a markdown cell names a file or folder of the repository."""
    root = path.parent.parent
    named = {m.rstrip("/.,") for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"
             for m in re.findall(r"longgen_core/[\w/.]+", "".join(c["source"]))}
    assert [p for p in sorted(named) if not (root / p).exists()] == []
