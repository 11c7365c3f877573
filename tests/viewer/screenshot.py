"""Make ``docs/viewer.png``: the scenario's run, rendered, in headless Chromium at 1400x1000.

Run from the repository root: ``uv run python -m tests.viewer.screenshot docs/viewer.png``. The
first two root steps are folded so that the picture shows batched children side by side.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import trio

from rlm_host.viewer import render_trajectory
from tests.viewer.browser import Browser, chromium_path
from tests.viewer.scenario import run_scenario


def main(output: Path) -> None:
    executable = chromium_path()
    if executable is None:
        raise SystemExit("chromium is not installed")
    with tempfile.TemporaryDirectory() as folder:
        trajectory = Path(folder) / "run.jsonl"
        trio.run(run_scenario, trajectory)
        page_path = Path(folder) / "run.html"
        render_trajectory(trajectory, page_path)
        with Browser.launch(executable) as browser:
            page = browser.open_page(page_path.as_uri())
            page.send("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
            page.evaluate(
                "document.querySelectorAll('#rlm-0 > .rlm-body > .step').forEach((d) => { d.open = +d.dataset.step > 2; });"
                "document.querySelector('.source').textContent = 'run.jsonl';"
                "drawTimeline();"
            )
            png = page.screenshot(1400, 1000)
            if page.errors():
                raise SystemExit(f"the page logged errors: {page.errors()}")
    output.write_bytes(png)
    print(output)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/viewer.png"))
