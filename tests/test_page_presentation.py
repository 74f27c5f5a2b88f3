"""An executed chapter as its page shows it: parameters, alt texts, failed checks,
tables with fixed precision (twotower.book.present, twotower.analysis.alt_text,
twotower.book.setup.style_outputs)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import altair as alt  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from nbformat.v4 import new_code_cell, new_notebook, new_output  # noqa: E402

from twotower.analysis import alt_text  # noqa: E402
from twotower.book import present  # noqa: E402


def test_alt_text_of_a_figure_is_its_suptitle_and_panel_titles():
    fig, (left, right) = plt.subplots(1, 2)
    fig.suptitle("Preference against frequency")
    left.set_title("raw")
    right.set(xlabel="log count", ylabel="pref")  # no title: its axes say it
    assert alt_text.figure_alt_text(fig) == \
        "Preference against frequency; raw; pref against log count"
    plt.close(fig)


def test_alt_text_of_a_figure_that_says_nothing_is_not_a_path():
    fig, _ = plt.subplots()
    assert alt_text.figure_alt_text(fig) == "figure"
    plt.close(fig)


def test_alt_text_of_a_chart_is_its_title_else_its_axes():
    data = pd.DataFrame({"a": [1, 2], "b": [3, 4]})
    titled = alt.Chart(data, title="Two points").mark_point().encode(x="a", y="b")
    assert alt_text.chart_alt_text(titled.to_dict()) == "Two points"
    bare = alt.Chart(data).mark_point().encode(x=alt.X("a", title="count"), y="b")
    assert alt_text.chart_alt_text(bare.to_dict()) == "b against count"
    layered = alt.layer(bare, titled.properties(title="Layer title"))
    assert "Layer title" in alt_text.chart_alt_text(layered.to_dict())


def test_the_altair_renderer_hands_the_alt_text_to_the_output():
    chart = alt.Chart(pd.DataFrame({"a": [1]}), title="One").mark_point().encode(x="a")
    data, metadata = alt_text.svg_bundle(chart.to_dict())
    assert data["image/svg+xml"].lstrip().startswith("<svg")
    assert metadata == {"image/svg+xml": {"alt": "One"}}


def _executed_chapter(tmp_path, runs_dir):
    parameters = new_code_cell('# Parameters: the build injects its own values\n'
                               'PRESET = "auto"  # or "smoke"\nSEED = 0\n'
                               f'RUNS_DIR = "runs"  # where runs go')
    parameters.metadata["tags"] = ["parameters"]
    injected = new_code_cell(f'PRESET = "smoke"\nSEED = 3\nRUNS_DIR = "{runs_dir}"')
    injected.metadata["tags"] = ["injected-parameters"]
    figure = new_code_cell("plt.show()", outputs=[
        new_output("display_data", data={"image/png": "iVBOR"},
                   metadata={"image/png": {"alt": "Sorted preference"}}),
        new_output("display_data", data={"image/svg+xml": "<svg/>"},
                   metadata={"image/svg+xml": {"alt": "Chart title"}})])
    path = tmp_path / "chapter.ipynb"
    nbformat.write(new_notebook(cells=[parameters, injected, figure]), path)
    return path


def test_the_parameters_cell_shows_the_executed_values_and_no_absolute_path(tmp_path):
    root = tmp_path / "repo"
    path = _executed_chapter(tmp_path, root / "_build" / "runs" / "smoke")
    present.present(path, {"PRESET": "smoke", "SEED": 3,
                           "RUNS_DIR": str(root / "_build" / "runs" / "smoke")}, root)
    cells = nbformat.read(path, as_version=4).cells
    assert [c.metadata.get("tags") for c in cells[:2]] == [["parameters"], None]
    assert cells[0].source == (
        "# Parameters: the values this page was executed with\n"
        'PRESET = "smoke"  # or "smoke"\nSEED = 3\n'
        'RUNS_DIR = "_build/runs/smoke"  # where runs go')
    assert str(tmp_path) not in "".join(c.source for c in cells)


def test_a_warning_that_names_a_run_directory_shows_it_relative_to_the_repository(
        tmp_path):
    root = (tmp_path / "repo").resolve()
    run = root / "_build" / "runs" / "smoke" / "step-0000060"
    notebook = new_notebook(cells=[new_code_cell("train()", outputs=[
        new_output("stream", name="stderr", text=f"{run} was computed with 2 threads\n"),
        new_output("execute_result", data={"text/plain": f"PosixPath('{run}')",
                                           "text/html": f"<code>{run}</code>"}),
        new_output("stream", name="stdout", text="/elsewhere/file stays\n")])])
    assert present.relative_paths_in_outputs(notebook, root) == 2
    first, second, third = notebook.cells[0].outputs
    assert first.text == "_build/runs/smoke/step-0000060 was computed with 2 threads\n"
    assert second.data["text/plain"] == "PosixPath('_build/runs/smoke/step-0000060')"
    assert str(root) not in second.data["text/html"]
    assert third.text == "/elsewhere/file stays\n"


def test_every_figure_of_a_cell_lends_its_alt_text_to_the_page(tmp_path):
    path = _executed_chapter(tmp_path, "/x")
    present.present(path, {"PRESET": "smoke"}, tmp_path)
    figure = nbformat.read(path, as_version=4).cells[-1]
    assert figure.metadata["mystnb"]["image"]["alt"] == \
        "Sorted preference / Chart title"


@pytest.mark.parametrize("text, expected", [
    ("✔ check_a passed: 3 cases\n", ""),
    ("✔ check_a passed\n✘ check_b: values differ. Hint: x\n→ the rest ...\n",
     "cell 7: ✘ check_b: values differ. Hint: x"),
])
def test_a_failed_check_is_found_in_the_outputs(text, expected):
    cell = new_code_cell("b = ex.check_b(b)", execution_count=7,
                         outputs=[new_output("stream", name="stdout", text=text)])
    assert present.failed_check(new_notebook(cells=[cell])) == expected


def test_a_figure_shown_in_a_kernel_carries_its_alt_text_and_tables_three_digits(
        tmp_path):
    papermill = pytest.importorskip("papermill")
    cells = ["import matplotlib.pyplot as plt\nimport pandas as pd\n"
             "import twotower as tt\ntt.setup('smoke', 0, 'cpu', quiet=True)",
             "fig, ax = plt.subplots()\nax.plot([1, 2])\nax.set_title('A line')\n"
             "plt.show()",
             "pd.DataFrame({'x': [0.1234567, 2.0]})"]
    source = tmp_path / "kernel.ipynb"
    notebook = new_notebook(cells=[new_code_cell(c) for c in cells])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, source)
    papermill.execute_notebook(str(source), str(tmp_path / "out.ipynb"),
                               progress_bar=False)
    done = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
    assert done[1].outputs[0].metadata["image/png"]["alt"] == "A line"
    assert "0.123" in done[2].outputs[0].data["text/html"]
    assert "0.1234" not in done[2].outputs[0].data["text/html"]
