"""The package as a user installs it: the wheel built from the tracked files carries its licence,
its dependencies and its extras, installs into a fresh virtualenv, runs its command line there,
and keeps its folders (runs/, data/, figures/) in the current directory instead of beside
site-packages. Also the folder rule of :mod:`longgen_core.paths` in a checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from longgen_core import paths

ROOT = Path(__file__).resolve().parent.parent


def _tracked(*names: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", *names], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built (no build isolation: offline) from a copy of the tracked files."""
    src = tmp_path_factory.mktemp("src")
    for name in _tracked("pyproject.toml", "README.md", "LICENSE", "longgen_core"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(src)], check=True, capture_output=True)
    (built,) = dist.glob("longgen_core-*.whl")
    return built


def test_the_wheel_carries_licence_dependencies_and_extras(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "longgen_core/paths.py" in names and "longgen_core/kernels/forward.py" in names
    assert not any(n.startswith(("tests/", "notebooks/", "figures/")) for n in names)
    requires = [line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    for package in ("torch", "transformers", "accelerate", "datasets", "safetensors", "matplotlib"):
        assert any(r.startswith(package) and "extra ==" not in r for r in requires), package
    assert {"notebooks", "setup", "test"} <= {line.split(": ")[1] for line in metadata.splitlines()
                                              if line.startswith("Provides-Extra: ")}
    assert "License-Expression: Apache-2.0" in metadata


def test_the_wheel_installs_into_a_fresh_venv_and_works_from_the_current_directory(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True)
    # the dependencies (torch, ...) come from this test's environment, after the venv's own
    # site-packages, so the installed copy of longgen_core is the one imported
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LONGGEN_")}
    probe = ("import longgen_core, longgen_core.paths as p, longgen_core.models.base as b\n"
             "print(longgen_core.__file__); print(p.in_checkout()); print(p.runs_dir()); print(b.data_dir())")
    out = subprocess.run([str(python), "-c", probe], cwd=work, env=env, capture_output=True, text=True, check=True)
    package_file, in_checkout, runs, data = out.stdout.split()
    assert Path(package_file).is_relative_to(env_dir) and in_checkout == "False"
    assert Path(runs) == work / "runs" and Path(data) == work / "data"
    for command, expected in ((["--help"], "train"), (["train", "--help"], "--preset"),
                              (["report", "--help"], "--check")):
        cli = subprocess.run([str(env_dir / "bin" / "longgen"), *command], cwd=work, env=env,
                             capture_output=True, text=True)  # the console script of the wheel
        assert cli.returncode == 0 and expected in cli.stdout, cli.stderr[-2000:]
    assert sorted(p.name for p in work.iterdir()) == []  # --help wrote nothing


def test_a_checkout_keeps_its_own_folders_and_the_environment_moves_them(monkeypatch, tmp_path):
    for name in ("LONGGEN_HOME", "LONGGEN_DATA_DIR", "LONGGEN_RUNS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # not the checkout: still the checkout's folders
    assert paths.in_checkout() and paths.project_dir() == ROOT
    assert paths.runs_dir() == ROOT / "runs" and paths.notebooks_dir() == ROOT / "notebooks"
    monkeypatch.setenv("LONGGEN_HOME", str(tmp_path / "home"))
    assert paths.figures_dir() == tmp_path / "home" / "figures"
    monkeypatch.setenv("LONGGEN_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("LONGGEN_RUNS_DIR", str(tmp_path / "r"))
    assert (paths.data_dir(), paths.runs_dir()) == (tmp_path / "d", tmp_path / "r")
