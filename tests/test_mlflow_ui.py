"""The experiment record in a browser: two real runs, ``mlflow ui``, headless Chromium.

Trains two short runs (skip-filter and DAE) into one MLflow store, serves it with the venv's ``mlflow ui`` on a
free loopback port, opens the experiment's runs table in Debian's ``chromium`` driven by Playwright (its
``executable_path``; ``playwright install`` is never needed), shows the ``val/sdr`` column through the table's
"Columns" picker (as a researcher does: MLflow 3.17 shows no metric columns by default), checks that both runs and
their ``val/sdr`` values are in the table, and saves a full-page screenshot (also to ``$LIGHTNING_SEP_SCREENSHOTS``).

Skipped, with the reason, only where Chromium or the ``playwright`` package is missing (``make browser`` installs
Debian's ``chromium`` when apt and root are there).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import free_port, http_server, one_torch_thread, train_tiny

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

METRIC = "val/sdr"
# small STFT: each run trains in seconds (as tests/test_nca.py)
TINY = ("--data.retained_bins", "24", "--data.n_fft", "256", "--data.win_length", "256", "--data.hop_length", "128")
SERVER_START_TIMEOUT = 120.0  # s; mlflow ui imports a lot and runs its migrations first (about 15 s on 2 cores)
UI_TIMEOUT_MS = 90_000  # the single-page app's first render on a loaded 2-core machine


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    yield from one_torch_thread()


def chromium_executable() -> str:
    """Debian's ``chromium`` (or skip, saying how to install it)."""
    found = shutil.which("chromium") or next((p for p in ("/usr/bin/chromium",) if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium, or `make browser`): "
                    "no `chromium` on PATH and no /usr/bin/chromium")
    return found


@pytest.fixture(scope="module")
def browser_executable() -> str:
    """The browser's path, once playwright imports; checked before any training, so a skip costs nothing."""
    executable = chromium_executable()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the playwright package cannot be imported ({exc}); pip install -e '.[dev]'")
    return executable


@pytest.fixture(scope="module")
def experiment(browser_executable, tmp_path_factory, data_home):
    """Two real one-epoch runs (skip-filter, DAE) in one store: ``SimpleNamespace(uri, experiment_id, runs)``,
    ``runs`` a list of ``SimpleNamespace(run_id, name, sdr)`` with each run's latest ``val/sdr``."""
    from mlflow.tracking import MlflowClient

    base = tmp_path_factory.mktemp("mlflow_ui")
    trained = [train_tiny(base, data_home, model, *TINY) for model in ("skipfilter", "dae")]
    client = MlflowClient(trained[0].uri)
    runs = []
    for t in trained:
        run = client.get_run(t.run_id)
        assert METRIC in run.data.metrics, f"run {t.run_id} logged no {METRIC}: {sorted(run.data.metrics)}"
        runs.append(SimpleNamespace(run_id=t.run_id, name=run.info.run_name, sdr=run.data.metrics[METRIC],
                                    experiment_id=run.info.experiment_id))
    assert runs[0].experiment_id == runs[1].experiment_id, "both runs belong to one experiment"
    # every run is named after its family, and no two alike (the seeded global RNG once named every run the same)
    assert runs[0].name.startswith("skipfilter-") and runs[1].name.startswith("dae-"), [r.name for r in runs]
    assert runs[0].name.split("-", 1)[1] != runs[1].name.split("-", 1)[1]
    return SimpleNamespace(uri=trained[0].uri, experiment_id=runs[0].experiment_id, runs=runs, base=base)


def mlflow_command() -> list[str]:
    script = Path(sys.executable).with_name("mlflow")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mlflow"]


@pytest.fixture(scope="module")
def mlflow_ui(experiment):
    """``mlflow ui`` on the runs' store at a free loopback port; yields its base URL, always stopped at the end."""
    port = free_port()
    cmd = [*mlflow_command(), "ui", "--backend-store-uri", experiment.uri, "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    with http_server(cmd, experiment.base / "mlflow-ui.log", port, env, timeout=SERVER_START_TIMEOUT) as url:
        yield url


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def shown_matches(text: str, value: float) -> bool:
    """The UI's text for a metric is ``value`` to the precision it shows (MLflow 3.17 shows the full double,
    e.g. ``-0.2345678899999999``; a rounding UI would show fewer decimals)."""
    text = text.strip().replace("\u2212", "-")
    try:
        shown = float(text)
    except ValueError:
        return False
    decimals = len(text.split(".", 1)[1]) if "." in text and "e" not in text.lower() else 0
    if decimals < 1 and shown != value:  # a value rounded to an integer says little about the run
        return False
    return abs(shown - value) <= 0.5 * 10.0 ** -decimals + 1e-9 * max(1.0, abs(value))


def test_experiment_page_shows_both_runs_and_their_sdr(experiment, mlflow_ui, browser_executable, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    # MLflow 3 opens an experiment on its GenAI overview; the "Model training" runs table is
    # .../runs?workflowType=machine_learning (what the "Model training" switch and "Runs" link lead to)
    page_url = f"{mlflow_ui}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
    metric_col = f'[col-id="metrics.`{METRIC}`"]'
    name_col = '[col-id="attributes.`Run Name`"]'
    shot = tmp_path / "mlflow-ui-experiment.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_executable, headless=True, args=["--no-sandbox"])
        page = None
        try:
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.goto(page_url)
            # ag-grid rows carry the run id as row-id (the grid repeats a row in its pinned and centre containers)
            rows = {r.run_id: page.locator(f'[role="row"][row-id="{r.run_id}"]') for r in experiment.runs}
            for run in experiment.runs:  # the name cell: a colour swatch, then the name as a link to the run's page
                link = rows[run.run_id].locator(name_col).get_by_role("link")
                expect(link).to_have_text(run.name, timeout=UI_TIMEOUT_MS)
                expect(link).to_have_attribute("href", re.compile(f"/runs/{run.run_id}$"))
            # the assistant side panel takes a third of the width: close it when it is there (not part of the check)
            close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
            if close.count() and close.first.is_visible():
                close.first.click()
            # no metric columns by default: tick val/sdr in the "Columns" picker (an antd tree), then close it
            page.get_by_role("button", name="Columns").click()
            page.locator(f'[title="{METRIC}"]').first.click()
            page.keyboard.press("Escape")
            for run in experiment.runs:
                cell = rows[run.run_id].locator(metric_col)
                expect(cell).to_have_text(re.compile(r"\d"), timeout=UI_TIMEOUT_MS)  # a number, not "-" or empty
                cell.scroll_into_view_if_needed()
                text = cell.inner_text().strip()
                assert shown_matches(text, run.sdr), (
                    f"run {run.name} ({run.run_id}): the table shows {METRIC} = {text!r}, MLflow has {run.sdr!r}")
            header = page.locator(f'.ag-header-cell{metric_col}')
            expect(header.first).to_contain_text(METRIC)
            # the column is 100 px wide and elides long values ("-0.282824..."): widen it to fit (ag-grid's
            # double-click on the header's resize handle), so the screenshot shows the values in full
            header.first.locator(".ag-header-cell-resize").dblclick()
            page.wait_for_function(
                """sel => { const cells = [...document.querySelectorAll(sel)];
                            return cells.length > 0 && cells.every(c => c.scrollWidth <= c.clientWidth); }""",
                arg=f'[role="row"] {metric_col} .ag-cell-value')
            page.wait_for_timeout(500)  # let the column finish laying out before the picture
            page.screenshot(path=str(shot), full_page=True)
        except Exception:
            if page is not None:  # what the browser showed when the check failed, for the report
                failure = tmp_path / "mlflow-ui-failure.png"
                try:
                    page.screenshot(path=str(failure), full_page=True)
                    print(f"screenshot of the failure: {failure}")
                except Exception:
                    pass
            raise
        finally:
            browser.close()

    assert shot.is_file() and shot.stat().st_size > 10_000, f"screenshot {shot} is missing or nearly empty"
    width, height = png_size(shot)
    assert width >= 1920 and height >= 1080, f"screenshot is {width}x{height}"
    if os.environ.get("LIGHTNING_SEP_SCREENSHOTS"):
        out = Path(os.environ["LIGHTNING_SEP_SCREENSHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(shot, out / shot.name)
