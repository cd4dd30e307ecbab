"""binder/ must stand alone and stay consistent with the root requirements.txt."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"


def pins(path: Path) -> dict[str, str]:
    """Package name -> version spec ('' when unpinned), skipping comments and pip options."""
    result = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        name, _, version = re.match(r"([A-Za-z0-9_.\-]+)\s*(==)?\s*(.*)", line).groups()
        result[name.lower()] = version
    return result


def test_binder_pins_match_the_root_requirements_apart_from_torch_source():
    root, binder = pins(ROOT / "requirements.txt"), pins(BINDER / "requirements.txt")
    assert set(root) == set(binder)
    for name in root:
        if name == "torch":
            assert binder[name].split("+")[0] == root[name], "same torch version, CPU build"
            assert binder[name].endswith("+cpu")
        else:
            assert binder[name] == root[name], name


def test_binder_scripts():
    post_build = (BINDER / "postBuild").read_text().splitlines()
    assert post_build[0] == "#!/bin/bash" and "set -e" in post_build
    assert any("pip install" in line and "-e ." in line for line in post_build)
    start = (BINDER / "start").read_text().strip().splitlines()
    assert start[0] == "#!/bin/bash"
    assert "export TRITON_INTERPRET=1" in start
    assert start[-1] == 'exec "$@"'
    for script in ("postBuild", "start"):
        assert (BINDER / script).stat().st_mode & 0o111, f"{script} must be executable"
    assert re.fullmatch(r"python-3\.\d+", (BINDER / "runtime.txt").read_text().strip())


# Notebooks executed in Binder's environment: the ones that depend on what binder/ itself sets up --
# 02 on binder/start's TRITON_INTERPRET=1 (its kernels run through Triton's interpreter), 03 on the
# SmolLM2 checkpoint that binder/postBuild makes. The nbval run of `make test` executes every
# notebook under the same pins (binder/requirements.txt = requirements.txt with CPU torch, which
# the first test above checks), so running all of them here again only doubled CI time.
BINDER_DEMO = ["02_triton_sparse_kernel.ipynb", "03_hybrid_conversion.ipynb"]


@pytest.mark.slow
def test_binder_environment_builds_and_runs_the_demo(tmp_path):
    """A fresh virtualenv from binder/ alone: its requirements, then postBuild, then the demo
    notebooks executed under ``binder/start`` (which sets Binder's environment)."""
    venv = tmp_path / "binder-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = dict(os.environ, PATH=f"{venv / 'bin'}:{os.environ['PATH']}", VIRTUAL_ENV=str(venv))
    env.pop("TRITON_INTERPRET", None)  # must come from binder/start
    # --retries 0: where the CPU wheel index is unreachable (as on our CI), fall through at once
    run = lambda *cmd: subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)  # noqa: E731
    run("python", "-m", "pip", "install", "-q", "--retries", "0", "-r", "binder/requirements.txt")
    run("bash", "binder/postBuild")
    probe = run(str(BINDER / "start"), "python", "-c",
                "import os, torch, longgen_core; print(os.environ['TRITON_INTERPRET'], torch.__version__, "
                "longgen_core.__file__)")
    interpret, torch_version, package = probe.stdout.split()
    assert interpret == "1" and torch_version.endswith("+cpu")
    assert Path(package).resolve().is_relative_to(ROOT)
    for name in BINDER_DEMO:
        run(str(BINDER / "start"), "python", "-m", "papermill", "--cwd", "notebooks", f"notebooks/{name}",
            str(tmp_path / name), "-p", "SAVE_FIGURES", "False", "-p", "RUN_DIR", str(tmp_path / "runs"))
        assert (tmp_path / name).exists()
