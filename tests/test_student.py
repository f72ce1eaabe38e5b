"""The homework path: student notebooks written by ddpm_lib.student, and lecture solutions against their checks.

* The generator follows the convention (``# Solution: …`` cells tagged ``solution``, the answer between
  ``# BEGIN SOLUTION`` / ``# END SOLUTION``) and refuses notebooks that break it.
* A student notebook keeps no solution text, each exercise cell raises NotImplementedError naming its
  exercise, and the whole notebook runs in quick mode under nbval with only those cells failing.
* The solution between the markers of each lecture notebook passes its check, so lectures and checks
  cannot drift apart; and no cell uses a variable that only an exercise defines.
"""
import ast
import io
import json
import os
import re
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from conftest import quick_parameters

from ddpm_lib import checks, student

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
CHECK_CALL = re.compile(r"^assert checks\.(check_\w+)\((\w+)\)\s*$", re.M)


def load(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def code(cell):
    """A code cell's source as plain Python (IPython magics become ``pass``)."""
    return re.sub(r"^(\s*)[%!].*$", r"\1pass", student.source_text(cell), flags=re.M)


def is_solution(cell):
    return "solution" in student.tags(cell)


def setup_namespace(nb):
    """The parameters and the imports of a notebook's setup cell: what its exercise cells may use."""
    ns = {}
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    exec(code(next(c for c in cells if "parameters" in student.tags(c))), ns)
    setup = next(c for c in cells if "import ddpm_lib as dl" in student.source_text(c))
    imports = [node for node in ast.walk(ast.parse(code(setup))) if isinstance(node, (ast.Import, ast.ImportFrom))]
    exec(compile(ast.Module(body=imports, type_ignores=[]), "setup", "exec"), ns)
    return ns


def checked_exercises():
    """(notebook, label, code up to END SOLUTION, check name, function name) for every checked exercise."""
    found = []
    for path in NOTEBOOKS:
        for label, through_end, full in student.exercises(load(path)):
            for check, fn in CHECK_CALL.findall(full):
                found.append(pytest.param(path, label, through_end, check, fn, id=f"{path.stem}-{check}"))
    return found


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    with redirect_stdout(io.StringIO()):
        student.write_student_notebooks(NOTEBOOK_DIR, out)
    return out


# --------------------------------------------------------------------------- the generator on small examples
def cell(source, cell_type="code", tags=()):
    c = {"cell_type": cell_type, "metadata": {"tags": list(tags)}, "source": source}
    if cell_type == "code":
        c.update(outputs=[{"output_type": "stream", "name": "stdout", "text": "7\n"}], execution_count=3)
    return c


FUNCTION_SOLUTION = ('# Solution: Exercise 9.1 (double)\n'
                     'def double(x):\n'
                     '    """Twice x."""\n'
                     '    # BEGIN SOLUTION\n'
                     '    y = x + x\n'
                     '    return y\n'
                     '    # END SOLUTION\n'
                     '\n'
                     'assert double(2) == 4\n')


def test_a_function_solution_becomes_a_stub_with_its_signature_and_check():
    new = student.student_cell(cell(FUNCTION_SOLUTION, tags=["solution", "other"]))
    assert "".join(new["source"]) == (
        '# Exercise 9.1 (double): your answer\n'
        'def double(x):\n'
        '    """Twice x."""\n'
        '    raise NotImplementedError("Exercise 9.1 (double): write your solution here")\n'
        '\n'
        'assert double(2) == 4\n')
    assert new["metadata"]["tags"] == ["raises-exception", "other"]
    assert new["outputs"] == [] and new["execution_count"] is None
    with pytest.raises(NotImplementedError, match=r"Exercise 9\.1 \(double\)"):
        exec("".join(new["source"]), {})


def test_a_top_level_solution_becomes_a_raise_and_discussions_are_dropped():
    solution = "# Solution: Exercise 9.2 (sum)\n# BEGIN SOLUTION\ntotal = x + 1\n# END SOLUTION\n"
    nb = {"metadata": {"papermill": {"duration": 1.0}, "kernelspec": {"name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5,
          "cells": [cell("x = 1\n"),
                    cell(solution, tags=["solution"]),
                    cell("Why: because.", "markdown", ["solution"]),
                    cell("## Summary", "markdown")]}
    out = student.student_notebook(nb)
    assert [c["cell_type"] for c in out["cells"]] == ["code", "code", "markdown"]
    assert out["cells"][0]["source"] == "x = 1\n" and out["cells"][0]["outputs"] == []
    assert "".join(out["cells"][1]["source"]) == (
        '# Exercise 9.2 (sum): your answer\n'
        'raise NotImplementedError("Exercise 9.2 (sum): write your solution here")\n')
    assert out["metadata"] == {"kernelspec": {"name": "python3"}}
    assert nb["cells"][1]["metadata"]["tags"] == ["solution"], "the lecture notebook itself is left untouched"


HEAD = "# Solution: Exercise 9.3 (a)\n"


@pytest.mark.parametrize("source, tags, problem", [
    ("x = 1\n# BEGIN SOLUTION\ny = 2\n# END SOLUTION\n", ["solution"], "must start with '# Solution: <exercise>'"),
    (HEAD + "# BEGIN SOLUTION\ny = 2\n", ["solution"], "exactly one"),
    (HEAD + "# BEGIN SOLUTION\n# BEGIN SOLUTION\ny = 2\n# END SOLUTION\n", ["solution"], "exactly one"),
    (HEAD + "# BEGIN SOLUTION\n# END SOLUTION\n", ["solution"], "at least one line"),
    (HEAD + "def f():\n    # BEGIN SOLUTION\n    return 1\n# END SOLUTION\n", ["solution"], "indented alike"),
    (HEAD + "# BEGIN SOLUTION\ny = 2\n# END SOLUTION\n", [], "not tagged 'solution'"),
])
def test_a_cell_that_breaks_the_convention_is_refused(source, tags, problem):
    with pytest.raises(student.NotebookError, match=re.escape(problem)):
        student.student_notebook({"metadata": {}, "cells": [cell(source, tags=tags)]})


def test_an_untagged_cell_with_only_the_end_marker_is_refused():
    """An untagged code cell holding only '# END SOLUTION' is refused like one with the BEGIN marker.
    Catches: looking for the BEGIN marker (or the header) alone, so a stray END line slips through."""
    with pytest.raises(student.NotebookError, match="not tagged 'solution'"):
        student.student_notebook({"metadata": {}, "cells": [cell("# END SOLUTION\n")]})


def test_execution_metadata_is_cleared_from_every_cell():
    """papermill's, nbclient's ``execution`` and the ExecuteTime extension's timings leave every cell, solution
    or not, while other metadata stay. Catches: only papermill's metadata removed, timings kept in plain cells."""
    timings = {"papermill": {"duration": 1.0}, "execution": {"iopub.status.idle": "2024-01-01T00:00:00Z"},
               "ExecuteTime": {"end_time": "2024-01-01T00:00:00Z"}, "collapsed": True}
    solution = "# Solution: Exercise 9.5 (t)\n# BEGIN SOLUTION\ny = 2\n# END SOLUTION\n"
    cells = [cell("x = 1\n"), cell(solution, tags=["solution"]), cell("Text.", "markdown")]
    for c in cells:
        c["metadata"].update(timings)
    out = student.student_notebook({"metadata": {}, "cells": cells})
    assert [c["metadata"] for c in out["cells"]] == [{"tags": [], "collapsed": True},
                                                    {"tags": ["raises-exception"], "collapsed": True},
                                                    {"tags": [], "collapsed": True}]


def test_two_exercises_may_not_share_a_label():
    solution = "# Solution: Exercise 9.4 (same)\n# BEGIN SOLUTION\ny = 2\n# END SOLUTION\n"
    with pytest.raises(student.NotebookError, match="share a label"):
        student.student_notebook({"metadata": {}, "cells": [cell(solution, tags=["solution"])] * 2})


def test_the_command_writes_every_notebook(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ddpm_lib.student", str(NOTEBOOK_DIR), str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in NOTEBOOKS]
    assert result.stdout.count("exercises →") == len(NOTEBOOKS)
    empty = subprocess.run([sys.executable, "-m", "ddpm_lib.student", str(tmp_path / "none"), str(tmp_path / "x")],
                           capture_output=True, text=True, cwd=ROOT)
    assert empty.returncode == 1 and "no lecture notebooks" in empty.stderr


def test_the_label_is_the_headers_text_and_a_header_without_one_is_refused():
    """The label is what follows '# Solution: ', without trailing spaces; a header with nothing after it (or
    spaces first) is not a header. Catches: a trailing space carried into the stub's message and first line,
    a header with an empty label giving the stub ': write your solution here'."""
    solution = "# Solution: Exercise 9.6 (t)   \n# BEGIN SOLUTION\ny = 2\n# END SOLUTION\n"
    new = student.student_cell(cell(solution, tags=["solution"]))
    assert "".join(new["source"]) == ('# Exercise 9.6 (t): your answer\n'
                                      'raise NotImplementedError("Exercise 9.6 (t): write your solution here")\n')
    for header in ("# Solution: \n", "# Solution:  Exercise 9.6 (t)\n"):
        with pytest.raises(student.NotebookError, match="must start with '# Solution: <exercise>'"):
            student.student_cell(cell(header + "# BEGIN SOLUTION\ny = 2\n# END SOLUTION\n", tags=["solution"]))


def test_split_solution_returns_the_header_label_and_the_three_parts():
    """``(label, before, block, after)``: ``before`` ends with the BEGIN line, ``block`` holds only the lines
    between the markers, ``after`` starts with the END line; two END lines are refused like two BEGIN lines.
    Catches: a block that includes a marker (the solution checked against the lectures then differs), a
    second END line taken as part of the code after the answer."""
    label, before, block, after = student.split_solution(FUNCTION_SOLUTION)
    assert label == "Exercise 9.1 (double)"
    assert before == '# Solution: Exercise 9.1 (double)\ndef double(x):\n    """Twice x."""\n    # BEGIN SOLUTION\n'
    assert block == "    y = x + x\n    return y\n"
    assert after == "    # END SOLUTION\n\nassert double(2) == 4\n"
    assert before + block + after == FUNCTION_SOLUTION
    with pytest.raises(student.NotebookError, match="exactly one"):
        student.split_solution(HEAD + "# BEGIN SOLUTION\ny = 2\n# END SOLUTION\nz = 3\n# END SOLUTION\n")



def test_only_code_cells_are_read_as_solution_headers_and_an_untagged_header_is_refused():
    """An untagged code cell starting with '# Solution: …' is refused even without the markers (it was meant
    to be tagged); a markdown cell may start with that text and is kept as it is. Catches: a forgotten tag on
    a header-only cell slipping through, and a markdown heading refused as a broken solution."""
    with pytest.raises(student.NotebookError, match="not tagged 'solution'"):
        student.student_notebook({"metadata": {}, "cells": [cell("# Solution: Exercise 9.8 (u)\ny = 2\n")]})
    text = "# Solution: why the bound is tight\nBecause."
    out = student.student_notebook({"metadata": {}, "cells": [cell(text, "markdown")]})
    assert out["cells"] == [{"cell_type": "markdown", "metadata": {"tags": []}, "source": text}]


def test_markdown_cells_get_no_outputs_and_a_non_ascii_label_stays_readable():
    """Only code cells carry ``outputs`` and ``execution_count`` (nbformat refuses them on markdown cells);
    a label with Greek letters stays as written in the stub. Catches: outputs added to every cell (a student
    notebook that Jupyter reports as invalid), the stub's message written as \\u escapes."""
    solution = "# Solution: Exercise 9.7 (ᾱ_t)\n# BEGIN SOLUTION\ny = 2\n# END SOLUTION\n"
    out = student.student_notebook({"metadata": {}, "cells": [cell("Text.", "markdown"),
                                                              cell(solution, tags=["solution"])]})
    assert "outputs" not in out["cells"][0] and "execution_count" not in out["cells"][0]
    assert 'raise NotImplementedError("Exercise 9.7 (ᾱ_t): write your solution here")\n' in out["cells"][1]["source"]


def test_the_writer_takes_only_numbered_lectures_counts_their_exercises_and_makes_the_folder(tmp_path, capsys):
    """Only ``NN_name.ipynb`` files are lectures (a scratch notebook beside them is not), the printed line gives
    the number of exercises, and the output folder is made with its parents. Catches: every .ipynb turned
    into a student notebook, the count of cells printed as exercises, 'build/student' failing without 'build'."""
    nb = {"metadata": {}, "nbformat": 4, "nbformat_minor": 5,
          "cells": [cell("x = 1\n"), cell(FUNCTION_SOLUTION, tags=["solution"]), cell("## Summary", "markdown")]}
    src = tmp_path / "notebooks"
    src.mkdir()
    for name in ("01_first.ipynb", "scratch.ipynb"):
        (src / name).write_text(json.dumps(nb), encoding="utf-8")
    dst = tmp_path / "build" / "student"
    assert student.write_student_notebooks(src, dst) == [dst / "01_first.ipynb"]
    assert capsys.readouterr().out == f"01_first.ipynb: 1 exercises → {dst / '01_first.ipynb'}\n"
    assert sorted(p.name for p in dst.iterdir()) == ["01_first.ipynb"]


def test_the_command_defaults_to_notebooks_into_build_student(monkeypatch):
    """``python -m ddpm_lib.student`` with no arguments reads ``notebooks`` and writes ``build/student``, as
    ``make student`` does. Catches: defaults that write the student versions over the lectures."""
    seen = []
    monkeypatch.setattr(student, "write_student_notebooks", lambda src, dst: seen.append((src, dst)))
    assert student.main([]) == 0
    assert seen == [(Path("notebooks"), Path("build/student"))]


# --------------------------------------------------------------------------- the lecture notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_lecture_has_two_to_four_exercises_and_two_checks(path):
    found = student.exercises(load(path))
    checked = [label for label, _, full in found if CHECK_CALL.search(full)]
    assert 2 <= len(found) <= 4, f"{path.name}: {len(found)} exercises"
    assert len(checked) >= 2, f"{path.name}: only {checked} call a check"
    for label, _, full in found:
        assert re.fullmatch(rf"Exercise {path.name[:2].lstrip('0')}\.\d \(.+\)", label), label


@pytest.mark.parametrize("path, label, through_end, check, fn", checked_exercises())
def test_the_lecture_solution_passes_its_check(path, label, through_end, check, fn):
    assert check in checks.__all__, f"{label} calls an unknown check {check}"
    ns = setup_namespace(load(path))
    exec(through_end, ns)
    out = io.StringIO()
    with redirect_stdout(out):
        ok = [getattr(checks, check)(ns[fn], seed=seed) for seed in (0, 1, None)]
    assert ok == [True, True, True], f"{label}: the lecture's solution fails {check}:\n{out.getvalue()}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_cell_uses_a_variable_that_only_an_exercise_defines(path):
    """In the student version an exercise cell stops at its stub, so what it would define must stay unused."""
    def names(tree, ctx, skip_bodies):
        found = set()
        def visit(node):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.update([node.name] if isinstance(ctx, ast.Store) else [])
                if skip_bodies:
                    return
                if not isinstance(node, ast.ClassDef) and isinstance(ctx, ast.Store):
                    found.update(a.arg for a in node.args.args + node.args.kwonlyargs)
            if isinstance(node, ast.Name) and isinstance(node.ctx, type(ctx)):
                found.add(node.id)
            if isinstance(node, (ast.Import, ast.ImportFrom)) and isinstance(ctx, ast.Store):
                found.update((a.asname or a.name).split(".")[0] for a in node.names)
            if isinstance(node, ast.Lambda) and isinstance(ctx, ast.Store):
                found.update(a.arg for a in node.args.args)
            for child in ast.iter_child_nodes(node):
                visit(child)
        visit(tree)
        return found

    cells = [c for c in load(path)["cells"] if c["cell_type"] == "code"]
    defined_by_exercise = {}
    for i, c in enumerate(cells):
        tree = ast.parse(code(c))
        uses = names(tree, ast.Load(), skip_bodies=False) - names(tree, ast.Store(), skip_bodies=False)
        for name, label in defined_by_exercise.items():
            assert name not in uses, f"{path.name} code cell {i + 1} uses {name!r}, which {label} defines"
        if is_solution(c):
            label = student.split_solution(student.source_text(c))[0]
            defined_by_exercise.update(dict.fromkeys(names(tree, ast.Store(), skip_bodies=True), label))


# --------------------------------------------------------------------------- the student notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_student_notebook_keeps_no_solution(path, student_dir):
    lecture, mine = load(path), load(student_dir / path.name)
    shown = "\n".join(student.source_text(c) for c in mine["cells"])
    elsewhere = {line.strip() for c in lecture["cells"] if not is_solution(c)
                 for line in student.source_text(c).splitlines()}
    for label, _, full in student.exercises(lecture):
        block = student.split_solution(full)[2]
        for line in block.splitlines():
            if line.strip() and line.strip() not in elsewhere:
                assert line.strip() not in shown, f"{path.name}: solution line of {label} left in: {line.strip()!r}"
        assert shown.count(f'raise NotImplementedError("{label}: write your solution here")') == 1
    discussions = [c for c in lecture["cells"] if c["cell_type"] == "markdown" and is_solution(c)]
    for c in discussions:
        assert student.source_text(c) not in shown
    kept = [c for c in lecture["cells"] if not is_solution(c)]
    plain = [c for c in mine["cells"] if "raises-exception" not in student.tags(c)]
    assert [student.source_text(c) for c in plain] == [student.source_text(c) for c in kept], \
        f"{path.name}: cells other than the solutions changed"
    assert len(mine["cells"]) == len(lecture["cells"]) - len(discussions)
    for c in mine["cells"]:
        assert "solution" not in student.tags(c)
        if c["cell_type"] == "code":
            assert c["outputs"] == [] and c["execution_count"] is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_student_notebook_keeps_every_section(path, student_dir):
    """A discussion cell tagged ``solution`` is dropped whole: it must not carry a heading with it."""
    def headings(nb):
        return [line for c in nb["cells"] if c["cell_type"] == "markdown"
                for line in student.source_text(c).splitlines() if line.startswith("#")]
    lecture = load(path)
    for c in lecture["cells"]:
        if c["cell_type"] == "markdown" and is_solution(c):
            assert not any(line.startswith("#") for line in student.source_text(c).splitlines()), \
                f"{path.name}: a discussion cell tagged 'solution' holds a heading:\n{student.source_text(c)[-300:]}"
    assert headings(load(student_dir / path.name)) == headings(lecture)
    assert {"## Exercises", "## Summary", "## Further reading"} <= set(headings(lecture))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_student_exercise_cell_raises_not_implemented_naming_the_exercise(path, student_dir):
    mine = load(student_dir / path.name)
    ns = setup_namespace(mine)
    exercise_cells = [c for c in mine["cells"] if "raises-exception" in student.tags(c)]
    labels = [label for label, _, _ in student.exercises(load(path))]
    assert len(exercise_cells) == len(labels)
    for c, label in zip(exercise_cells, labels):
        assert student.source_text(c).startswith(f"# {label}: your answer\n")
        with pytest.raises(NotImplementedError, match=re.escape(f"{label}: write your solution here")):
            exec(code(c), dict(ns))


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_student_notebook_runs_in_quick_mode_under_nbval(path, student_dir, tmp_path):
    """Exercise cells (tagged raises-exception) may fail; every other cell must run."""
    import papermill

    prepared = tmp_path / path.name
    papermill.execute_notebook(str(student_dir / path.name), str(prepared), parameters=quick_parameters(path),
                               prepare_only=True, kernel_name="python3", progress_bar=False)
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--nbval-lax", "--nbval-current-env",
         "-p", "no:cacheprovider", "-p", "no:xdist", str(prepared)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"student {path.name} failed in quick mode:\n{result.stdout[-6000:]}"
