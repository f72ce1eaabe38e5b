"""The CPU rehearsal of the GPU pipeline, end to end: ``make results`` at the smoke scale trains and measures every
model that notebooks 06–09 read (a few steps each, T = 100), and ``notebooks/rehearse.sh`` runs the four lectures in
quick mode on those files, with the checks that only a trained model passes switched off. Catches: a lecture that
no longer accepts the files the GPU run will make (a renamed key, a missing file, a step count fixed at T = 1000),
found here rather than in the first minutes of a GPU session. About 4 minutes on one core (217 s alone, 260–270 s in CI)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.notebook
@pytest.mark.skipif(shutil.which("make") is None or shutil.which("bash") is None, reason="needs GNU make and bash")
def test_notebooks_06_to_09_accept_the_files_of_the_results_pipeline(tmp_path):
    results, out = tmp_path / "r", tmp_path / "rehearsal"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}   # one core: the
                                                                           # other test worker has the second
    make = subprocess.run(["make", "results", "RESULTS_SCALE=smoke", "T=100", "DDIM_STEPS=10 20 50 100", f"R={results}",
                           f"RUNS={results}/runs", f"DL={sys.executable} -m ddpm_lib"],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert make.returncode == 0, make.stdout[-3000:] + make.stderr[-3000:]
    rehearsal = subprocess.run(["bash", "notebooks/rehearse.sh", str(results), str(out)], cwd=ROOT, capture_output=True,
                               text=True, env=env)
    logs = "".join(f"\n--- {log.name}\n{log.read_text()[-3000:]}" for log in sorted(out.glob("*.log")))
    assert rehearsal.returncode == 0, rehearsal.stdout + rehearsal.stderr + logs
    assert rehearsal.stdout.count("exit 0") == 4, rehearsal.stdout
