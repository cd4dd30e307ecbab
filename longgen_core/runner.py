"""Execute the numbered notebooks headlessly with papermill: the batch path for GPU nodes.

Each notebook gets the parameters it declares in its ``parameters`` cell and no others:
``PRESET`` (when the notebook has it) plus any ``-p NAME VALUE`` override. Executed copies and
logs go to ``--out``; the run stops at the first failing notebook and prints the failing cell's
traceback; a summary table (notebook, preset, status, wall time, device) is written as
``summary.md`` and ``summary.json``. A later run into the same ``--out`` replaces the rows of the
notebooks it runs and keeps the others, so a batch can be split across jobs with a time limit.

The kernels get an environment that works from a plain checkout: relative ``PYTHONPATH`` entries
made absolute (papermill starts each kernel in the notebooks' folder) with the checkout itself in
front, and text progress bars that write a line every ``TQDM_MININTERVAL`` seconds (default 30)
instead of one per step into the stored outputs.

Usage (also ``longgen notebooks ...``)::

    python -m longgen_core.runner --preset gpu-small --out runs/            # every notebook
    python -m longgen_core.runner --out runs/ -p LONG_N 262144 notebooks/01_attention_patterns.ipynb
    python -m longgen_core.runner --in-place                                 # refresh committed copies
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .cli_parser import Parser
from .cli_values import output_folder, parse_value  # the -p VALUE rule (tests use runner.parse_value)
from .paths import notebooks_dir

FIGURE_DIR_ENV = "LONGGEN_FIGURE_DIR"  # where plots.save_figure writes (default: figures/)
NOTEBOOKS_DIR = notebooks_dir()
PROGRESS_INTERVAL_S = "30"  # TQDM_MININTERVAL for the kernels unless the caller set one


def numbered_notebooks(directory: Path = NOTEBOOKS_DIR) -> list[Path]:
    """``NN_name.ipynb`` files of ``directory`` in order."""
    return sorted(p for p in directory.glob("[0-9][0-9]_*.ipynb"))


def parameters_for(notebook: Path, preset: str | None, overrides: dict) -> dict:
    """The overrides this notebook declares in its ``parameters`` cell (others are dropped)."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    wanted = dict(overrides)
    if preset is not None:
        wanted["PRESET"] = preset
    return {k: v for k, v in wanted.items() if k in declared}


def input_problems(notebooks: list[Path], preset: str | None, overrides: dict) -> list[str]:
    """One line per input that would make a run quietly wrong, found before any notebook runs: an
    unknown ``--preset``, or a parameter (``-p NAME``, or ``PRESET``) that no selected notebook
    declares -- :func:`parameters_for` drops it from each notebook, so the run would say "ok"
    without it. A name that only some of the notebooks declare is fine.

    Example (notebook 01 declares ``LONG_N``, not ``STEPS``)::

        >>> input_problems([NOTEBOOKS_DIR / "01_attention_patterns.ipynb"], None, {"STEPS": 5})  # doctest: +ELLIPSIS
        ["-p STEPS: no selected notebook declares it; they declare ['HEAD_DIM', 'LONG_N', ...]"]
    """
    import papermill

    declared = sorted({name for nb in notebooks for name in papermill.inspect_notebook(str(nb))})
    problems = [f"-p {name}: no selected notebook declares it; they declare {declared}"
                for name in overrides if name not in declared]
    if preset is not None:
        # Imported here: the presets pull in torch, which the rest of the runner does without.
        from .train.presets import PRESETS

        if preset not in PRESETS:
            problems.append(f"--preset {preset}: unknown preset; presets are {sorted(PRESETS)}")
        elif "PRESET" not in declared:
            problems.append(f"--preset {preset}: no selected notebook declares PRESET")
    return problems


def run_notebooks(notebooks: list[Path], out: Path | None, preset: str | None = None,
                  overrides: dict | None = None, timeout: int | None = None) -> list[dict]:
    """Execute ``notebooks`` in order; stop at the first failure. Returns the summary rows.

    ``out=None`` executes in place (the committed copies, figures into ``figures/``); otherwise
    into ``out/``, with a log per notebook and the figures the notebooks save in ``out/figures``
    (unless ``$LONGGEN_FIGURE_DIR`` says where), so a run leaves the checkout as it was.
    """
    saved = dict(os.environ)
    os.environ.update(kernel_environment(os.environ))
    if out is not None and not os.environ.get(FIGURE_DIR_ENV):
        # absolute: the kernels run in the notebooks' folder and inherit this environment
        os.environ[FIGURE_DIR_ENV] = str((out / "figures").resolve())
    try:
        return _run_each(notebooks, out, preset, overrides, timeout)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def kernel_environment(environ) -> dict:
    """The variables the notebook kernels need on top of ``environ`` (module doc): ``PYTHONPATH``
    with relative entries made absolute and, in a source checkout, the checkout first (so that
    ``import longgen_core`` works without an install); ``TQDM_MININTERVAL`` unless set.

    Example::

        >>> env = kernel_environment({"PYTHONPATH": "lib", "TQDM_MININTERVAL": "5"})
        >>> env["PYTHONPATH"].endswith(str(Path("lib").resolve())), env["TQDM_MININTERVAL"]
        (True, '5')
    """
    from .paths import checkout_dir

    entries = [str(Path(e).resolve()) for e in environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    checkout = checkout_dir()
    if checkout is not None:
        entries.insert(0, str(checkout))
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(entries))} if entries else {}
    env["TQDM_MININTERVAL"] = environ.get("TQDM_MININTERVAL", PROGRESS_INTERVAL_S)
    return env


def _run_each(notebooks, out, preset, overrides, timeout) -> list[dict]:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    rows, device = [], _device_name()
    for nb in notebooks:
        target = nb if out is None else out / nb.name
        params = parameters_for(nb, preset, overrides or {})
        print(f"== {nb.name}  parameters={params}", flush=True)
        start = time.perf_counter()
        status, error = "ok", None
        log_path = None if out is None else out / f"{nb.stem}.log"
        try:
            with _tee_to(log_path):
                papermill.execute_notebook(str(nb), str(target), parameters=params, cwd=str(nb.parent),
                                           log_output=True, progress_bar=False,
                                           execution_timeout=timeout)
        except PapermillExecutionError as exc:
            status = "failed"
            error = f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n" + "\n".join(exc.traceback)
        if out is None:
            _drop_machine_paths(nb)
        rows.append({"notebook": nb.name, "preset": preset or "default", "status": status,
                     "wall_s": round(time.perf_counter() - start, 1), "device": device})
        if error is not None:
            print(f"\n!! {nb.name} failed at {error}", file=sys.stderr)
            break
    if out is not None:
        write_summary(rows, out)
    print(summary_table(rows))
    return rows


def _device_name() -> str:
    """The GPU the notebooks see (``torch.cuda``), else ``"cpu"``: recorded in every summary row."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def _drop_machine_paths(path: Path) -> None:
    """Papermill records the absolute input and output paths in the notebook's metadata; a
    committed copy (an in-place run) keeps them relative to the repository instead."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    record = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if record.get(key):
            record[key] = f"notebooks/{path.name}"
    nbformat.write(nb, path)


def summary_table(rows: list[dict]) -> str:
    """Markdown table of the summary rows."""
    lines = ["| notebook | preset | status | wall time (s) | device |", "|---|---|---|---|---|"]
    lines += [f"| {r['notebook']} | {r['preset']} | {r['status']} | {r['wall_s']} | {r.get('device', '')} |"
              for r in rows]
    return "\n".join(lines)


def write_summary(rows: list[dict], out: Path) -> None:
    """``out/summary.json`` and ``summary.md``: ``rows``, plus the rows an earlier run into ``out``
    wrote for other notebooks (module doc), in notebook order."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    ran = {r["notebook"] for r in rows}
    earlier = [r for r in json.loads(path.read_text()) if r["notebook"] not in ran] if path.exists() else []
    merged = sorted(earlier + rows, key=lambda r: r["notebook"])
    path.write_text(json.dumps(merged, indent=2) + "\n")
    (out / "summary.md").write_text(summary_table(merged) + "\n")


class _tee_to:
    """Copy stdout/stderr of the block to ``path`` too (no-op for ``None``)."""

    def __init__(self, path: Path | None):
        self.path = path

    def __enter__(self):
        if self.path is None:
            return self
        import logging

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.path, mode="w")
        self.handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger("papermill").addHandler(self.handler)
        logging.getLogger("papermill").setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        if self.path is not None:
            import logging

            logging.getLogger("papermill").removeHandler(self.handler)
            self.handler.close()
        return False


def main(argv: list[str] | None = None, prog: str = "python -m longgen_core.runner") -> int:
    """Execute the notebooks ``argv`` selects; 0 when all ran, 1 at a failing one, 2 for bad arguments."""
    parser = Parser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every numbered notebook")
    parser.add_argument("--preset", default=None, help="passed as PRESET to notebooks that declare it")
    parser.add_argument("--out", type=output_folder, default=None, metavar="DIR",
                        help="the folder to write the executed copies, logs and summary into (created if missing)")
    parser.add_argument("--in-place", action="store_true", help="overwrite the notebooks themselves")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a notebook parameter; VALUE as JSON or a Python literal, else the text")
    parser.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    args = parser.parse_args(argv)
    if (args.out is None) == (not args.in_place):
        parser.error("give exactly one of --out DIR or --in-place")
    notebooks = args.notebooks or numbered_notebooks()
    for nb in notebooks:
        if not nb.exists():
            parser.error(f"notebook not found: {nb}")
    overrides = {name: parse_value(value) for name, value in args.parameter}
    problems = input_problems(notebooks, args.preset, overrides)
    if problems:
        parser.error("\n".join(problems))
    rows = run_notebooks(notebooks, None if args.in_place else args.out, args.preset, overrides, args.timeout)
    return 0 if all(r["status"] == "ok" for r in rows) and len(rows) == len(notebooks) else 1


if __name__ == "__main__":
    sys.exit(main())
