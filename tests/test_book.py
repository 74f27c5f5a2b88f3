"""The book's sources: clean notebooks, the chapter template, the build machinery."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from twotower.book import build as book
from twotower.book import notebooks, vendor

ROOT = Path(__file__).resolve().parents[1]
CONFIG = book.read_config(ROOT)
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
CHAPTERS = book.chapters(ROOT)


# --- stored notebooks -----------------------------------------------------------------

@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_valid_and_stored_without_outputs(path):
    assert notebooks.notebook_problems(path, CONFIG, ROOT) == []


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_follows_the_template(path):
    assert notebooks.structure_problems(path) == []


def test_every_notebook_in_book_is_a_chapter_of_the_toc():
    assert CHAPTERS, "_toc.yml lists no notebook"
    assert sorted(CHAPTERS) == NOTEBOOKS


def test_every_toc_entry_exists():
    for entry in book.toc_entries(ROOT):
        found = [ROOT / f"{entry}{suffix}" for suffix in (".md", ".ipynb")]
        assert any(path.is_file() for path in found), \
            f"_toc.yml lists {entry}, which is neither .md nor .ipynb"


def test_config_keeps_execution_off_and_offline_assets_out_of_static():
    assert CONFIG["execute"]["execute_notebooks"] == "off"
    sphinx = CONFIG["sphinx"]["config"]
    assert sphinx["mathjax_path"].startswith("../vendor/")
    assert all(path.startswith("../vendor/") for path in sphinx["nb_ipywidgets_js"])
    # every .js and .css in a static folder is loaded on every page: only the book's
    # stylesheet (beside it, the favicon that _config.yml names)
    assert not (ROOT / "_static").exists()
    static = ROOT / "book" / "_static"
    assert sorted(p.name for p in static.iterdir() if p.suffix in (".js", ".css")) == \
        sphinx["html_css_files"] == ["twotower.css"]
    assert (ROOT / CONFIG["html"]["favicon"]).is_file()


def test_widget_pages_load_the_embed_setup_between_requirejs_and_the_embedder():
    """Without it the embedder looks for its fonts beside the page and calls MathJax 2's
    API (twotower.book.vendor.EMBED_SETUP_JS): console errors on every widget page."""
    from twotower.book import vendor

    scripts = list(CONFIG["sphinx"]["config"]["nb_ipywidgets_js"])
    assert [s.split("/")[-1] for s in scripts] == ["require.js", "embed-setup.js",
                                                    "embed-amd.js"]
    assert scripts[1] == f"../vendor/{vendor.EMBED_SETUP}"
    assert "@jupyter-widgets/html-manager/dist" in vendor.EMBED_SETUP_JS
    assert "MathJax" in vendor.EMBED_SETUP_JS
    assert '"@jupyter-widgets": dist' in vendor.EMBED_SETUP_JS  # the second stylesheet


def _book_extension(name: str):
    """A local Sphinx extension of book/_ext, imported from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        name, ROOT / "book" / "_ext" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_page_keeps_one_copy_of_each_script_and_a_light_default_mode():
    """book/_ext/twotower_page.py: sphinx-thebe's inline script came twice, once with
    the filename None and once with "" (a SyntaxError in every page's console)."""
    from sphinx.builders.html._assets import _JavaScript

    page = _book_extension("twotower_page")
    thebe = {"body": "const THEBE_JS_URL = 'x'"}
    scripts = [_JavaScript("_static/a.js"), _JavaScript(None, **thebe),
               _JavaScript("_static/b.js", **{"async": "async"}), _JavaScript("", **thebe),
               _JavaScript("_static/a.js"), _JavaScript("_static/b.js")]
    context = {"script_files": scripts, "default_mode": ""}
    page.one_copy_of_each_script(None, "p", "page.html", context, None)
    assert context["script_files"] == [scripts[0], scripts[1], scripts[2], scripts[5]]
    page.default_mode(None, "p", "page.html", context, None)
    assert context["default_mode"] == page.DEFAULT_MODE == "light"
    context["default_mode"] = "dark"  # a configured mode is kept
    page.default_mode(None, "p", "page.html", context, None)
    assert context["default_mode"] == "dark"


def _notebook_with(cells, path: Path) -> Path:
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, path)
    return path


def test_hygiene_check_fails_on_outputs_and_strip_repairs_it(tmp_path):
    cell = new_code_cell("print(1)", execution_count=3)
    cell.outputs = [new_output("stream", name="stdout", text="1\n")]
    path = _notebook_with([cell], tmp_path / "dirty.ipynb")
    problems = notebooks.notebook_problems(path)
    assert any("outputs" in p for p in problems)
    assert any("execution count" in p for p in problems)
    notebook = nbformat.read(path, as_version=4)
    assert notebooks.strip_notebook(notebook)
    nbformat.write(notebook, path)
    assert notebooks.notebook_problems(path) == []


def test_hygiene_check_fails_on_an_invalid_notebook(tmp_path):
    path = tmp_path / "broken.ipynb"
    path.write_text('{"cells": "not a list"}')
    assert "not a valid notebook" in notebooks.notebook_problems(path)[0]


def test_template_check_flags_a_chapter_without_parameters_or_exercises(tmp_path):
    cells = [new_markdown_cell("# Title"), new_code_cell("import twotower")]
    path = _notebook_with(cells, tmp_path / "99_bare.ipynb")
    problems = " ".join(notebooks.structure_problems(path))
    for expected in ("Colab badge", "install cell", "PRESET", "RUNS_DIR",
                     "learning objectives", "hide-input", "two exercises", "summary"):
        assert expected in problems


# --- links from _config.yml -----------------------------------------------------------

def test_colab_links_are_built_from_the_repository_in_config():
    owner, name, branch = notebooks.repository(CONFIG)
    assert CONFIG["repository"]["url"] == f"https://github.com/{owner}/{name}"
    assert notebooks.colab_url(CONFIG, "book/01_x") == (  # the badge: the student copy
        f"https://colab.research.google.com/github/{owner}/{name}/blob/{branch}/"
        "colab/student/01_x.ipynb")


def test_links_command_rewrites_badge_and_install_after_a_change_of_url(tmp_path):
    shutil.copytree(ROOT / "book", tmp_path / "book")
    shutil.copy(ROOT / "_toc.yml", tmp_path / "_toc.yml")
    config = dict(CONFIG, repository=dict(CONFIG["repository"],
                                          url="https://github.com/someone/fork"))
    (tmp_path / "_config.yml").write_text(yaml.safe_dump(config))
    chapter = tmp_path / CHAPTERS[0].relative_to(ROOT)
    assert notebooks.notebook_problems(chapter, config, tmp_path)  # stale links found
    assert book.main(["--root", str(tmp_path), "links"]) == 0
    assert notebooks.notebook_problems(chapter, config, tmp_path) == []
    text = chapter.read_text()
    assert "github/someone/fork/blob/main/colab/student/" in text
    assert "git+https://github.com/someone/fork@main" in text


# --- student copies -------------------------------------------------------------------

def test_student_copy_drops_solutions_and_keeps_stubs_and_checks(tmp_path):
    assert book.main(["--root", str(ROOT), "student", "--out", str(tmp_path)]) == 0
    for chapter in CHAPTERS:
        source = nbformat.read(chapter, as_version=4)
        copy = nbformat.read(tmp_path / chapter.name, as_version=4)
        solutions = [cell for cell in source.cells
                     if "solution" in cell.metadata.get("tags", [])]
        assert [c.source for c in copy.cells if c.cell_type == "code"] == [
            c.source for c in source.cells
            if c.cell_type == "code" and c not in solutions]
        assert not any("solution" in c.metadata.get("tags", []) for c in copy.cells)
        text = "\n".join(c.source for c in copy.cells)
        assert "{solution-start}" not in text and "{solution-end}" not in text
        assert text.count("raise NotImplementedError") >= 2
        assert len(re.findall(r"\bex\.check_\w+\(", text)) >= 2


# --- the book's pages -----------------------------------------------------------------

def _all_sources() -> str:
    texts = [(ROOT / f"{entry}.md").read_text() for entry in book.toc_entries(ROOT)
             if (ROOT / f"{entry}.md").is_file()]
    for chapter in CHAPTERS:
        texts += [c.source for c in nbformat.read(chapter, as_version=4).cells]
    return "\n".join(texts)


def test_every_citation_is_in_references_bib():
    bib = (ROOT / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    cited = {key.strip() for group in re.findall(r"\{cite[:a-z]*\}`([^`]+)`",
                                                  _all_sources())
             for key in group.split(",")}
    assert cited and cited <= keys, f"not in references.bib: {cited - keys}"


def test_every_term_is_in_the_glossary():
    glossary = (ROOT / "book" / "glossary.md").read_text()
    terms = {line.strip().lower() for line in glossary.splitlines()
             if line and not line.startswith((" ", "#", "`", "Terms"))}
    used = {re.sub(r".*<(.+)>", r"\1", term).strip().lower()
            for term in re.findall(r"\{term\}`([^`]+)`", _all_sources())}
    assert used <= terms, f"not in book/glossary.md: {used - terms}"


def test_api_page_documents_every_public_module():
    api = (ROOT / "book" / "api.md").read_text()
    package = ROOT / "twotower"
    modules = {".".join(("twotower",) + path.relative_to(package).with_suffix("").parts)
               for path in package.rglob("*.py")
               if not any(part.startswith("_") for part in path.relative_to(package).parts)}
    modules |= {"twotower." + ".".join(path.parent.relative_to(package).parts)
                for path in package.rglob("__init__.py") if path.parent != package}
    listed = set(re.findall(r"twotower-module:: (twotower[\w.]*)", api))
    assert modules <= listed, f"add to book/api.md: {sorted(modules - listed)}"
    assert listed <= modules | {"twotower"}, \
        f"book/api.md lists missing modules: {listed - modules}"


# --- build machinery (no HTML, no network) --------------------------------------------

def test_offline_check_flags_a_cdn_script_and_accepts_local_copies(tmp_path):
    (tmp_path / "a.html").write_text(
        '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js">')
    (tmp_path / "b.html").write_text(
        '<script src="../_static/../vendor/mathjax/es5/tex-mml-chtml.js"></script>'
        '<script src="../vendor/html-manager/dist/embed-amd.js"></script>')
    assert [p.split(":")[0] for p in vendor.offline_problems(tmp_path)] == ["a.html"]


def test_trimmed_toc_leaves_out_chapters_without_an_executed_copy():
    toc = {"format": "jb-book", "root": "book/intro", "parts": [
        {"caption": "one", "chapters": [{"file": "book/01_a"}, {"file": "book/02_b"}]},
        {"caption": "two", "chapters": [{"file": "book/03_c"}]}]}
    trimmed = book._trim_toc(toc, lambda entry: entry != "book/03_c")
    assert [part["caption"] for part in trimmed["parts"]] == ["one"]
    assert len(trimmed["parts"][0]["chapters"]) == 2


def test_select_chapters_by_prefix_and_refuse_unknown_ones():
    paths = [Path("book/01_a.ipynb"), Path("book/02_b.ipynb")]
    assert book.select_chapters(paths, ["02"]) == [paths[1]]
    assert book.select_chapters(paths, None) == paths
    with pytest.raises(book.TwotowerError, match="01_a, 02_b"):
        book.select_chapters(paths, ["07"])


def test_build_refuses_an_unknown_preset_in_one_line(capsys):
    assert book.main(["--root", str(ROOT), "build", "--preset", "enormous"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def _tiny_book(root: Path, chapters: dict[str, str]) -> None:
    (root / "book").mkdir(parents=True)
    (root / "_config.yml").write_text((ROOT / "_config.yml").read_text())
    files = [{"file": f"book/{name}"} for name in chapters]
    (root / "_toc.yml").write_text(yaml.safe_dump(
        {"format": "jb-book", "root": "book/intro",
         "parts": [{"caption": "t", "chapters": files}]}))
    (root / "book" / "intro.md").write_text("# Intro\n")
    for name, body in chapters.items():
        parameters = new_code_cell('PRESET = "small"\nSEED = 0\nDEVICE = "auto"\n'
                                   'RUNS_DIR = "runs"')
        parameters.metadata["tags"] = ["parameters"]
        _notebook_with([parameters, new_code_cell(body)],
                       root / "book" / f"{name}.ipynb")


def test_build_injects_parameters_keeps_going_after_a_failure_and_times_it(tmp_path):
    _tiny_book(tmp_path, {
        "01_fails": "raise RuntimeError('boom')",
        "02_works": "from pathlib import Path\n"
                    "Path(RUNS_DIR, 'seen.txt')"
                    ".write_text(f'{PRESET} {SEED} {DEVICE}')"})
    out = tmp_path / "_build"
    status = book.main(["--root", str(tmp_path), "build", "--preset", "smoke",
                        "--seed", "3", "--out", str(out), "--no-html"])
    assert status == 1
    assert (out / "runs" / "smoke" / "seen.txt").read_text() == "smoke 3 auto"
    timings = json.loads((out / "executed" / "timings.json").read_text())
    assert [(c["name"], c["status"]) for c in timings["chapters"]] == [
        ("01_fails", "failed"), ("02_works", "ok")]
    assert "RuntimeError" in timings["chapters"][0]["error"]
    failed = nbformat.read(timings["chapters"][0]["notebook"], as_version=4)
    assert any(output.get("ename") == "RuntimeError"
               for cell in failed.cells for output in cell.get("outputs", []))
    assert not [c for c in failed.cells  # its values are in the visible cell
                if "injected-parameters" in c.metadata.get("tags", [])]
    shown = [c for c in failed.cells if "parameters" in c.metadata.get("tags", [])]
    assert shown[0].source == ('PRESET = "smoke"\nSEED = 3\nDEVICE = "auto"\n'
                               'RUNS_DIR = "_build/runs/smoke"')


def test_a_failed_exercise_check_fails_its_chapter(tmp_path):
    _tiny_book(tmp_path, {"01_check": "print('✔ check_a passed: 3 cases')\n"
                                      "print('✘ check_b: values differ. Hint: ...')"})
    out = tmp_path / "_build"
    assert book.main(["--root", str(tmp_path), "build", "--out", str(out),
                      "--no-html"]) == 1
    timings = json.loads((out / "executed" / "timings.json").read_text())
    assert timings["chapters"][0]["error"].endswith("✘ check_b: values differ. "
                                                    "Hint: ...")


def _no_chapter_may_run(*args, **kwargs):
    raise AssertionError("a chapter was executed before the build's checks")


@pytest.mark.parametrize("missing", ["vendor", "module", "data"])
def test_build_checks_what_it_needs_before_the_first_chapter(tmp_path, monkeypatch,
                                                             capsys, missing):
    from twotower.data import sources

    _tiny_book(tmp_path, {"01_a": "print(1)"})
    monkeypatch.setattr(book, "execute_chapter", _no_chapter_may_run)
    if missing == "vendor":  # a fresh cache, and a registry where nothing listens
        monkeypatch.setenv("TWOTOWER_CACHE", str(tmp_path / "cache"))
        monkeypatch.setattr(vendor, "NPM_REGISTRY", "http://127.0.0.1:9")
        expected = "could not download http://127.0.0.1:9/mathjax"
    elif missing == "module":
        monkeypatch.setattr(book, "BOOK_MODULES", (*book.BOOK_MODULES, "no_such_mod"))
        expected = "the book build needs no_such_mod: run python3 tasks.py setup"
    else:
        copy = tmp_path / "_data"
        shutil.copytree(sources.data_dir(), copy)
        (copy / "multi30k" / "train.fr.xz").write_bytes(b"")
        monkeypatch.setattr(sources, "data_dir", lambda: copy)
        monkeypatch.setattr(sources, "_whole", set())
        expected = "train.fr.xz is damaged"
    status = book.main(["--root", str(tmp_path), "build", "--preset", "smoke",
                        "--out", str(tmp_path / "_build")])
    err = capsys.readouterr().err
    assert status == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_chapter_10_without_its_treebank_stops_in_seconds_before_training(
        tmp_path, monkeypatch):
    site = tmp_path / "site"  # the package as installed, less one file of its data
    shutil.copytree(ROOT / "twotower", site / "twotower",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (site / "twotower" / "_data" / "ud-english-ewt" / "en_ewt-ud-dev.conllu.xz").unlink()
    monkeypatch.setenv("PYTHONPATH", str(site))  # the chapter's kernel imports the copy
    runs = tmp_path / "runs"
    chapter = next(path for path in CHAPTERS if path.name.startswith("10_"))
    run = book.execute_chapter(chapter, tmp_path / "10.ipynb", {
        "PRESET": "smoke", "SEED": 0, "DEVICE": "cpu", "RUNS_DIR": str(runs)})
    assert run.status == "failed"
    assert "TwotowerError" in run.error and "en_ewt-ud-dev.conllu.xz is missing" in \
        run.error and str(site) in run.error
    assert run.seconds < 90  # kernel start and imports; chapter 9's runs take minutes
    assert not runs.exists() or not any(runs.iterdir())
    executed = nbformat.read(tmp_path / "10.ipynb", as_version=4)
    failing = [c for c in executed.cells if any(o.get("output_type") == "error"
                                                 for o in c.get("outputs", []))]
    assert len(failing) == 1 and "setup(PRESET" in failing[0].source


def test_check_command_exits_non_zero_on_a_dirty_chapter(tmp_path, capsys):
    _tiny_book(tmp_path, {"01_dirty": "print(1)"})
    path = tmp_path / "book" / "01_dirty.ipynb"
    notebook = nbformat.read(path, as_version=4)
    notebook.cells[1].outputs = [new_output("stream", name="stdout", text="1\n")]
    nbformat.write(notebook, path)
    assert book.main(["--root", str(tmp_path), "check"]) == 1
    assert "has outputs" in capsys.readouterr().out
    assert book.main(["--root", str(tmp_path), "strip"]) == 0
    assert notebooks.notebook_problems(path) == []


# --- helpers the chapters call --------------------------------------------------------

def test_live_loss_plot_records_everything_and_draws_nothing_outside_ipython():
    from matplotlib.figure import Figure

    from twotower.book.live import LiveLossPlot

    plot = LiveLossPlot(every=2)
    assert not plot._live
    for step in range(1, 6):
        plot.on_step_end({"phase": "joint", "step": step, "steps": 5,
                          "loss": 10.0 / step, "lr": 1e-3})
    plot.on_eval({"phase": "joint", "step": 5, "val_loss": 2.5, "val_ppl": 12.2})
    plot.on_step_end({"phase": "readout_a", "step": 1, "steps": 3, "loss": 4.0,
                      "lr": 5e-4})
    plot.on_train_end({})
    assert plot.history["joint"]["step"] == [1, 2, 3, 4, 5]
    assert plot.history["joint"]["val_ppl"] == [12.2]
    assert plot._handle is None
    figure = plot.figure()
    assert isinstance(figure, Figure) and len(figure.axes[0].lines) >= 3


def test_live_loss_plot_redraws_in_place_in_a_notebook(monkeypatch):
    import IPython.display

    from twotower.book.live import LiveLossPlot

    calls = []

    class Handle:
        def update(self, image, metadata=None):
            calls.append(("update", image, metadata))

    def display(image, display_id=False, metadata=None):
        calls.append(("display", image, metadata))
        return Handle()

    monkeypatch.setattr(IPython.display, "display", display)
    plot = LiveLossPlot(every=3)
    plot._live = True
    for step in range(1, 10):
        plot.on_step_end({"phase": 1, "step": step, "steps": 9, "loss": 1.0, "lr": 0.1})
    plot.on_train_end({})
    assert [kind for kind, *_ in calls] == ["display", "update", "update", "update"]
    assert calls[0][1].format == "png" and calls[0][1].data.startswith(b"\x89PNG")
    alt = calls[-1][2]["image/png"]["alt"]  # what the page's alt text is made from
    assert alt == "loss (nats) against step; learning rate against step", alt


SETUP_CALL = re.compile(
    r"^PRESET, device = tt\.setup\(PRESET, SEED, DEVICE(?:, data=\((.*)\))?\)", re.M)
READS = {"ud-english-ewt": re.compile(r"\btt\.ud\.|\btt\.scorecard\."),
         "multi30k": re.compile(r"\bbilingual\.")}


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_checks_its_data_in_its_first_code_cell(path):
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"
             and not {"parameters", "remove-cell"} & set(c.metadata.get("tags", []))]

    def imports_only(text):
        return all(line.startswith(("import ", "from ", " ", "#")) or not line.strip()
                   for line in text.splitlines())

    first = next(c.source for c in cells if not imports_only(c.source))
    match = SETUP_CALL.search(first)
    assert match, f"{path.name}: the first code cell must call tt.setup(PRESET, ...)"
    assert imports_only(first[:match.start()]), "only imports may come before setup()"
    named = set(re.findall(r'"([\w-]+)"', match.group(1) or ""))
    code = "\n".join(c.source for c in cells)
    needed = {corpus for corpus, pattern in READS.items() if pattern.search(code)}
    assert named == needed, f"{path.name}: setup(data=...) must name {needed}"


def test_notebook_setup_seeds_styles_and_picks_the_cpu(capsys):
    import matplotlib as mpl
    import torch

    from twotower.analysis import plotting
    from twotower.book.setup import in_colab, setup

    preset, device = setup("auto", seed=5, device="cpu")
    assert (preset, device) == ("small", torch.device("cpu"))
    first = torch.rand(1)
    setup("smoke", seed=5, device="cpu", quiet=True)
    assert torch.equal(first, torch.rand(1))
    out = capsys.readouterr().out
    assert "device cpu" in out and "preset small (auto: no CUDA GPU)" in out
    assert "data: wikitext-2 (bundled, checked)" in out
    assert mpl.rcParams["axes.spines.top"] is False
    assert not in_colab()
    import altair as alt

    assert alt.theme.active == plotting.ALTAIR_THEME
    assert alt.renderers.active == "twotower-svg"  # static SVG with its alt text


def test_plotting_helpers_skip_nan_and_draw_the_architecture():
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    from twotower.analysis import diagram, plotting

    values = np.array([0.5, np.nan, -1.0, 2.0])
    ax = plotting.sorted_curve(values)
    assert list(ax.lines[0].get_ydata()) == [2.0, 0.5, -1.0]
    plotting.hist(values)
    ax = plotting.agreement([1, 2, 3, np.nan], [1, 2, 4, 5])
    assert "n = 3" in ax.get_title()
    with pytest.raises(book.TwotowerError):
        plotting.agreement([1, 2], [1, 2, 3])
    ax = diagram.architecture_diagram(n_layers=2, show_readouts=True)
    texts = " ".join(t.get_text() for t in ax.texts)
    for word in ("shared token embedding", "tower A", "tower B", "fused head",
                 "decoder", "readout A", "block 2"):
        assert word in texts
    assert plotting.tower_color(1) == plotting.TOWER_COLORS["B"]
    with pytest.raises(book.TwotowerError):
        diagram.architecture_diagram(n_layers=40)


def test_docstring_extension_escapes_absolute_values_but_not_literals_or_tables():
    twotower_docs = _book_extension("twotower_docs")
    lines = ["sum of |pred - gold| and |r|", "``|x|`` and |y|", "| a | b |", ">>> |z|"]
    twotower_docs._escape_absolute_values(None, None, None, None, None, lines)
    assert lines == [r"sum of \|pred - gold\| and \|r\|", r"``|x|`` and \|y\|",
                     "| a | b |", ">>> |z|"]
    assert twotower_docs._defined("twotower.errors", "TwotowerError")
    assert not twotower_docs._defined("twotower.errors", "NoSuchThing")


def test_runs_on_drive_mounts_drive_in_colab_and_changes_nothing_elsewhere(
        tmp_path, monkeypatch, capsys):
    import sys
    import types

    from twotower.book.setup import runs_on_drive

    assert runs_on_drive("runs") == "runs"
    assert "not in Colab" in capsys.readouterr().out
    mounted = []
    drive = types.SimpleNamespace(mount=mounted.append)
    colab = types.ModuleType("google.colab")
    colab.drive = drive
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    folder = tmp_path / "MyDrive" / "twotower" / "runs"
    assert runs_on_drive("runs", str(folder)) == str(folder)
    assert mounted == ["/content/drive"] and folder.is_dir()
