"""binder/ must stand alone and stay consistent with the root requirements.txt."""

import re
from pathlib import Path

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
