"""The MkDocs hook that assembles the documentation site from the project itself (mkdocs.yml: `hooks`).

- Every notebook (`nbs/index.ipynb`, `nbs/NN_*.ipynb`, `nbs/tutorials/*.ipynb`) becomes a page. With
  `MLOPS_NB_DOCS_EXECUTE=1` (the default) each one is first executed with its defaults, in its own folder, two at a
  time, and the executed copy is cached under `.cache/docs/executed/`, keyed by the notebook, the package's source
  and requirements.lock: a rebuild re-executes only what changed. `MLOPS_NB_DOCS_EXECUTE=0` shows the notebooks
  without outputs (the fast build `make test` checks). As in nbdev's docs, `#| hide` cells are left out and `#|`
  directive lines are not shown; `#| notest` cells are shown but not executed (as under nbdev_test).
- The API reference (one page per module of mlops_nb), the command-line reference (each command's own `--help`)
  and the configuration reference (every key of `Config`, walked recursively) are generated at build time from the
  code, so they cannot drift from it.
"""
from __future__ import annotations

import asyncio, hashlib, logging, os, pkgutil, re, shutil, tempfile, time
from pathlib import Path

import nbformat
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parents[1]
NBS = REPO / "nbs"
PACKAGE = "mlops_nb"
CELL_TIMEOUT = 900  # seconds one cell of a notebook may run while the site is built
log = logging.getLogger("mkdocs.hooks.mlops_nb")


# --- settings -------------------------------------------------------------------------------------------------------

def execute_notebooks() -> bool:
    "Whether notebooks are executed for the site (MLOPS_NB_DOCS_EXECUTE, default 1); 0 shows them without outputs."
    value = os.environ.get("MLOPS_NB_DOCS_EXECUTE", "1").strip().lower()
    if value not in ("0", "1", "false", "true", "no", "yes"):
        raise PluginError(f"MLOPS_NB_DOCS_EXECUTE={value!r}: expected 1 (execute the notebooks) or 0 (no outputs)")
    return value in ("1", "true", "yes")


def cache_dir() -> Path:
    "Where executed notebooks and the prepared pages live (MLOPS_NB_DOCS_CACHE, default .cache/docs)."
    return Path(os.environ.get("MLOPS_NB_DOCS_CACHE", REPO / ".cache" / "docs")).resolve()


def workers() -> int:
    "How many notebooks execute at once (MLOPS_NB_DOCS_WORKERS, default 2)."
    return max(1, int(os.environ.get("MLOPS_NB_DOCS_WORKERS", "2")))


# --- notebooks ------------------------------------------------------------------------------------------------------

def notebook_pages(nbs: Path = NBS) -> list[str]:
    "The notebooks that become pages, relative to nbs/: the overview, the numbered notebooks, then the tutorials."
    numbered = sorted(p.name for p in nbs.glob("[0-9]*.ipynb"))
    tutorials = sorted(f"tutorials/{p.name}" for p in (nbs / "tutorials").glob("*.ipynb") if not p.name.startswith("_"))
    return ["index.ipynb", *numbered, *tutorials]


DIRECTIVE = re.compile(r"^\s*#\|\s*([\w-]+)")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def split_directives(source: str) -> tuple[list[str], str]:
    "The `#| name` directives at the top of a code cell, and the code below them."
    lines = source.splitlines()
    names = []
    while lines and (match := DIRECTIVE.match(lines[0])):
        names.append(match.group(1))
        lines.pop(0)
    return names, "\n".join(lines)


def for_display(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    "The notebook as readers see it: `#| hide` cells left out, directive lines removed, empty code cells dropped."
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            names, body = split_directives(cell.source)
            if "hide" in names: continue
            if not body.strip() and not cell.get("outputs"): continue
            cell.source = body
        cells.append(cell)
    nb.cells = cells
    return nb


def source_digest() -> str:
    "A digest of what a notebook's outputs depend on besides itself: the package's modules and requirements.lock."
    digest = hashlib.sha256()
    for path in [*sorted((REPO / PACKAGE).glob("*.py")), REPO / "requirements.lock"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_key(notebook: Path, digest: str) -> str:
    "The key of a notebook's executed copy: its own bytes and the digest of everything else it depends on."
    return hashlib.sha256(notebook.read_bytes() + digest.encode()).hexdigest()[:16]


async def _execute(notebook: Path, limit: asyncio.Semaphore) -> nbformat.NotebookNode:
    "Execute a notebook with its defaults in its own folder; `#| notest` cells are not run. Raise on a failed cell."
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    nb = nbformat.read(notebook, as_version=4)
    held = [c for c in nb.cells if c.cell_type == "code" and "notest" in split_directives(c.source)[0]]
    for cell in held: cell.metadata.setdefault("tags", []).append("skip-execution")
    async with limit:
        with tempfile.TemporaryDirectory(prefix="mlops-nb-docs-") as sockets:
            # local IPC sockets, as the pipeline's kernels: no TCP port is opened
            kernel = AsyncKernelManager(kernel_name="python3", transport="ipc", ip=f"{sockets}/kernel")
            where = {"metadata": {"path": str(notebook.parent)}}  # the notebook's own folder, as under nbdev_test
            client = NotebookClient(nb, km=kernel, timeout=CELL_TIMEOUT, resources=where)
            started = time.monotonic()
            try: await client.async_execute()
            finally:  # nbclient leaves a kernel it was given running
                if await kernel.is_alive(): await kernel.shutdown_kernel(now=True)
    log.info(f"executed {notebook.relative_to(REPO)} in {time.monotonic() - started:.1f} s")
    for cell in held: cell.metadata.tags.remove("skip-execution")
    return nb


def _failure(notebook: Path, error: BaseException) -> str:
    "One line naming the notebook and the last line of its error (colour codes removed)."
    lines = [line for line in ANSI_ESCAPE.sub("", str(error)).splitlines() if line.strip()]
    return f"{notebook.relative_to(REPO)}: {lines[-1] if lines else repr(error)}"


def executed_copies(notebooks: list[Path], cache: Path) -> dict[Path, Path]:
    "The executed copy of each notebook, from the cache or executed now (at most `workers()` at once)."
    digest, folder = source_digest(), cache / "executed"
    folder.mkdir(parents=True, exist_ok=True)
    copies = {nb: folder / f"{nb.relative_to(NBS).as_posix().replace('/', '__')}.{cache_key(nb, digest)}.ipynb"
              for nb in notebooks}
    missing = [nb for nb, copy in copies.items() if not copy.exists()]

    async def run_all():
        limit = asyncio.Semaphore(workers())
        return await asyncio.gather(*(_execute(nb, limit) for nb in missing), return_exceptions=True)

    results = asyncio.run(run_all()) if missing else []
    failed = [_failure(nb, r) for nb, r in zip(missing, results) if isinstance(r, BaseException)]
    for nb, result in zip(missing, results):
        if not isinstance(result, BaseException): nbformat.write(result, copies[nb])
    if failed:
        raise PluginError("notebooks failed while the docs were built (the others are cached): " + "; ".join(failed))
    for stale in set(folder.glob("*.ipynb")) - set(copies.values()): stale.unlink()
    log.info(f"notebooks: {len(notebooks) - len(missing)} from the cache, {len(missing)} executed")
    return copies


def prepare_notebooks(pages: list[str], cache: Path, execute: bool) -> Path:
    "Write the pages' notebooks (executed or not, as readers see them) into a folder; return that folder."
    folder = cache / ("pages-executed" if execute else "pages-plain")
    shutil.rmtree(folder, ignore_errors=True)
    copies = executed_copies([NBS / p for p in pages], cache) if execute else {}
    for page in pages:
        nb = nbformat.read(copies.get(NBS / page, NBS / page), as_version=4)
        (folder / page).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(for_display(nb), folder / page)
    return folder


# --- generated reference pages ----------------------------------------------------------------------------------------

def package_modules() -> list[str]:
    "The public modules of the package (the ones nbdev exports), in import order."
    import importlib
    package = importlib.import_module(PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))


def module_notebook(module: str) -> str | None:
    "The notebook a module is exported from (nbdev's header line), relative to nbs/."
    text = (REPO / PACKAGE / f"{module}.py").read_text(encoding="utf-8")
    match = re.search(r"File to edit: \.\./nbs/(\S+\.ipynb)", text)
    return match.group(1) if match else None


def api_page(module: str) -> str:
    "The API page of one module: its notebook, then mkdocstrings' rendering of its public names."
    notebook = module_notebook(module)
    source = f"Exported from [`nbs/{notebook}`](../../{notebook}).\n\n" if notebook else ""
    return f"# {PACKAGE}.{module}\n\n{source}::: {PACKAGE}.{module}\n"


def _cell(value) -> str:
    "A value for a Markdown table cell: one line, pipes escaped."
    return str(value).replace("\n", " ").replace("|", "\\|")


def type_name(annotation) -> str:
    "A readable type: `float | None`, `list[str]`, `'random' | 'time'`."
    import typing
    if typing.get_origin(annotation) is typing.Literal: return " | ".join(repr(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and not typing.get_args(annotation): return annotation.__name__
    return str(annotation).replace("typing.", "").replace("NoneType", "None")


def constraints(field) -> str:
    "A field's bounds and pattern, e.g. `> 0, < 1` (pydantic keeps them as metadata objects)."
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "min length", "max_length": "max length",
               "pattern": "pattern"}
    found = []
    for item in field.metadata:
        for attribute, symbol in symbols.items():
            value = getattr(item, attribute, None)
            if value is not None: found.append(f"{symbol} `{value}`" if attribute == "pattern" else f"{symbol} {value}")
    return ", ".join(found)


def default_text(field) -> str:
    "A field's default as YAML-ish JSON (`null`, `[\"a\"]`), or `required`."
    import json
    from pydantic_core import PydanticUndefined
    if field.default is PydanticUndefined and field.default_factory is None: return "required"
    value = field.get_default(call_default_factory=True)
    if hasattr(value, "model_dump"): return "(section)"
    return f"`{json.dumps(value, default=str)}`"


def config_rows(model, prefix: str = "") -> list[dict]:
    "Every key of a pydantic config model, depth first: key path, type, default, meaning (or `undocumented`)."
    from pydantic import BaseModel
    rows = []
    for name, field in model.model_fields.items():
        key, annotation = f"{prefix}{name}", field.annotation
        section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        meaning = field.description or "*undocumented*"
        rows.append({"key": key, "type": "section" if section else type_name(annotation),
                     "constraints": "" if section else constraints(field),
                     "default": "" if section else default_text(field), "meaning": meaning, "section": section})
        if section: rows += config_rows(annotation, key + ".")
    return rows


def config_page() -> str:
    "The configuration reference: one table per section of `Config`, then the defaults as one YAML file."
    import yaml
    from mlops_nb.core import Config
    rows = config_rows(Config)
    header = "| key | type | default | meaning |\n| --- | --- | --- | --- |\n"
    def table(selected): return header + "".join(
        f"| `{r['key']}` | {_cell(r['type'])}{' (' + _cell(r['constraints']) + ')' if r['constraints'] else ''} "
        f"| {_cell(r['default'])} | {_cell(r['meaning'])} |\n" for r in selected)
    top = [r for r in rows if "." not in r["key"] and not r["section"]]
    parts = ["# Configuration reference\n\n",
             "Generated at build time from the config schema (`mlops_nb.core.Config`): every key, its type and bounds, "
             "its default and its meaning. A key not listed here is refused with its path (exit 2). Keys are "
             "written as paths: `data.target` is `target:` under `data:` in the YAML file, or `--set data.target=...` "
             "on the command line.\n\n"]
    undocumented = sum(r["meaning"] == "*undocumented*" for r in rows)
    if undocumented: parts.append(f"{undocumented} of {len(rows)} keys have no description in the schema yet "
                                  "(marked *undocumented*).\n\n")
    parts += ["## Top level\n\n", table(top), "\n"]
    for section in (r for r in rows if r["section"] and "." not in r["key"]):
        inside = [r for r in rows if r["key"].startswith(section["key"] + ".")]
        meaning = "" if section["meaning"] == "*undocumented*" else section["meaning"] + "\n\n"
        parts += [f"## `{section['key']}`\n\n", meaning, table(inside), "\n"]
    defaults = yaml.safe_dump(Config().model_dump(mode="json"), sort_keys=False, default_flow_style=None, width=100)
    parts += ["## All the defaults\n\n",
              "The configuration with no file at all (the quick start on the built-in data):\n\n",
              f"```yaml\n{defaults}```\n"]
    return "".join(parts)


def command_help(args: list[str]) -> str:
    "The help text `mlops-nb ARGS --help` prints, 80 columns wide, without colour codes (CI forces colour on)."
    from typer.testing import CliRunner
    from mlops_nb.cli import app
    result = CliRunner().invoke(app, [*args, "--help"], prog_name="mlops-nb", terminal_width=80,
                                env={"COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"})
    if result.exit_code != 0: raise PluginError(f"mlops-nb {' '.join(args)} --help exited {result.exit_code}")
    return ANSI_ESCAPE.sub("", result.output).rstrip() + "\n"


def exit_codes() -> list[tuple[int, str, str]]:
    "The exit codes: 0, each error class of `mlops_nb.core` with its code, and the monitoring decisions."
    import inspect
    from mlops_nb import core
    from mlops_nb.cli import DECISION_EXIT_CODES
    rows = [(0, "done", "The command finished.")]
    errors = [c for _, c in inspect.getmembers(core, inspect.isclass)
              if issubclass(c, core.MlopsError) and c.__module__ == core.__name__]
    rows += [(c.exit_code, f"`{c.__name__}`", inspect.getdoc(c) or "") for c in errors]
    rows += [(code, f"decision `{name}`", "`mlops-nb monitor`'s decision for the batch.")
             for name, code in DECISION_EXIT_CODES.items() if code]
    return sorted(rows, key=lambda r: r[0])


def cli_page() -> str:
    "The command-line reference: `mlops-nb --help`, then each command's `--help`, then the exit codes."
    import typer
    from mlops_nb.cli import app
    commands = list(typer.main.get_command(app).commands)
    parts = ["# Command-line reference\n\n",
             "Generated at build time from the command line's own help (`mlops-nb --help` and each command's "
             "`--help`).\n\n", "## `mlops-nb`\n\n", f"```text\n{command_help([])}```\n\n"]
    for command in commands: parts += [f"## `mlops-nb {command}`\n\n", f"```text\n{command_help([command])}```\n\n"]
    parts += ["## Exit codes\n\nFrom the error classes of `mlops_nb.core` and the monitoring decisions:\n\n",
              "| code | meaning | when |\n| --- | --- | --- |\n",
              *(f"| {code} | {name} | {_cell(text)} |\n" for code, name, text in exit_codes())]
    return "".join(parts)


# --- MkDocs events ----------------------------------------------------------------------------------------------------

def navigation(pages: list[str], modules: list[str], guides: list[str]) -> list:
    "The site's navigation: overview, guides, notebooks, tutorials (when there are any), reference."
    notebooks = [p for p in pages if p != "index.ipynb" and not p.startswith("tutorials/")]
    tutorials = [p for p in pages if p.startswith("tutorials/")]
    nav = [{"Overview": "index.ipynb"}, *guides, {"Notebooks": notebooks}]
    if tutorials: nav.append({"Tutorials": tutorials})
    nav.append({"Reference": [{"Configuration": "reference/config.md"}, {"Command line": "reference/cli.md"},
                              {"API": [{f"{PACKAGE}.{m}": f"reference/api/{m}.md"} for m in modules]}]})
    return nav


# nbconvert's HTML (through mkdocs-jupyter) loads MathJax from a CDN on every page and Mermaid from a CDN when a
# notebook has a diagram: neither works offline, and no notebook here writes TeX or Mermaid, so both are removed.
CDN_BLOCKS = [re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S),
              re.compile(r'<script type="module">(?:(?!</script>).)*?jp-Mermaid.*?</script>', re.S)]


def without_cdn_scripts(html: str) -> str:
    "A notebook page's HTML without nbconvert's MathJax and Mermaid loaders."
    for block in CDN_BLOCKS: html = block.sub("", html)
    return html


def on_page_content(html, page, config, files):
    "Remove the CDN loaders nbconvert puts into notebook pages."
    return without_cdn_scripts(html) if page.file.src_uri.endswith(".ipynb") else html


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns .ipynb files into pages
def on_files(files, config):
    "Add the notebooks (prepared for reading) and the generated reference pages; set the navigation."
    started, execute = time.monotonic(), execute_notebooks()
    pages = notebook_pages()
    folder = prepare_notebooks(pages, cache_dir(), execute)
    for page in pages:
        files.append(File(page, src_dir=str(folder), dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    modules = package_modules()
    generated = {"reference/config.md": config_page(), "reference/cli.md": cli_page(),
                 **{f"reference/api/{m}.md": api_page(m) for m in modules}}
    for path, content in generated.items(): files.append(File.generated(config, path, content=content))
    guides = [f.src_uri for f in files.documentation_pages() if f.src_uri.endswith(".md") and "/" not in f.src_uri]
    config.nav = navigation(pages, modules, sorted(guides))
    mode = "executed" if execute else "without outputs"
    log.info(f"{len(pages)} notebook pages ({mode}), {len(generated)} generated pages, in {time.monotonic() - started:.1f} s")
    return files
