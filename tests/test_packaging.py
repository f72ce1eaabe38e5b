"""Set-up files agree with each other and keep the promises of the README."""
import re
import shlex
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"], project["optional-dependencies"]["course"]


def test_environment_yml_matches_pyproject():
    runtime, course = pyproject_requirements()
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_reqs = sorted(str(Requirement(r)) for r in pip_section if not r.startswith("-e"))
    wanted = {Requirement(r).name: str(Requirement(r)) for r in runtime + course}   # the course extra's torch wins
    assert conda_reqs == sorted(wanted.values())
    runtime_specs = {Requirement(r).name: Requirement(r).specifier for r in runtime}
    for r in map(Requirement, course):                  # a restated package only narrows the runtime's range
        if r.name in runtime_specs:
            versions = [f"{major}.{minor}.0" for major in range(1, 4) for minor in range(40)]
            assert all(v in runtime_specs[r.name] for v in versions if v in r.specifier), r
    assert "-e ." in pip_section, "environment.yml should install the course package itself"


def test_torch_requirements_accept_colab_and_never_exceed_the_course_pin():
    runtime, _ = pyproject_requirements()
    reqs = {Requirement(r).name: Requirement(r).specifier for r in runtime}
    for name, newest, older in (("torch", "2.14.1", "2.5.1"), ("torchvision", "0.29.1", "0.20.1")):
        assert reqs[name].contains(newest), f"{name} requirement excludes the course release {newest}"
        assert reqs[name].contains(older), f"{name} requirement would replace an older preinstalled {name} (Colab)"
    makefile = (ROOT / "Makefile").read_text()
    pins = dict(re.findall(r"\b(torch|torchvision)==([\d.]+)", makefile))
    assert pins == {"torch": "2.14.1", "torchvision": "0.29.1"}


def test_runtime_dependencies_stay_few():
    runtime, _ = pyproject_requirements()
    names = {Requirement(r).name for r in runtime}
    assert names <= {"torch", "torchvision", "einops", "numpy", "matplotlib", "tqdm", "mlxtend"}


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme


def test_only_the_plotting_module_imports_matplotlib():
    offenders = [p.name for p in (ROOT / "ddpm_lib").glob("*.py")
                 if p.name != "plots.py" and re.search(r"^\s*(import|from) matplotlib", p.read_text(), re.M)]
    assert offenders == []


def test_every_lecture_installs_the_package_from_the_course_repository():
    """On Colab each lecture's set-up cell pip-installs ddpm_lib from the repository that ``course_data`` also
    fetches data/ from: one address, ``data_folder.COURSE_REPOSITORY``. Catches: the address changed in one
    place only (a lecture that installs from the old repository, or fetches models from another)."""
    import json
    from ddpm_lib.data_folder import COURSE_REPOSITORY
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        setup = next("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                     if c["cell_type"] == "code" and "import ddpm_lib as dl" in "".join(c["source"]))
        installs = re.findall(r'%pip install --quiet "ddpm_lib @ git\+(\S+)"', setup)
        assert installs == [COURSE_REPOSITORY], (path.name, installs)


def shown_commands() -> list[tuple[str, str]]:
    """``(where, command line)`` for every ``python -m ddpm_lib …`` the README, data/README, the lectures' markdown
    and code, and the shipped models' cards show (continuation lines joined, ``# comments`` left to shlex)."""
    import json
    texts = {name: (ROOT / name).read_text() for name in ("README.md", "data/README.md")}
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        texts[path.name] = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
    for path in sorted((ROOT / "data").rglob("*.json")):
        card = json.loads(path.read_text())
        if isinstance(card, dict) and isinstance(card.get("command"), str):
            texts[str(path.relative_to(ROOT))] = card["command"]
    found = []
    for where, text in texts.items():
        text = text.replace("\\\n", " ")
        text = re.sub(r"(?<!`)`[^`]+`(?!`)", lambda m: m.group(0).replace("\n", " "), text)   # `code` over 2 lines
        for m in re.finditer(r"(?:python -m|torchrun [^\n`]*?-m) ddpm_lib ([^\n`|;&)]+)", text):
            found.append((where, m.group(1).strip()))
    return found


def test_every_command_the_course_shows_parses_with_todays_flags():
    """A reader copies a command from the README, a lecture or a model's card (the command that made it) and
    runs it. Catches: a flag renamed or removed in the parser but not in the text, a misspelt subcommand.
    Commands with placeholders (``--steps S``, ``…``) and bare command names in prose are left out."""
    from ddpm_lib.cli import build_parser
    parser, checked = build_parser(), []
    for where, line in shown_commands():
        words = shlex.split(line, comments=True)
        if not any(w.startswith("--") for w in words) or any(re.fullmatch(r"[A-Z]|.*(…|\.\.\.|<).*", w) for w in words):
            continue
        try:
            args = parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"{where}: `python -m ddpm_lib {line}` does not parse")
        assert args.command == words[0]
        checked.append(where)
    assert len(checked) >= 25 and {"README.md", "06_training.ipynb", "data/laptop/ddpm_mnist.json"} <= set(checked)


def test_the_readme_module_table_names_every_module():
    """The README's table of modules is how an engineer finds code. Catches: a module added (or renamed) without
    its row, or a row naming a module that is gone."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| module | what it holds |"):]
    table = table[:table.index("\n\n")]
    named = set(re.findall(r"`(\w+)`", "".join(row.split("|")[1] for row in table.splitlines()[2:])))
    modules = {p.stem for p in (ROOT / "ddpm_lib").glob("*.py")} - {"__init__", "__main__"}
    modules |= {p.name for p in (ROOT / "ddpm_lib").iterdir() if (p / "__init__.py").is_file()}   # checks/
    assert named == modules, (sorted(modules - named), sorted(named - modules))
