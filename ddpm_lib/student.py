"""Student versions of the lecture notebooks: every solution replaced by a stub.

    python -m ddpm_lib.student notebooks build/student        (what `make student` runs)

The convention in a lecture notebook (README, "Homework"):

* An exercise's solution is a code cell tagged ``solution`` whose first line is
  ``# Solution: Exercise N.k (name)``.
* The answer inside it lies between a line ``# BEGIN SOLUTION`` and a line ``# END SOLUTION`` (one
  pair per cell). For a function the markers enclose its body, so the signature and docstring stay;
  the cell then calls the package's check, ``assert checks.check_<name>(<function>)``, which stays too.
* A markdown cell tagged ``solution`` discusses an answer; the student version leaves it out.

The student version keeps everything else and, in each solution cell, puts
``raise NotImplementedError("Exercise N.k (name): write your solution here")`` in place of the block
(indented like the ``# BEGIN SOLUTION`` line), makes the first line ``# Exercise N.k (name): your answer``
and swaps the tag ``solution`` for ``raises-exception``, so papermill and nbval let the cell fail while
everything after it runs (later cells never use an exercise's variables). Outputs, execution counts and
papermill's metadata are cleared. Only the standard library is used: a notebook is JSON.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

SOLUTION_TAG = "solution"
RAISES_TAG = "raises-exception"
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
HEADER = re.compile(r"^# Solution: (?P<label>\S.*?)\s*$")


class NotebookError(ValueError):
    """A lecture notebook breaks the solution convention."""


def source_text(cell: dict) -> str:
    """A cell's source as one string (the .ipynb format allows a string or a list of lines)."""
    src = cell.get("source", "")
    return src if isinstance(src, str) else "".join(src)


def tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def split_solution(text: str, where: str = "cell"):
    """Parse a solution cell: returns ``(label, before, block, after)`` where ``block`` holds the lines
    strictly between the markers, ``before`` ends with the BEGIN line and ``after`` starts with END."""
    lines = text.splitlines(keepends=True)
    header = HEADER.match(lines[0].rstrip("\n")) if lines else None
    if header is None:
        raise NotebookError(f"{where}: a cell tagged '{SOLUTION_TAG}' must start with '# Solution: <exercise>'")
    begins = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0] + 2:
        raise NotebookError(f"{where}: needs exactly one '{BEGIN}' line, then at least one line of solution, "
                            f"then one '{END}' line (found {len(begins)} and {len(ends)})")
    b, e = begins[0], ends[0]
    if lines[b][: len(lines[b]) - len(lines[b].lstrip())] != lines[e][: len(lines[e]) - len(lines[e].lstrip())]:
        raise NotebookError(f"{where}: '{BEGIN}' and '{END}' must be indented alike")
    return header["label"], "".join(lines[: b + 1]), "".join(lines[b + 1: e]), "".join(lines[e:])


def stub_message(label: str) -> str:
    return f"{label}: write your solution here"


def student_cell(cell: dict, where: str = "cell") -> dict | None:
    """The student version of one cell (None: the cell is left out)."""
    cell = json.loads(json.dumps(cell))                          # a deep copy
    meta = cell.setdefault("metadata", {})
    for key in ("papermill", "execution", "ExecuteTime"):
        meta.pop(key, None)
    text = source_text(cell)
    is_solution = SOLUTION_TAG in tags(cell)
    looks_like_one = BEGIN in text or END in text or (cell["cell_type"] == "code" and HEADER.match(text.split("\n")[0]))
    if not is_solution and looks_like_one:
        raise NotebookError(f"{where}: has solution markers but is not tagged '{SOLUTION_TAG}'")
    if cell["cell_type"] == "code":
        cell["outputs"], cell["execution_count"] = [], None
    if not is_solution:
        return cell
    if cell["cell_type"] == "markdown":
        return None                                              # a discussion of the answer
    label, before, _, after = split_solution(text, where)
    begin_line = before.splitlines()[-1]
    indent = begin_line[: len(begin_line) - len(begin_line.lstrip())]
    before = f"# {label}: your answer\n" + "".join(before.splitlines(keepends=True)[1:-1])
    stub = f"{indent}raise NotImplementedError({json.dumps(stub_message(label), ensure_ascii=False)})\n"
    after = "".join(after.splitlines(keepends=True)[1:])         # drop the END line
    cell["source"] = (before + stub + after).splitlines(keepends=True)
    meta["tags"] = [RAISES_TAG if tag == SOLUTION_TAG else tag for tag in tags(cell)]
    return cell


def student_notebook(nb: dict, name: str = "notebook") -> dict:
    """The student version of a notebook (a dict as read from .ipynb JSON); raises NotebookError when
    a solution cell breaks the convention or two exercises share a label."""
    out = {k: v for k, v in nb.items() if k != "cells"}
    out["metadata"] = {k: v for k, v in nb.get("metadata", {}).items() if k != "papermill"}
    out["cells"], labels = [], []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code" and SOLUTION_TAG in tags(cell):
            labels.append(split_solution(source_text(cell), f"{name} cell {i}")[0])
        new = student_cell(cell, f"{name} cell {i}")
        if new is not None:
            out["cells"].append(new)
    if len(set(labels)) != len(labels):
        raise NotebookError(f"{name}: two solution cells share a label: {labels}")
    return out


def exercises(nb: dict) -> list[tuple[str, str, str]]:
    """``(label, code up to and including the END line, full cell source)`` for each solution cell."""
    found = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code" and SOLUTION_TAG in tags(cell):
            label, before, block, after = split_solution(source_text(cell), f"cell {i}")
            found.append((label, before + block + after.splitlines(keepends=True)[0], source_text(cell)))
    return found


def write_student_notebooks(src: Path, dst: Path) -> list[Path]:
    """Write the student version of every ``NN_*.ipynb`` in ``src`` into ``dst``; returns the paths."""
    paths = sorted(Path(src).glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise NotebookError(f"no lecture notebooks (NN_name.ipynb) in {src}")
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        nb = json.loads(path.read_text(encoding="utf-8"))
        student = student_notebook(nb, path.name)
        target = dst / path.name
        target.write_text(json.dumps(student, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{path.name}: {len(exercises(nb))} exercises → {target}")
        written.append(target)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddpm_lib.student", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", nargs="?", default="notebooks", help="folder of lecture notebooks (default: notebooks)")
    parser.add_argument("dst", nargs="?", default="build/student", help="output folder (default: build/student)")
    args = parser.parse_args(argv)
    try:
        write_student_notebooks(Path(args.src), Path(args.dst))
    except NotebookError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
