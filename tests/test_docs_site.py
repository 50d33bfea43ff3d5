"""The documentation site (mkdocs.yml, docs/hooks.py), built and opened offline.

The site is built in fast mode (MLOPS_NB_DOCS_EXECUTE=0: notebook pages without outputs; `make docs` executes the
notebooks) into a temporary folder with its own cache. Every page is then opened from disk in headless Chromium with
the network off: no console error, no request outside the site folder, every image rendered; the search finds a
known word. The generated references are checked against the code they come from.
"""
import html, importlib.util, os, re, subprocess, sys, time
from pathlib import Path

import pytest
import typer

from chromium import browser, needs_chromium  # noqa: F401 (browser: a fixture)

REPO = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).parent / "mkdocs"
CDN_HOSTS = ("cdnjs.cloudflare.com", "unpkg.com", "fonts.googleapis.com", "fonts.gstatic.com", "cdn.jsdelivr.net")


def load_hooks():
    "docs/hooks.py as a module (MkDocs loads it by path, so it is not importable by name)."
    spec = importlib.util.spec_from_file_location("mlops_nb_docs_hooks", REPO / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = load_hooks()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    "The site built in fast mode into a temporary folder (its own cache: `make docs`'s executed copies are untouched)."
    folder = tmp_path_factory.mktemp("docs")
    env = {**os.environ, "MLOPS_NB_DOCS_EXECUTE": "0", "MLOPS_NB_DOCS_CACHE": str(folder / "cache"),
           "NO_MKDOCS_2_WARNING": "1"}
    started = time.monotonic()
    proc = subprocess.run([str(MKDOCS), "build", "--strict", "--site-dir", str(folder / "site")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"fast docs build: {time.monotonic() - started:.1f} s")
    return folder / "site"


def pages(site: Path) -> list[Path]:
    "Every HTML page of the site (the theme's assets excluded)."
    return sorted(p for p in site.rglob("*.html") if "assets" not in p.relative_to(site).parts)


def raw_of(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def text_of(page: Path) -> str:
    "A page's text: tags removed (highlighted code is split into spans), entities decoded."
    return html.unescape(re.sub(r"<[^>]+>", "", raw_of(page)))


# --- what the site contains -------------------------------------------------------------------------------------

def test_every_notebook_module_and_guide_has_a_page(site):
    notebooks = hooks.notebook_pages()
    assert notebooks[0] == "index.ipynb" and "00_core.ipynb" in notebooks and "08_cli.ipynb" in notebooks
    missing = [nb for nb in notebooks if not (site / nb.replace(".ipynb", ".html")).is_file()]
    assert not missing, missing
    modules = hooks.package_modules()
    assert {"core", "cli", "pipeline"} <= set(modules) and not any(m.startswith("_") for m in modules)
    for module in modules:
        page = text_of(site / "reference" / "api" / f"{module}.html")
        assert f"mlops_nb.{module}" in page, module
    core = raw_of(site / "reference" / "api" / "core.html")
    assert 'id="mlops_nb.core.load_config"' in core and "Read, override and validate the configuration" in core
    guide = text_of(site / "your-own-data.html")
    assert "mlops-nb run --config my.yaml" in guide and "data.sensitive_features" in guide


def test_notebook_pages_leave_out_hidden_cells_and_directives(site):
    "nbdev's conventions: `#| hide` cells are not shown, nor are `#| export` lines; the prose and exported code are."
    page = text_of(site / "00_core.html")
    assert "def load_config(" in page and "Errors for people" in page
    assert "#| export" not in page and "#| hide" not in page and "from fastcore.test import" not in page


def test_the_cli_reference_is_each_commands_own_help(site):
    page = text_of(site / "reference" / "cli.html")
    group = typer.main.get_command(__import__("mlops_nb.cli", fromlist=["app"]).app)
    for name, command in group.commands.items():
        assert f"mlops-nb {name}" in page, name
        assert command.help.split("\n")[0].strip()[:60] in page, name
        for option in (p for p in command.params if p.opts and p.opts[0].startswith("--")):
            assert option.opts[0] in page, f"{name} {option.opts[0]}"
    assert "Usage: mlops-nb run [OPTIONS]" in page and "\x1b[" not in page
    for code, name in ((2, "ConfigError"), (3, "GateFailure"), (4, "DataValidationError"), (6, "retrain")):
        assert any(c == code and name in n for c, n, _ in hooks.exit_codes()), (code, name)
        assert name in page


def _leaf_keys(value: dict, prefix: str = "") -> list[str]:
    out = []
    for key, item in value.items():
        is_section = isinstance(item, dict) and key not in ("stage_timeouts",)
        out += _leaf_keys(item, f"{prefix}{key}.") if is_section else [f"{prefix}{key}"]
    return out


def test_the_config_reference_lists_every_key_with_type_and_default(site):
    from mlops_nb.core import Config
    page = raw_of(site / "reference" / "config.html")
    keys = _leaf_keys(Config().model_dump(mode="json"))
    assert len(keys) > 30 and "data.target" in keys and "gates.min_primary_metric" in keys
    missing = [k for k in keys if f"<code>{k}</code>" not in page]
    assert not missing, missing
    rows = {r["key"]: r for r in hooks.config_rows(Config)}
    assert set(keys) <= set(rows)
    assert rows["split.test_size"]["type"] == "float" and rows["split.test_size"]["constraints"] == "> 0, < 1"
    assert rows["split.strategy"]["type"] == "'random' | 'time'" and rows["split.seed"]["default"] == "`42`"
    assert rows["data"]["section"] and rows["gates"]["type"] == "section"


def test_config_rows_use_descriptions_and_mark_the_undocumented():
    from pydantic import BaseModel, Field

    class Inner(BaseModel):
        limit: int = Field(3, ge=1, description="How many at most.")
        names: list[str] = []

    class Outer(BaseModel):
        inner: Inner = Inner()
        label: str | None = None

    rows = {r["key"]: r for r in hooks.config_rows(Outer)}
    assert list(rows) == ["inner", "inner.limit", "inner.names", "label"]
    assert rows["inner.limit"]["meaning"] == "How many at most." and rows["inner.limit"]["constraints"] == ">= 1"
    assert rows["inner.names"]["meaning"] == "*undocumented*" and rows["inner.names"]["default"] == "`[]`"
    assert rows["label"]["type"] == "str | None" and rows["label"]["default"] == "`null`"


def test_for_display_drops_hidden_cells_and_directive_lines():
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("#| default_exp core"),
        nbformat.v4.new_code_cell("#| export\ndef f(): return 1"),
        nbformat.v4.new_code_cell("#| hide\nfrom fastcore.test import test_eq"),
        nbformat.v4.new_code_cell("#| hide\n#| check\ntest_eq(f(), 1)"),
        nbformat.v4.new_code_cell("#| check\ntest_eq(f(), 1)"),
        nbformat.v4.new_markdown_cell("# Title\n\n#| not a directive in markdown")])
    shown = hooks.for_display(nb).cells
    assert [c.source for c in shown] == ["def f(): return 1", "test_eq(f(), 1)",
                                         "# Title\n\n#| not a directive in markdown"]
    assert hooks.split_directives("#| hide\n#| check\nx = 1\n#| later") == (["hide", "check"], "x = 1\n#| later")


def test_cdn_loaders_are_removed_from_notebook_pages(site):
    snippet = ('<p>before</p><!-- Load mathjax -->\n<script src="https://cdnjs.cloudflare.com/mathjax.js"> </script>\n'
               '<!-- End of mathjax configuration --><script type="module">\n const d = document.querySelectorAll'
               '(".jp-Mermaid > pre.mermaid");\n import("https://cdnjs.cloudflare.com/mermaid.mjs")</script><p>after</p>')
    assert hooks.without_cdn_scripts(snippet) == "<p>before</p><p>after</p>"
    offenders = {p.name: [h for h in CDN_HOSTS if h in p.read_text(encoding="utf-8")] for p in pages(site)}
    assert not any(offenders.values()), {k: v for k, v in offenders.items() if v}
    assert '<script src="">' not in (site / "00_core.html").read_text(encoding="utf-8")


# --- the site in a browser, offline -------------------------------------------------------------------------------

def problems(state: dict, site: Path) -> list[str]:
    "What a page of the site must never do offline: request anything outside the site folder, log errors, break images."
    inside = (site.resolve().as_uri() + "/", "data:", "blob:", "about:")
    out = []
    external = [u for u in state["requests"] if not u.startswith(inside)]
    if external: out.append(f"requests outside the site: {external[:5]}")
    if state["errors"]: out.append(f"console errors: {state['errors'][:5]}")
    broken = [i for i in state["images"] if not i["complete"] or i["width"] == 0]
    if broken: out.append(f"images not rendered: {broken[:3]}")
    return out


@needs_chromium
def test_the_offline_check_sees_an_external_request_and_an_error(browser, tmp_path):
    "Positive control for `problems`: a page that fetches from another host and logs an error is caught."
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><img src="https://example.org/x.png">'
                    '<script>console.error("broken on purpose")</script></body></html>', encoding="utf-8")
    found = " | ".join(problems(browser.open(page), tmp_path))
    assert "https://example.org/x.png" in found and "broken on purpose" in found and "images not rendered" in found


@needs_chromium
def test_every_page_opens_offline_without_errors(site, browser, tmp_path):
    "404.html is left out: only a web server shows it (for any missing URL), so its links are absolute (site_url)."
    all_pages = [p for p in pages(site) if p != site / "404.html"]
    assert len(all_pages) >= len(hooks.notebook_pages()) + len(hooks.package_modules()) + 3
    failures = {}
    for page in all_pages:
        shot = tmp_path / "screenshots" / f"{page.relative_to(site).as_posix().replace('/', '_')}.png"
        state = browser.open(page, shot if page.name == "index.html" and page.parent == site else None)
        if found := problems(state, site): failures[str(page.relative_to(site))] = found
        assert state["title"].endswith("mlops_nb"), (page, state["title"])
    assert not failures, failures
    print(f"{len(all_pages)} pages opened offline; screenshot of the overview: {tmp_path / 'screenshots'}")


def search(browser, site: Path, word: str) -> dict:
    "Type a word into the site's search box (offline, from file://); return the result count and links."
    session = browser.visit((site / "index.html").as_uri())
    try:
        browser.evaluate(session, f"""(() => {{ const box = document.querySelector('input.md-search__input');
            box.focus(); box.value = {word!r};
            for (const name of ['focus', 'input', 'keyup']) box.dispatchEvent(new Event(name, {{bubbles: true}})); }})()""")
        deadline, found = time.monotonic() + 20, {}
        while time.monotonic() < deadline:
            found = browser.evaluate(session, """({meta: (document.querySelector('.md-search-result__meta') || {}).innerText || '',
                links: Array.from(document.querySelectorAll('.md-search-result__item a')).map(a => a.href)})""")
            if found["links"] or "No matching" in found["meta"]: break
            time.sleep(0.2)
        return {**found, "problems": problems(browser.page_state(session), site)}
    finally:
        browser.close_page(session)


@needs_chromium
def test_search_works_offline(site, browser):
    hit = search(browser, site, "fingerprint")
    assert not hit["problems"], hit["problems"]
    assert any("00_core.html" in link for link in hit["links"]), hit
    assert "matching document" in hit["meta"], hit["meta"]
    miss = search(browser, site, "zqxjvwk")
    assert miss["links"] == [] and "No matching" in miss["meta"], miss
