"""Checks stay out of a user's run: every stage notebook marks its checks `#| check`, no check reads the configured data,
the pipeline executes the stage notebooks without them, and a check that would fail on the configured data cannot fail a run.

How a check is told from a report cell: a check cell carries the directive `#| check`, an example on made-up data
`#| example` (its Markdown introduction the cell tag `example`); nbdev_test runs them, the documentation shows the
examples, the pipeline drops them all (`pipeline.without_checks`), so a user's report shows only their data. Which names hold the configured data is found by following the data through the
notebook: the parameters (CONFIG, RUN_DIR) are the configured data, and every name a cell binds from a cell that reads one
of them is too. A check may read only names of its own, of the exported code, or of examples built on made-up data.
"""
import ast, re
from pathlib import Path

import nbformat
import pytest

from conftest import NBS, read_json, run_cli, write_config
from mlops_nb.pipeline import STAGES, cell_directives, is_check_cell

# Stage notebooks whose checks are being rewritten (issue 17 for rai and evaluation, issue 16 for monitoring): strict,
# so the mark must go the moment a notebook passes.
REWRITING: set[str] = set()
STAGE_NOTEBOOKS = [NBS / name for name in STAGES.values()]


def _pending(path: Path):
    return pytest.param(path, marks=pytest.mark.xfail(strict=True, reason="checks still read the configured data")) \
        if path.name in REWRITING else path
TEST_CALL = re.compile(r"\b(test_eq|test_fail|test_close|test_ne|assert)\b")


def _code_cells(path: Path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def _names(source: str) -> tuple[set[str], set[str]]:
    "(names the code reads, names it binds), ignoring the nbdev directives and IPython magics."
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    tree = ast.parse(code)
    loads, stores = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (stores if isinstance(node.ctx, (ast.Store, ast.Del)) else loads).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            stores.add(node.name)
        elif isinstance(node, ast.arg):  # a parameter of a function or lambda
            stores.add(node.arg)
        elif isinstance(node, ast.alias):  # an import
            stores.add((node.asname or node.name).split(".")[0])
    return loads, stores


def _configured_names(cells) -> set[str]:
    "The names that hold the configured data: the parameters, and whatever a report cell binds from them."
    tainted = {"CONFIG", "RUN_DIR"}
    for cell in cells:
        directives = cell_directives(cell.source)
        if "export" in directives or "check" in directives or "parameters" in cell.metadata.get("tags", []):
            continue
        loads, stores = _names(cell.source)
        if loads & tainted:
            tainted |= stores
    return tainted


@pytest.mark.parametrize("path", STAGE_NOTEBOOKS, ids=lambda p: p.name)
def test_every_check_is_marked(path):
    "A cell that asserts is an exported cell's own code or a `#| check` cell, never a report cell."
    unmarked = [c.source.splitlines()[0][:80] for c in _code_cells(path)
                if TEST_CALL.search(c.source) and not is_check_cell(c) and "export" not in cell_directives(c.source)
                and not c.source.lstrip().startswith(("#| hide\nfrom", "from", "import"))]
    assert not unmarked, f"{path.name}: cells that assert without #| check: {unmarked}"


@pytest.mark.parametrize("path", [_pending(p) for p in STAGE_NOTEBOOKS], ids=lambda p: p.name)
def test_no_check_reads_the_configured_data(path):
    cells = _code_cells(path)
    configured = _configured_names(cells)
    offending = {}
    for cell in cells:
        if is_check_cell(cell):
            loads, stores = _names(cell.source)
            if loads & configured - stores:
                offending[cell.source.splitlines()[1 if cell.source.startswith("#|") else 0][:60]] = sorted(loads & configured - stores)
    assert not offending, f"{path.name}: checks reading the configured data: {offending}"


@pytest.mark.parametrize("path", STAGE_NOTEBOOKS, ids=lambda p: p.name)
def test_report_cells_need_no_check(path):
    "The pipeline drops the checks: no other cell may read a name that only a check binds."
    cells = _code_cells(path)
    only_checks = set().union(*(_names(c.source)[1] for c in cells if is_check_cell(c)))
    only_checks -= set().union(*(_names(c.source)[1] for c in cells if not is_check_cell(c)))
    needed = {name for c in cells if not is_check_cell(c) for name in _names(c.source)[0] & only_checks}
    assert not needed, f"{path.name}: report cells read names only checks bind: {sorted(needed)}"


def _shows_made_up_data(cell, configured: set[str]) -> bool:
    "A report cell (not exported, not the parameters, not only imports) that reads nothing of the configured data."
    if "export" in cell_directives(cell.source) or is_check_cell(cell) or "parameters" in cell.metadata.get("tags", []):
        return False
    body = "\n".join(line for line in cell.source.splitlines() if not line.startswith("#|")).strip()
    statements = ast.parse(body).body if body else []
    if all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in statements):
        return False
    return not _names(cell.source)[0] & configured


@pytest.mark.parametrize("path", STAGE_NOTEBOOKS, ids=lambda p: p.name)
def test_a_users_report_shows_only_their_data(path):
    "Every cell a pipeline run executes reads the configured data: an example on made-up rows is `#| example`."
    cells = _code_cells(path)
    configured = _configured_names(cells)
    shown = [c.source.splitlines()[0][:70] for c in cells if _shows_made_up_data(c, configured)]
    assert not shown, f"{path.name}: cells a pipeline run shows that are about made-up data (mark them #| example): {shown}"


def test_the_made_up_data_rule_finds_an_unmarked_example():
    cells = [nbformat.v4.new_code_cell("ctx = run_context(CONFIG, RUN_DIR)"), nbformat.v4.new_code_cell("_toy = f([1, 2])"),
             nbformat.v4.new_code_cell("#| example\n_toy = f([1, 2])"), nbformat.v4.new_code_cell("report(ctx)")]
    configured = _configured_names(cells)
    assert [_shows_made_up_data(c, configured) for c in cells] == [False, True, False, False]


def test_the_taint_rule_sees_a_check_on_the_configured_data():
    "The rule above is not vacuous: a check reading a value derived from the parameters is found."
    cells = [nbformat.v4.new_code_cell("ctx = run_context(CONFIG, RUN_DIR)"), nbformat.v4.new_code_cell("train = load(ctx)"),
             nbformat.v4.new_code_cell("_toy = [1, 2]"), nbformat.v4.new_code_cell("#| check\nassert len(train) and _toy")]
    configured = _configured_names(cells)
    assert {"ctx", "train"} <= configured and "_toy" not in configured
    assert _names(cells[3].source)[0] & configured == {"train"}


def test_a_failing_check_cannot_fail_a_run_and_is_not_executed(tmp_path):
    "A check that fails on any data is inserted into the data stage: `nbdev_test` would fail, the run succeeds without it."
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    for p in NBS.glob("0*.ipynb"):
        (nbdir / p.name).write_bytes(p.read_bytes())
    nb = nbformat.read(nbdir / "01_eda.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("#| check\nraise AssertionError('a check about the configured data')"))
    nbformat.write(nb, nbdir / "01_eda.ipynb")
    config = write_config(tmp_path, data={"sample_rows": 600})
    proc = run_cli("run", "--config", config, "--stages", "eda", "--notebooks", nbdir, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    run_dir, = [p for p in (tmp_path / "reports").iterdir() if p.is_dir()]
    executed = nbformat.read(run_dir / "eda.ipynb", as_version=4)
    assert not [c for c in executed.cells if is_check_cell(c)] and read_json(run_dir / "summary.json")["status"] == "succeeded"
