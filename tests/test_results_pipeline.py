"""``make results`` (the GPU pipeline behind notebooks 06–09) stays in step with the command line: every
command it would run, at the GPU scale, the laptop stand-in's and the CPU rehearsal's, parses with ``python -m ddpm_lib``'s own
parser. Catches: a renamed or removed flag, a misspelt subcommand, a value the parser refuses — found here
rather than ten minutes into a GPU session."""
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ddpm_lib.cli import build_parser
from helpers import command_env

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


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
@pytest.mark.parametrize("scale", ["gpu", "laptop"])
def test_the_raw_and_ema_weights_are_scored_on_as_many_samples_with_the_same_sampler(tmp_path, scale):
    """Notebook 06 sets the raw θ's FID-MNIST beside θ_ema's, and FID-MNIST falls as the sample count grows:
    the two ``evaluate`` commands differ only in the weights and the files. Catches: the GPU plan scoring
    θ_ema on 10,000 samples and the raw θ on 5,000, which favours θ_ema for a reason that is not the average."""
    parser = build_parser()
    evals = [parser.parse_args(c) for c in planned_commands(tmp_path, scale) if c[0] == "evaluate" and "--eta" not in c]
    raw = [a for a in evals if a.weights == "raw"]
    ema = [a for a in evals if a.weights == "ema" and a.out.endswith("ddpm_mnist_eval.json")]
    assert len(raw) == len(ema) == 1
    differ = {k for k, v in vars(raw[0]).items() if vars(ema[0])[k] != v}
    assert differ == {"weights", "checkpoint", "out"}, differ
    assert raw[0].n == {"gpu": 10_000, "laptop": 200}[scale]


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_a_made_result_is_not_made_again_when_its_model_looks_newer(tmp_path):
    """Every file ``make results`` writes (each command's --out) made, and the models then given a newer time
    stamp, as copying files onto a fresh GPU machine may do: ``make -n results`` plans no command at all.
    Catches: a result depending on its model's time stamp (ten minutes of GPU sampling done again)."""
    import os
    outputs = [Path(words[words.index("--out") + 1]) for words in planned_commands(tmp_path, "gpu")
               if "--out" in words]
    assert len(outputs) >= 20
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    for path in outputs:
        if path.suffix == ".pt":                              # the models: an hour newer than every result
            os.utime(path, (path.stat().st_atime + 3600, path.stat().st_mtime + 3600))
    assert planned_commands(tmp_path, "gpu") == []


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_sigterm_to_make_returns_only_after_the_trainer_has_saved_its_checkpoint(tmp_path):
    """``make <model>`` at the rehearsal's scale with periodic saves off, and SIGTERM to its process group (what
    ``timeout`` does at a time limit) once the trainer has started: when make has returned, the trainer's
    interrupt checkpoint is already on disk (the next ``make`` adds --resume). Catches: a shell
    between make and the trainer (make returns at once and a machine given back with it loses the save).
    The copies of the signal that reach the trainer are test_run_folder's concern."""
    import os
    import signal
    import sys
    import time
    python = f"{sys.executable} -m ddpm_lib"
    make = ["make", f"{tmp_path}/r/ddpm_mnist.pt", "RESULTS_SCALE=smoke", "DDPM_STEPS=100000", "EVERY=100000",
            f"R={tmp_path}/r", f"RUNS={tmp_path}/runs", f"DL={python}"]
    log = tmp_path / "make.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(make, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=command_env())
    deadline = time.monotonic() + 120
    while "training " not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)                                       # the trainer's first line: it is in its loop soon
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGTERM)                         # as timeout does: make, then its process group
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    saved = sorted(p.name for p in (tmp_path / "runs" / "ddpm_mnist").glob("ckpt_*.pt"))   # no waiting here
    rest = log.read_text()
    assert proc.returncode != 0 and len(saved) == 1, rest
    assert f"interrupted at step {int(saved[0][5:13])}: saved" in rest and "continue with --resume" in rest


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_every_output_of_make_results_is_precious(tmp_path):
    """Each command's --out is listed in .PRECIOUS (itself or by its pattern): make, stopped by SIGTERM, deletes
    a target whose file changed while its recipe ran, and a time limit can land just after a result was
    written (its kept samples already removed). Catches: a result rule added without its .PRECIOUS entry."""
    from fnmatch import fnmatch
    database = subprocess.run(["make", "-pn", "results", "RESULTS_SCALE=gpu", f"R={tmp_path}/r",
                               f"RUNS={tmp_path}/runs", "DL=python -m ddpm_lib"],
                              cwd=ROOT, capture_output=True, text=True, check=True).stdout
    precious = [line for line in database.splitlines() if line.startswith(".PRECIOUS:")]
    assert len(precious) == 1
    patterns = [p.replace("%", "*") for p in precious[0].split()[1:]]
    outputs = [words[words.index("--out") + 1] for words in planned_commands(tmp_path, "gpu") if "--out" in words]
    assert len(outputs) >= 20
    for out in outputs:
        assert any(fnmatch(out, p) for p in patterns), f"{out} is not in .PRECIOUS"


def test_shipped_result_files_name_no_machine_folders():
    """Results are recorded on one machine and read on others: an absolute path in them is wrong elsewhere."""
    absolute = re.compile(r'"(/|[A-Za-z]:\\\\)[^"]*"')
    files = sorted((ROOT / "data").rglob("*.json"))
    assert files, "no shipped result files under data/"
    for path in files:
        found = absolute.search(path.read_text())
        assert found is None, f"{path.relative_to(ROOT)} records the machine path {found.group(0)}"


@pytest.mark.parametrize("lecture", ["06", "07", "08", "09"])
def test_the_rehearsal_finds_every_check_it_switches_off(tmp_path, lecture):
    """notebooks/rehearse.sh copies 06–09 with the checks only a trained model passes turned into ``pass``; it
    names them by their whole line and refuses a lecture where one is missing. Its Python, run here on each
    lecture as the script runs it. Catches: a check edited in a lecture but not in the script's list (the
    rehearsal then stops before that lecture runs, which no other test sees)."""
    script = (ROOT / "notebooks" / "rehearse.sh").read_text()
    code = script.split("<<'EOF'", 1)[1].split("\n", 1)[1].split("\nEOF\n", 1)[0]      # the heredoc's lines
    src = next((ROOT / "notebooks").glob(f"{lecture}_*.ipynb"))
    dst = tmp_path / src.name
    result = subprocess.run([sys.executable, "-c", code, str(src), str(dst)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert dst.read_text().count("pass  # rehearsal: assert") >= 1
