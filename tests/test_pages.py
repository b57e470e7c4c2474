"""study.html in a real browser (headless Chromium): a study of 100 models and 210 cells assembled from made-up
cell results (the page is drawn from study.json alone), its rows, links, sorting, filtering, marks and plots."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from helpers import needs_chromium
from synthetic_study import synthetic_study

from xfverify.evaluator.reports.study import MARKS, cell_pages, html_page, page_rows, short_names

pytestmark = needs_chromium
VISIBLE = "[...document.querySelectorAll('#study-table tbody tr')]"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    report = synthetic_study(100, folder)
    (folder / "study.html").write_text(html_page(report, cell_pages(report, folder)))
    return {"folder": folder, "report": report, "rows": page_rows(report, cell_pages(report, folder))}


@pytest.fixture
def page(study, browser):
    """The study page freshly opened (no filter, no sort), checked free of console errors and requests after."""
    browser.open(study["folder"] / "study.html")
    yield browser
    assert browser.errors() == [] and browser.requests() == []


def _type(browser, text: str) -> None:
    """Text typed into the filter box (an input event per change, as typing gives)."""
    browser.js(f"(() => {{const box = document.getElementById('filter'); box.value = {json.dumps(text)}; "
               "box.dispatchEvent(new Event('input'))})()")


def _visible_models(browser) -> list[str]:
    return browser.js(f"{VISIBLE}.map(tr => tr.dataset.model)")


def test_the_page_has_every_row_and_every_link_leads_to_a_file_beside_it(study, page):
    report = study["report"]
    assert len(report.cells) >= 200
    assert _visible_models(page) == [row.model for row in report.rows]
    assert page.js("document.getElementById('shown').textContent") == "100 of 100 models shown"
    hrefs = page.js("[...document.querySelectorAll('a[href]')].map(a => new URL(a.getAttribute('href'), document.baseURI).href)")
    done = sum(cell.status == "done" for cell in report.cells)
    assert len(hrefs) >= done  # each finished cell: a run link in the table and points in the plots
    for href in set(hrefs):
        url = urlparse(href)
        assert url.scheme == "file", href
        assert Path(unquote(url.path)).is_file(), href
    failed = next(row for row in report.rows if row.failed)
    tr = f"{VISIBLE}.find(tr => tr.dataset.model === {json.dumps(failed.model)})"
    assert page.js(f"{tr}.querySelectorAll('a').length") == 0  # no page, no link
    assert page.js(f"{tr}.className") == "failed"


def test_clicking_a_header_sorts_the_rows_and_clicking_again_reverses_them(study, page):
    rows = study["rows"]
    header = "[...document.querySelectorAll('#study-table th')].find(th => th.textContent === 'published %')"
    page.js(f"{header}.click()")
    ascending = [r["model"] for r in sorted(rows, key=lambda r: r["published"])]
    assert _visible_models(page) == ascending
    assert "sort=published" in page.js("location.hash")
    page.js(f"{header}.click()")
    descending = [r["model"] for r in sorted(rows, key=lambda r: -r["published"])]
    assert _visible_models(page) == descending
    difference = "[...document.querySelectorAll('#study-table th')].find(th => th.textContent.startsWith('difference'))"
    page.js(f"{difference}.click()")
    known = sorted((r for r in rows if r["difference"] is not None), key=lambda r: r["difference"])
    assert _visible_models(page) == [r["model"] for r in known] + [r["model"] for r in rows if r["difference"] is None]


def test_typing_a_filter_and_ticking_marked_rows_only_narrow_the_rows(study, page):
    rows = study["rows"]
    _type(page, "GLUONCV resnet")
    wanted = [r["model"] for r in rows if "gluoncv" in r["search"] and "resnet" in r["search"]]
    assert 0 < len(wanted) < len(rows) and _visible_models(page) == wanted
    assert page.js("document.getElementById('shown').textContent") == f"{len(wanted)} of 100 models shown"
    _type(page, "")
    page.js("document.getElementById('marked').click()")
    marked = [r["model"] for r in rows if r["marks"]]
    assert 0 < len(marked) < len(rows) and _visible_models(page) == marked
    assert page.js("location.hash") == "#marked="


def test_a_shared_address_opens_the_same_view(study, browser):
    browser.open(study["folder"] / "study.html")
    browser.js("location.hash = 'q=timm&sort=native_speed&desc'")
    timm = sorted((r for r in study["rows"] if "timm" in r["search"]), key=lambda r: -(r["native_speed"] or 0))
    assert _visible_models(browser) == [r["model"] for r in timm]
    assert browser.js("document.getElementById('filter').value") == "timm"


def test_outliers_are_marked_in_the_table_and_named_on_the_plot(study, page):
    rows = study["rows"]
    for mark in MARKS:
        css = page.js(f"document.querySelectorAll('#study-table tbody tr.{mark}').length")
        assert css == sum(mark in r["marks"] for r in rows) > 0
    outside = [r for r in rows if "outside" in r["marks"]]
    for row in outside:  # the published number really is outside the interval
        assert not row["reproduced_lo"] <= row["published"] <= row["reproduced_hi"]
    points = [r for r in rows if r["published"] is not None and r["reproduced"] is not None]
    assert page.js("document.querySelectorAll('#errors-plot circle').length") == len(points)
    assert page.js("document.querySelectorAll('#errors-plot circle.outside').length") == len(outside)
    labels = page.js("[...document.querySelectorAll('#errors-plot text.point-label')].map(t => t.childNodes[0].nodeValue)")
    assert labels and set(labels) <= {r["short"] for r in outside}
    titles = page.js("[...document.querySelectorAll('#errors-plot circle')].map(c => {"
                     "c.dispatchEvent(new MouseEvent('mouseover', {bubbles: true})); return c.textContent})")
    assert sorted(title.split(":")[0] + ":" + title.split(":")[1] for title in titles) == sorted(
        r["model"] for r in points)  # the full id on hover
    # labels stay inside the plot and do not overlap each other
    boxes = page.js("[...document.querySelectorAll('#errors-plot text.point-label')].map(t => {"
                    "const b = t.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]})")
    frame = page.js("(() => {const b = document.querySelector('#errors-plot rect.frame').getBoundingClientRect();"
                    "return [b.left, b.top, b.right, b.bottom]})()")
    for i, (left, top, right, bottom) in enumerate(boxes):
        assert frame[0] <= left and right <= frame[2] + 1 and frame[1] <= top and bottom <= frame[3] + 1
        for other in boxes[i + 1:]:
            assert right <= other[0] or other[2] <= left or bottom <= other[1] or other[3] <= top


def test_the_speed_plot_has_both_runtimes_and_the_per_model_view_waits_for_a_few_models(study, page):
    rows = study["rows"]
    assert page.js("document.querySelectorAll('#speed-plot circle').length") == sum(bool(r["native_speed"]) for r in rows)
    assert page.js("document.querySelectorAll('#speed-plot rect:not(.frame)').length") == sum(
        bool(r["onnx_speed"]) for r in rows)
    assert page.js("document.getElementById('per-model').hidden") is True  # 100 models: one line each would not fit
    _type(page, "regnety")
    few = [r for r in rows if "regnety" in r["search"]]
    assert page.js("document.getElementById('per-model').hidden") is False
    names = page.js("[...document.querySelectorAll('#per-model-plot text.tick[text-anchor=end]')].map(t => t.childNodes[0].nodeValue)")
    assert names == [r["short"] for r in few]
    # every marker visible: ONNX Runtime's square sits below the native dot, never on it
    native = page.js("[...document.querySelectorAll('#per-model-plot circle')].map(c => +c.getAttribute('cy'))")
    onnx = page.js("[...document.querySelectorAll('#per-model-plot rect:not(.frame)')]"
                   ".map(r => +r.getAttribute('y') + +r.getAttribute('height') / 2)")
    assert len(native) == len(onnx) == len(few) and all(o - n >= 6 for n, o in zip(native, onnx))


def test_short_names_leave_the_source_out_and_keep_the_weights_only_to_tell_models_apart():
    names = short_names(["torchvision/resnet50:IMAGENET1K_V1", "torchvision/resnet50:IMAGENET1K_V2", "keras/ResNet101:imagenet",
                         "timm/" + "x" * 40 + ":in1k"])
    assert list(names.values()) == ["resnet50:V1", "resnet50:V2", "ResNet101", "x" * 27 + "…"]


def test_a_hostile_model_name_is_text_not_markup(tmp_path, browser):
    from test_study import _synthetic_report

    report = _synthetic_report()
    text = html_page(report)
    assert "<script>alert" not in text and "<i>boom" not in text
    assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?(https?:|//)""", text)  # nothing is fetched
    page = tmp_path / "study.html"
    page.write_text(text)
    browser.open(page)
    assert browser.js("document.scripts.length") == 2  # the data and the page's own script, nothing injected
    assert "keras/<script>alert(1)</script>" in browser.js(f"{VISIBLE}.map(tr => tr.dataset.model)")
    assert browser.js("document.body.innerText").count("<i>boom</i>") == 1  # the failed cell's error, as text
    assert browser.errors() == [] and browser.requests() == []


def test_the_browser_checks_see_a_console_error_and_a_request(tmp_path, browser):
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><body><img src='http://192.0.2.1/x.png'>"
                    "<script>console.error('broken'); undefinedCall();</script></body></html>")
    browser.open(page)
    errors = browser.errors()
    assert any("broken" in e for e in errors) and any("undefinedCall" in e for e in errors)
    assert browser.requests() == ["http://192.0.2.1/x.png"]


def test_a_click_on_a_point_opens_its_models_page(study, page):
    row = next(r for r in study["rows"] if r["published"] is not None and r["pages"])
    index = [r["model"] for r in study["rows"] if r["published"] is not None and r["reproduced"] is not None].index(
        row["model"])
    page.js(f"document.querySelectorAll('#errors-plot circle')[{index}].dispatchEvent("
            "new MouseEvent('click', {bubbles: true}))")
    page.wait_for("Page.loadEventFired")
    assert page.js("location.pathname") == str(study["folder"] / row["pages"]["native"])


def test_a_thousand_models_are_paged_and_sorting_or_filtering_starts_again_at_the_first_page(tmp_path, browser):
    report = synthetic_study(450, seed=1)
    rows = page_rows(report, {})
    (tmp_path / "study.html").write_text(html_page(report))
    browser.open(tmp_path / "study.html")
    assert _visible_models(browser) == [r["model"] for r in rows[:200]]
    assert browser.js("document.getElementById('shown').textContent") == "rows 1-200 of 450 of 450 models shown"
    browser.js("document.getElementById('next').click()")
    assert _visible_models(browser) == [r["model"] for r in rows[200:400]]
    browser.js("document.getElementById('next').click()")
    assert _visible_models(browser) == [r["model"] for r in rows[400:]]
    assert browser.js("document.getElementById('next').disabled") is True
    browser.js("[...document.querySelectorAll('#study-table th')].find(th => th.textContent === 'flips').click()")
    assert _visible_models(browser)[0] == sorted(rows, key=lambda r: (r["flips"] is None, r["flips"] or 0))[0]["model"]
    assert browser.js("document.getElementById('previous').disabled") is True  # back on the first page
    browser.js("document.getElementById('all').click()")
    assert len(_visible_models(browser)) == 450
    _type(browser, "keras")
    assert browser.js("document.getElementById('paging').hidden") is True
    assert len(_visible_models(browser)) == sum("keras" in r["search"] for r in rows)
    assert browser.js("document.querySelectorAll('#errors-plot circle').length") == sum(
        "keras" in r["search"] and r["published"] is not None and r["reproduced"] is not None for r in rows)
    assert browser.errors() == [] and browser.requests() == []
