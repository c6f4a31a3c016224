#!/usr/bin/env bash
# The training benchmark at a larger scale, for a leased GPU machine (SIMULATED data).
#
#   benchmarks/train_scale.sh OUT [TRAIN_BUDGET_S]
#
# Same code and commands as the 2-core benchmark (docs/training.md), more of everything: a population
# of USERS simulated users per profile (TEST_USERS of them held out), batch 32 on the GPU, every
# generic run stopped by `time_budget_s` (TRAIN_BUDGET_S, default 300 s) instead of an epoch count,
# all runs side by side. Writes OUT/train_bench.{json,md} over both profiles, and packs:
#   OUT/scale_results.tar.gz   every run's results, metrics, configs, evals and logs, the datasets' descriptions
#   OUT/a8_students.tar.gz     the armband8 students' best.pt without optimizer state (for calibration_bench)
# Sizes come from the environment (USERS, TEST_USERS, SESSIONS, MINUTES, EPOCHS_A8, EPOCHS_E2Q, NPROC); tiny values run on
# a CPU in a minute, which is how the script is checked before a lease (`DEVICE=cpu`).
set -uo pipefail
OUT=${1:?usage: train_scale.sh OUT [TRAIN_BUDGET_S]}
BUDGET=${2:-300}
USERS=${USERS:-48}
TEST_USERS=${TEST_USERS:-8}
SESSIONS=${SESSIONS:-4}
MINUTES=${MINUTES:-1.5}
# planned epochs (the schedule and the alignment warm-up span them): about what fits the budget on one H200
# with 16 cores, where an emg2qwerty epoch costs ~3x an armband8 one (its loaders compute 2 kHz x 32 ch features)
EPOCHS_A8=${EPOCHS_A8:-25}
EPOCHS_E2Q=${EPOCHS_E2Q:-12}
PROFILES=${PROFILES:-armband8 emg2qwerty}   # a second lease can give one profile the whole machine
A8_MODELS=${A8_MODELS:-tcn,gru,bilstm,tds_conv}
E2Q_MODELS=${E2Q_MODELS:-tcn,gru,tds_conv}
E2Q_LOADERS=${E2Q_LOADERS:-3}   # loader processes per emg2qwerty run
PERSONALIZE=${PERSONALIZE:-tcn}
NPROC=${NPROC:-$(nproc)}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
t0=$(date +%s)
stamp() { echo "[train_scale +$(($(date +%s) - t0))s] $*"; }

pack() {
    # tabulate what finished over both profiles; pack what comes back (checkpoints without optimizer state)
    $PY -m emgkey.benchmarks.train_bench --data-root "$OUT/data" --out "$OUT" --epochs "$EPOCHS_A8" --collect-only \
        --profiles "${PROFILES// /,}" --models tcn,gru,bilstm,tds_conv --teacher-size default >/dev/null \
        2>"$OUT/collect.log" || tail -20 "$OUT/collect.log"
    $PY -c '
import sys
from pathlib import Path
import torch
out = Path(sys.argv[1])
for model in ("tcn", "gru", "bilstm"):
    src = out / "runs" / "armband8" / model / "generic" / "best.pt"
    if src.is_file():
        ck = torch.load(src, map_location="cpu", weights_only=True)
        for k in ("optimizer", "scheduler"):
            ck.pop(k, None)
        dst = out / "students" / "armband8" / model / "best.pt"
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.save(ck, dst)
' "$OUT"
    (cd "$OUT" && tar czf a8_students.tar.gz students 2>/dev/null)
    (cd "$OUT" && find . \( -name '*.json' -o -name '*.md' -o -name '*.csv' -o -name '*.yaml' -o -name '*.log' \) \
        -not -path './students/*' -print0 | tar czf scale_results.tar.gz --null -T -)
}
# Under `timeout` (a lease's limit): pack whatever finished, then stop the runs.
trap 'stamp "stopped by a signal: packing what finished"; pack; exit 124' TERM INT

stamp "simulating $USERS users x $SESSIONS sessions x $MINUTES min per profile on $NPROC processes"
half=$(((NPROC + 1) / 2))
for prof in $PROFILES; do
    $PY -m emgkey.cli sim dataset --profile $prof --users "$USERS" --test-users "$TEST_USERS" \
        --sessions-per-user "$SESSIONS" --minutes "$MINUTES" --seed 0 --workers "$half" \
        --out "$OUT/data/$prof" >"$OUT/sim_$prof.log" 2>&1 &
done
wait || true
for prof in $PROFILES; do
    test -f "$OUT/data/$prof/dataset.json" || { stamp "simulation of $prof failed"; tail -20 "$OUT/sim_$prof.log"; exit 1; }
done
stamp "simulated"

common=(--data-root "$OUT/data" --out "$OUT" --teacher-size default
    --train-set "time_budget_s=$BUDGET" --train-set "device=$DEVICE" --train-set data.batch_size=32
    --train-set data.eval_batch_size=32 --train-set optim.align_delay_s=0.06)
# armband8 features are cheap (one loader process a run); emg2qwerty's 2 kHz x 32 channels need three.
if [[ " $PROFILES " == *" armband8 "* ]]; then
    $PY -m emgkey.benchmarks.train_bench "${common[@]}" --profiles armband8 --epochs "$EPOCHS_A8" \
        --models "$A8_MODELS" --personalize "$PERSONALIZE" --workers 8 --train-set data.num_workers=1 \
        >"$OUT/bench_armband8.log" 2>&1 &
fi
if [[ " $PROFILES " == *" emg2qwerty "* ]]; then
    $PY -m emgkey.benchmarks.train_bench "${common[@]}" --profiles emg2qwerty --epochs "$EPOCHS_E2Q" \
        --models "$E2Q_MODELS" --personalize "$PERSONALIZE" --workers 8 --train-set "data.num_workers=$E2Q_LOADERS" \
        --train-set optim.align_guard_s=0.016 >"$OUT/bench_emg2qwerty.log" 2>&1 &
fi
wait || true
stamp "trained"
pack
stamp "packed"
cat "$OUT/train_bench.md" 2>/dev/null | head -40
