"""study.html at zoo scale, in headless Chromium on this machine's CPU; and the committed studies' pages redrawn.

    python bench/study_page.py measure [--rows 1500] [--repeat 3]   -> bench/results/study_page.json
    python bench/study_page.py regenerate bench/results/study_lite   -> its study.html from its study.json, study.png
    python bench/study_page.py regenerate STUDY_DIR --copy-to bench/results/study_page_200
                                    -> STUDY_DIR's page redrawn and checked with its cells; the copy: study.json,
                                       .md, .csv, a page drawn there, study.png and page_check.json

``measure`` assembles a study of ``--rows`` models from made-up cell results (tests/synthetic_study.py: a native
and an ONNX cell each, a diagnose cell for every tenth, each cell's folder holding a page so every row carries its
links) and reports the page's size, and in the browser: the load event, the page script's own time to draw the
table (its first page of rows) and the plots, and the time of a click on a column header (sort, redraw), of typing
a filter and clearing it, of the next page and of showing all rows at once, medians of ``--repeat`` fresh loads
(each action timed with the layout it causes; the load event's time counts from the navigation's start).

``regenerate`` redraws a study's page from its study.json (no cell is run again; cells whose folders are absent get
no link) and opens it: no console error, nothing requested, every model's row drawn, every link on it leading to a
file that exists. ``--copy-to`` copies the study's tables (not its cells' folders: a 200-cell study's pages weigh
megabytes) to a folder of its own, draws the page there (without the links, whose targets stay behind) and writes
``page_check.json``: what the check of the page beside its cells found. Screenshots are made by the same headless
Chromium.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the browser driver and the made-up study are the tests' own

from browser import CHROMIUM, Browser  # noqa: E402
from synthetic_study import synthetic_study  # noqa: E402

from xfverify.evaluator.reports.study import StudyReport, cell_pages, html_page  # noqa: E402

RESULT = ROOT / "bench" / "results" / "study_page.json"
SORT = "[...document.querySelectorAll('#study-table th')].find(th => th.textContent === {label!r})"


def _timed(browser: Browser, action: str) -> float:
    """Milliseconds the page takes to run ``action`` (its handlers redraw synchronously) and lay the page out again."""
    return browser.js(f"(() => {{const t = performance.now(); {action}; document.body.getBoundingClientRect(); "
                      "return performance.now() - t})()")


def _type(text: str) -> str:
    return (f"const box = document.getElementById('filter'); box.value = {json.dumps(text)}; "
            "box.dispatchEvent(new Event('input'))")


def measure(rows: int, repeat: int) -> dict:
    from xfverify.evaluator.system.devices import cpu_name

    load_before = round(os.getloadavg()[0], 2)  # the machine is shared: what else ran is part of the figure
    with tempfile.TemporaryDirectory(prefix="xfverify-study-page-") as scratch:
        folder = Path(scratch)
        report = synthetic_study(rows, folder)
        started = time.perf_counter()
        text = html_page(report, cell_pages(report, folder))
        write_s = time.perf_counter() - started
        page = folder / "study.html"
        page.write_text(text)
        runs = []
        with Browser(1280, 900, timeout=120) as browser:
            for _ in range(repeat):
                browser.open(page)
                timing = browser.js("(() => {const n = performance.getEntriesByType('navigation')[0]; "
                                    "return [n.domContentLoadedEventEnd, n.loadEventEnd]})()")
                problems = browser.errors() + browser.requests()
                shown = browser.js("document.getElementById('shown').textContent")
                if problems or not shown.endswith(f"{rows} of {rows} models shown"):
                    raise SystemExit(f"the page is broken: {problems}, {shown!r}")
                runs.append({
                    "dom_content_loaded_ms": round(timing[0], 1), "load_event_ms": round(timing[1], 1),
                    "script_ms": float(browser.js("document.body.dataset.renderMs")),
                    "sort_click_ms": round(_timed(browser, SORT.format(label="published %") + ".click()"), 1),
                    "sort_again_ms": round(_timed(browser, SORT.format(label="published %") + ".click()"), 1),
                    "filter_ms": round(_timed(browser, _type("resnet")), 1),
                    "rows_after_filter": browser.js("document.querySelectorAll('#study-table tbody tr').length"),
                    "clear_filter_ms": round(_timed(browser, _type("")), 1),
                    "next_page_ms": round(_timed(browser, "document.getElementById('next').click()"), 1),
                    "all_rows_ms": round(_timed(browser, "document.getElementById('all').click()"), 1),
                    "rows_in_table_after_all": browser.js("document.querySelectorAll('#study-table tbody tr').length"),
                })
    version = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "what": f"study.html of {rows} models ({len(report.cells)} cells) assembled from made-up cell results, "
                "opened from a file in headless Chromium; medians of fresh loads",
        "rows": rows, "cells": len(report.cells), "repeat": repeat,
        "page_bytes": len(text.encode()), "page_gzip_bytes": len(gzip.compress(text.encode())),
        "write_page_s": round(write_s, 3),
        "median": {key: round(statistics.median(run[key] for run in runs), 1) for key in runs[0]},
        "runs": runs, "browser": version, "cpu": cpu_name(), "cores": os.cpu_count(),
        "load_average_1min": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        "command": f"python bench/study_page.py measure --rows {rows} --repeat {repeat}",
    }


def check_page(browser: Browser, page: Path, report: StudyReport) -> dict:
    """Open the page as a user would; what it logged and asked for, its rows, and where each of its links leads
    (every one must be a file that exists: the same check as tests/test_pages.py's). Raises on any problem."""
    browser.open(page)
    browser.js("document.getElementById('all') && document.getElementById('all').click()")  # every row drawn
    errors, requests = browser.errors(), browser.requests()
    rows = browser.js("document.querySelectorAll('#study-table tbody tr').length")
    hrefs = browser.js("[...new Set([...document.querySelectorAll('a[href]')]"
                       ".map(a => new URL(a.getAttribute('href'), document.baseURI).href))]")
    missing = [href for href in hrefs
               if urlparse(href).scheme != "file" or not Path(unquote(urlparse(href).path)).is_file()]
    models = len({cell.model for cell in report.cells})
    pages = cell_pages(report, page.parent)  # each finished cell whose folder is there has a page to link to
    linked = {href for href in hrefs if "/cells/" in href}
    if errors or requests or missing or rows != models or len(linked) != len(pages):
        raise SystemExit(f"{page}: console errors {errors}, requests {requests}, links to nothing {missing[:5]}, "
                         f"{rows} rows for {models} models, {len(linked)} links to {len(pages)} cells' pages")
    return {"models": models, "rows_drawn": rows, "cells": len(report.cells),
            "cells_done": sum(cell.status == "done" for cell in report.cells),
            "distinct_links": len(hrefs), "links_to_cell_pages": len(linked), "links_to_nothing": len(missing),
            "console_errors": len(errors), "requests": len(requests), "page_bytes": page.stat().st_size}


def screenshot(browser: Browser, page: Path) -> Path:
    """study.png beside the page: the whole page at 1280 px wide, as Chromium draws it, in 256 colours."""
    from PIL import Image

    shot = page.with_suffix(".png")
    browser.open(page)
    errors = browser.errors() + browser.requests()
    if errors:
        raise SystemExit(f"{page}: {errors}")
    browser.screenshot(shot)
    Image.open(shot).convert("RGB").quantize(256).save(shot, optimize=True)
    return shot


def write_page(folder: Path, report: StudyReport) -> Path:
    page = folder / "study.html"
    page.write_text(html_page(report, cell_pages(report, folder)))
    return page


def regenerate(folder: Path, copy_to: Path | None) -> None:
    report = StudyReport.model_validate_json((folder / "study.json").read_text())
    with Browser(1280, 900, timeout=120) as browser:
        check = check_page(browser, write_page(folder, report), report)
        print(json.dumps(check))
        if copy_to is None:
            print(screenshot(browser, folder / "study.html"))
            return
        copy_to.mkdir(parents=True, exist_ok=True)
        for name in ("study.json", "study.md", "study.csv"):
            shutil.copyfile(folder / name, copy_to / name)
        copy = write_page(copy_to, report)
        check_page(browser, copy, report)
        (copy_to / "page_check.json").write_text(json.dumps({
            "what": "the study's page opened in headless Chromium in the study's own folder, its cells' folders "
                    "beside it (every row drawn): its links, console errors and requests; the copy here is drawn "
                    "without links, its cells' folders left out of the repository",
            **check, "browser": subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip(),
            "command": f"python bench/study_page.py regenerate STUDY_DIR --copy-to {copy_to}"}, indent=1) + "\n")
        print(screenshot(browser, copy))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    timed = commands.add_parser("measure")
    timed.add_argument("--rows", type=int, default=1500)
    timed.add_argument("--repeat", type=int, default=3)
    again = commands.add_parser("regenerate")
    again.add_argument("folder", type=Path)
    again.add_argument("--copy-to", type=Path, help="a folder for the study's tables, its page and screenshot")
    args = parser.parse_args()
    if args.command == "measure":
        result = measure(args.rows, args.repeat)
        RESULT.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: result[k] for k in ("page_bytes", "page_gzip_bytes", "median")}, indent=1))
    else:
        regenerate(args.folder, args.copy_to)


if __name__ == "__main__":
    main()
