"""Every generated HTML page in a real browser (Debian's headless Chromium, driven over the DevTools protocol).

Each page is opened from disk with the network switched off: no console error, no request other than the page itself
and inline data, every image rendered, and no script from the data executed (the kitchen-sink data names a column and
its values with scripts that would set `document.title` and `window.__pwned`). A screenshot of every page is saved
under the test's output folder for review. A positive control proves the harness sees a script that runs and an
external request.
"""
from pathlib import Path

import pytest

from chromium import browser, needs_chromium  # noqa: F401 (browser: a fixture)
from hostile import EXTERNAL_URL, KITCHEN_MODEL, XSS, XSS_VALUES, kitchen_sink_run

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    return kitchen_sink_run(tmp_path_factory)


def _problems(state: dict, page: Path) -> list[str]:
    "What a page must never do: run data scripts, request anything but itself and inline data, log errors, show broken images."
    out = []
    if state["pwned"] is not None or "pwned" in state["title"] or state["dialogs"]:
        out.append(f"a script from the data ran: __pwned={state['pwned']!r}, title={state['title']!r}, dialogs={state['dialogs']}")
    external = [u for u in state["requests"] if not u.startswith(("data:", page.resolve().as_uri()))]
    if external: out.append(f"requests other than the page itself and inline data: {external[:5]}")
    if state["errors"]: out.append(f"console errors: {state['errors'][:5]}")
    broken = [i for i in state["images"] if not i["complete"] or i["width"] == 0]
    if broken: out.append(f"images not rendered: {broken[:3]}")
    return out


def test_the_harness_sees_a_script_that_runs_and_an_external_request(browser, tmp_path):
    "Positive control: unescaped data in a page is caught (the checks below would otherwise prove nothing)."
    page = tmp_path / "unsafe.html"
    page.write_text(f"<!DOCTYPE html><html><head><title>unsafe</title></head><body>{XSS}{XSS_VALUES[0]}"
                    f'<img src="{EXTERNAL_URL}"><img src="data:image/png;base64,iVBORw0KGgo="></body></html>', encoding="utf-8")
    state = browser.open(page)
    problems = " | ".join(_problems(state, page))
    assert "a script from the data ran" in problems and state["pwned"] in (1, 2) and state["title"] == "pwned"
    assert EXTERNAL_URL in problems and "images not rendered" in problems


def _pages(kitchen: dict) -> dict[str, Path]:
    run_dir, reports = kitchen["run_dir"], kitchen["reports"]
    pages = {f"stage {s}": run_dir / v["html"] for s, v in kitchen["summary"]["stages"].items() if v.get("html")}
    pages.update({"run index": run_dir / "index.html", "dashboard": reports / "index.html", "model card": run_dir / "model_card.html",
                  "monitoring batch": reports / "monitoring" / "hostile-batch" / "monitoring.html"})
    pages.update({f"stage monitoring: {p.parent.name}": p for p in sorted((run_dir / "monitoring").glob("*/monitoring.html"))[:1]})
    return pages


def test_every_report_is_safe_offline_and_complete(kitchen, browser, tmp_path):
    "Each report of the kitchen-sink run, the run index, the dashboard and a monitoring page, opened from disk, offline."
    assert kitchen["proc"].returncode in (0, 3), kitchen["proc"].stderr  # 3: gates failed, a correct outcome
    assert kitchen["monitor"].returncode == 0, kitchen["monitor"].stderr
    pages = _pages(kitchen)
    assert len(pages) >= 8 and all(p.is_file() for p in pages.values()), {k: p.is_file() for k, p in pages.items()}
    shots, failures, seen = tmp_path / "screenshots", {}, {}
    for name, page in pages.items():
        state = browser.open(page, shots / f"{name.replace(' ', '_').replace(':', '')}.png")
        problems = _problems(state, page)
        if problems: failures[name] = problems
        seen[name] = state
    print(f"screenshots for review: {shots}")
    assert not failures, failures
    assert all((shots / f"{n.replace(' ', '_').replace(':', '')}.png").stat().st_size > 10_000 for n in pages)
    # the hostile strings are shown as text (escaped), not dropped: in the data report, the rai report and the run index
    for name in ("stage eda", "stage rai", "stage evaluation", "run index", "monitoring batch"):
        assert XSS in seen[name]["text"], f"{name}: the hostile column name is not shown as text"
    assert XSS_VALUES[0] in seen["stage eda"]["text"] and XSS in seen["model card"]["text"]
    for name in ("stage eda", "stage rai", "stage baseline", "stage evaluation", "dashboard"):
        assert len(seen[name]["images"]) >= 1, f"{name}: no plot"
    assert seen["stage eda"]["title"] == f"{KITCHEN_MODEL}: eda" and seen["run index"]["title"].startswith("Run ")
    assert all(s["scripts"] == 0 for s in seen.values()), {n: s["scripts"] for n, s in seen.items()}  # reports need no script at all


def test_reports_escape_user_strings_in_every_output_kind(kitchen):
    "Markdown, HTML and table outputs: the raw hostile strings never reach any HTML file, their escaped forms do."
    raw = [XSS, XSS_VALUES[0], f'<img src="{EXTERNAL_URL}">', "<b>bold</b>", "<i>y</i>"]
    for page in _pages(kitchen).values():
        html = page.read_text(encoding="utf-8")
        leaked = [r for r in raw if r in html]
        assert not leaked, f"{page.name}: unescaped {leaked}"
        assert "<script" not in html.lower(), page.name
    eda = (kitchen["run_dir"] / "eda.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;document.title=" in eda.replace("&#39;", "'").replace("&#x27;", "'")
