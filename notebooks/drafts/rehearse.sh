#!/usr/bin/env bash
# Run every draft in quick mode against a results folder, e.g. the CPU rehearsal of the GPU pipeline:
#   make results RESULTS_SCALE=smoke R=/tmp/r RUNS=/tmp/r/runs && bash notebooks/drafts/rehearse.sh /tmp/r /tmp/drafts
# A third argument "full" runs full mode (the drafts then need T >= 100 in the rehearsal:
#   make results RESULTS_SCALE=smoke T=100 DDIM_STEPS="10 20 50 100" R=/tmp/r100 RUNS=/tmp/r100/runs).
# The checks that only a trained model passes (06: loss below 1 at every t; 07: inversion error; 08: the noisy
# classifier's accuracy falling with t, and accuracy up / diversity down with the guidance scale) are switched
# off in these copies; every other cell runs as written. Prints each draft's status and seconds.
set -u
results=${1:?usage: rehearse.sh RESULTS_DIR OUT_DIR}
out=${2:?usage: rehearse.sh RESULTS_DIR OUT_DIR [quick|full]}
mode=${3:-quick}
[ "$mode" = quick ] && quick=True || quick=False
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-$here/../../.venv/bin/python}
mkdir -p "$out"
for src in "$here"/0[8-9]_*.py; do
  name=$(basename "$src" .py)
  sed -e 's/^assert (loss_t < 1).all(), loss_t$/pass/' -e 's/^assert err < 0.15$/pass/' \
      -e 's/^assert acc\[min(acc)\] > 0.9 and acc\[max(acc)\] < 0.3$/pass/' \
      -e 's/^assert rows\[0\]\["accuracy"\] < rows\[-1\]\["accuracy"\] and rows\[-1\]\["diversity"\] < rows\[0\]\["diversity"\]$/pass/' \
      "$src" > "$out/$name.py"
  jupytext --to ipynb --output "$out/$name.ipynb" "$out/$name.py" > /dev/null
  start=$(date +%s)
  "$py" -m papermill "$out/$name.ipynb" "$out/${name}_run.ipynb" -k python3 -p quick $quick -p results "$results" \
      > "$out/$name.log" 2>&1
  echo "$name ($mode): exit $? in $(( $(date +%s) - start )) s (log: $out/$name.log)"
done
