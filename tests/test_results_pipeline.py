"""``make results`` (the GPU pipeline behind notebooks 06–09) stays in step with the command line: every
command it would run, at the GPU scale, the laptop stand-in's and the CPU rehearsal's, parses with ``python -m ddpm_lib``'s own
parser. Catches: a renamed or removed flag, a misspelt subcommand, a value the parser refuses — found here
rather than ten minutes into a GPU session."""
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from ddpm_lib.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def planned_commands(tmp_path, scale):
    out = subprocess.run(["make", "-n", "results", f"RESULTS_SCALE={scale}", f"R={tmp_path}/r",
                          f"RUNS={tmp_path}/runs", "DL=python -m ddpm_lib"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    out = out.replace("\\\n", " ")                            # make -n prints continued lines as they are
    commands = []
    for line in out.splitlines():
        if "python -m ddpm_lib" not in line:
            continue
        line = re.sub(r"\$\(ls [^)]*\)", "", line)            # the shell test that adds --resume
        words = shlex.split(line)
        commands.append(words[words.index("ddpm_lib") + 1:])
    return commands


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
@pytest.mark.parametrize("scale", ["gpu", "laptop", "smoke"])
def test_every_command_of_make_results_parses(tmp_path, scale):
    commands = planned_commands(tmp_path, scale)
    names = {c[0] for c in commands}
    assert {"train", "export", "evaluate", "train-noisy-classifier", "evaluate-guidance", "sample", "train-ddgan",
            "export-ddgan", "trilemma", "bench"} <= names, names
    parser = build_parser()
    for words in commands:
        args = parser.parse_args(words)                       # SystemExit (status 2) on any unknown flag
        assert args.command == words[0]
    ddim = [c for c in commands if c[0] == "evaluate" and "--eta" in c]
    assert len(ddim) == {"gpu": 10, "laptop": 10, "smoke": 4}[scale]   # every (steps, η) pair of the DDIM table


def test_shipped_result_files_name_no_machine_folders():
    """Results are recorded on one machine and read on others: an absolute path in them is wrong elsewhere."""
    absolute = re.compile(r'"(/|[A-Za-z]:\\\\)[^"]*"')
    files = sorted((ROOT / "data").rglob("*.json"))
    assert files, "no shipped result files under data/"
    for path in files:
        found = absolute.search(path.read_text())
        assert found is None, f"{path.relative_to(ROOT)} records the machine path {found.group(0)}"
