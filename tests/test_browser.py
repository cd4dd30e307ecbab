"""The user's journey in a real browser: JupyterLab + headless Chromium run a notebook's cells.

Starts JupyterLab on 127.0.0.1 with a token, drives Debian's Chromium through Playwright, opens
each notebook listed below, runs all cells through the Run menu, and checks that no cell shows
a traceback and that a figure rendered; saves a screenshot to runs/screenshots/ (git-ignored, so
`make test` leaves the checkout clean; set LONGGEN_SCREENSHOT_DIR=figures to refresh the README's).

Skipped when /usr/bin/chromium or the ``playwright`` package is missing (``apt-get install
chromium`` provides the browser; Playwright's own browser download is never used).
Run alone with ``make test-browser``.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(os.environ.get("LONGGEN_SCREENSHOT_DIR") or ROOT / "runs" / "screenshots")
NOTEBOOKS = ["01_attention_patterns.ipynb", "03_hybrid_conversion.ipynb", "06_efficiency.ipynb"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
    pytest.mark.browser,
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """A JupyterLab server over a scratch copy of the notebooks; yields (base_url, token)."""
    scratch = tmp_path_factory.mktemp("lab")
    work = scratch / "notebooks"
    work.mkdir()
    for name in NOTEBOOKS:
        # run copies without outputs: autosave never touches the committed notebooks, and every
        # numbered prompt and figure seen later comes from this run
        nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(nb, work / name)
    # render every cell (JupyterLab 4 otherwise virtualises cells scrolled out of view)
    tracker = scratch / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    news = scratch / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false"}))  # no news pop-up over the screenshot
    port, token = free_port(), uuid.uuid4().hex
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(scratch / "config"), JUPYTER_RUNTIME_DIR=str(scratch / "rt"),
               JUPYTERLAB_SETTINGS_DIR=str(scratch / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(scratch / "workspaces"))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
           f"--FileCheckpoints.checkpoint_dir={scratch / 'checkpoints'}"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(scratch / "jupyterlab.log", "w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"JupyterLab exited: {(scratch / 'jupyterlab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not answer within 60 s")
        yield base, token
    finally:
        try:
            request = urllib.request.Request(f"{base}/api/shutdown", method="POST",
                                             headers={"Authorization": f"token {token}"})
            urllib.request.urlopen(request, timeout=5)
            server.wait(timeout=20)
        except Exception:
            server.kill()
        log.close()


def wait_for(condition, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(1)
    return False


def is_numbered(prompt: str) -> bool:
    prompt = prompt.strip()  # "[12]:" once executed, "[*]:" while running, "[ ]:" never run
    return prompt.startswith("[") and prompt.endswith("]:") and prompt[1:-2].isdigit()


def accept_kernel_dialog(page, idle_selector: str) -> None:
    """A fresh workspace may ask which kernel to start: take the proposed one."""
    try:
        page.wait_for_selector(".jp-Dialog", timeout=3000)
    except Exception:
        return
    page.locator(".jp-Dialog button", has_text="Select").first.click()
    page.wait_for_selector(idle_selector, timeout=90_000)


def run_all_cells(page) -> None:
    """Run > Run All Cells (no default shortcut; the toolbar's button would restart first)."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_runs_in_jupyterlab(jupyterlab, notebook):
    sync_api = pytest.importorskip("playwright.sync_api")
    SHOTS.mkdir(parents=True, exist_ok=True)
    base, token = jupyterlab
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        workspace = f"test-{uuid.uuid4().hex[:8]}"
        page.goto(f"{base}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={token}")
        idle = '.jp-Notebook-ExecutionIndicator[data-status="idle"]'
        page.wait_for_selector(idle, timeout=90_000)
        accept_kernel_dialog(page, idle)
        assert page.locator(".jp-RenderedImage img").count() == 0, "outputs were not cleared"
        prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt")
        for attempt in range(2):  # a late kernel dialog can swallow the first click
            run_all_cells(page)
            if wait_for(lambda: any(t.strip() not in ("", "[ ]:") for t in prompts.all_inner_texts()), 30):
                break
            accept_kernel_dialog(page, idle)
        finished = wait_for(lambda: all(is_numbered(t) for t in prompts.all_inner_texts())
                            and page.locator(idle).count() > 0, 240)
        if not finished:
            page.screenshot(path=str(SHOTS / "jupyterlab_failure.png"))
            pytest.fail(f"cells did not all finish: prompts {prompts.all_inner_texts()}")
        stderr = page.locator('[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
        tracebacks = [t for t in stderr if "Traceback" in t or "Error" in (t.splitlines() or [""])[0]]
        assert not tracebacks, tracebacks[0][:2000]
        images = page.locator(".jp-RenderedImage img")
        assert images.count() >= 1, "no figure rendered"
        images.nth(min(2, images.count() - 1)).scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / f"jupyterlab_{Path(notebook).stem}.png"))
        browser.close()
