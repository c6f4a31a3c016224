#!/usr/bin/env bash
# Rebuild the generic models the calibration benchmark reports on (SIMULATED data), from a clean checkout.
#
#   benchmarks/calibration_models.sh OUT [MODEL ...]        MODEL: tcn32 gru32 bilstm32 tcn16 e2q (default: all)
#   BENCH=1 benchmarks/calibration_models.sh OUT tcn32      ... and run calibration_bench on each (users 1000-1007)
#   BENCH=1 FIRST_USER=2000 SECONDS_LIST=60 ...             ... on the tuning users 2000-2007, 60 s only
#   (also STRATEGIES="stats finetune", BENCH_ARGS="--finetune-set lr=1e-3", BENCH_TAG=_lr: a variant's folder suffix)
#   SEED=1 benchmarks/calibration_models.sh OUT tcn16        another training of the same recipe and data (training
#                                                            seed 1; runs/bundles/bench folders get the suffix _s1)
#
# The models of benchmarks/results/calibration_v3_keys4/ to calibration_v3_ln/ (simulator version 3), each: its
# dataset (`emgkey sim dataset`, seed 0), its training run (config demo, 24 epochs, one thread,
# optim.align_delay_s=0.06), an ONNX bundle (fp32, and int8 when a candidate is within the export's tolerance),
# and with BENCH=1 `calibration_bench --seconds 15 30 60 --budget-s 30` with a key prior from the
# model's own training data. Every step is skipped when its output exists (a killed training resumes from last.pt),
# so the script can be re-run after an interruption. Wall time on this 2-core machine, one model at a time: the
# datasets 1-2 min each, training tcn16 ~14 min, tcn32 30-47, gru32 38-67 (the longer: two trainings side by side), bilstm32 53-81,
# e2q ~26; a bench run 5-40 min. On the machine that made calibration_v3_keys5, tcn16, tcn32, gru32 and bilstm32
# retrained to the committed runs' best validation CER exactly; e2q did not (41.05 vs 39.79 for calibration_v3_e2q's
# model, whose command was not recorded). On another CPU the same commands give other models: on an AVX2-only AMD
# Zen 3 box tcn16 reached 43.30 (keys5: 44.525), see calibration_v3_keys6/. The bench records each model's
# fingerprint and best validation CER and the machine's CPU and package versions.
# Two invocations side by side (different MODELs, same OUT) use both cores.
#
#   OUT/data/<dataset>/             armband8_32 (32 users x 4 sessions x 3 min, 2 held out), armband8_16 (16 x 4 x 3),
#                                   emg2qwerty_8 (8 x 4 x 1.5, the training benchmark's tb3 dataset)
#   OUT/runs/<model>/generic/       best.pt, last.pt, metrics, results.json
#   OUT/bundles/<model>/            the exported bundle
#   OUT/bench/<model>_u<FIRST_USER>/ calibration_bench.{json,md} and its work files (BENCH=1)
set -euo pipefail
OUT=${1:?usage: calibration_models.sh OUT [tcn32|gru32|bilstm32|tcn16|e2q ...]}
shift
MODELS=${*:-tcn32 gru32 bilstm32 tcn16 e2q}
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}  # make venv made .venv
EPOCHS=${EPOCHS:-24}
FIRST_USER=${FIRST_USER:-1000}
SECONDS_LIST=${SECONDS_LIST:-15 30 60}
BUDGET_S=${BUDGET_S:-30}
STRATEGIES=${STRATEGIES:-stats finetune scratch}
BENCH_ARGS=${BENCH_ARGS:-}   # more calibration_bench arguments, e.g. "--finetune-set lr=1e-3"
SEED=${SEED:-0}              # the training seed; the datasets keep seed 0
mkdir -p "$OUT"
t0=$(date +%s)
stamp() { echo "[calibration_models +$(($(date +%s) - t0))s] $*"; }
emgkey() { $PY -m emgkey.cli "$@"; }

dataset() {  # name -> profile users sessions minutes test_users
    case $1 in
        armband8_32) echo "armband8 32 4 3 2" ;;
        armband8_16) echo "armband8 16 4 3 2" ;;
        emg2qwerty_8) echo "emg2qwerty 8 4 1.5 2" ;;
        *) echo "unknown dataset $1" >&2; exit 2 ;;
    esac
}

model_spec() {  # model -> dataset architecture
    case $1 in
        tcn32) echo "armband8_32 tcn" ;;
        gru32) echo "armband8_32 gru" ;;
        bilstm32) echo "armband8_32 bilstm" ;;
        tcn16) echo "armband8_16 tcn" ;;
        e2q) echo "emg2qwerty_8 tcn" ;;
        *) echo "unknown model $1 (tcn32 gru32 bilstm32 tcn16 e2q)" >&2; exit 2 ;;
    esac
}

make_dataset() {
    local name=$1 dir="$OUT/data/$1"
    if [[ -f "$dir/dataset.json" && -f "$dir/splits/generic.yaml" ]]; then return; fi
    local spec
    spec=$(dataset "$name")
    read -r profile users sessions minutes test_users <<<"$spec"
    stamp "dataset $name: $profile, $users users x $sessions x $minutes min"
    rm -rf "$dir"
    emgkey sim dataset --profile "$profile" --users "$users" --sessions-per-user "$sessions" --minutes "$minutes" \
        --seed 0 --test-users "$test_users" --workers 1 --out "$dir"
}

for model in $MODELS; do
    spec=$(model_spec "$model")  # an unknown name stops the script here (set -e)
    read -r ds arch <<<"$spec"
    make_dataset "$ds"
    data="$OUT/data/$ds"
    split="$data/splits/generic.yaml"
    name=$model
    [[ "$SEED" != 0 ]] && name=${model}_s$SEED
    run="$OUT/runs/$name/generic"
    bundle="$OUT/bundles/$name"
    if [[ ! -f "$run/results.json" ]]; then
        stamp "train $name ($arch on $ds, $EPOCHS epochs, seed $SEED)"
        resume=()
        [[ -f "$run/last.pt" ]] && resume=(--resume)
        emgkey train --config demo --model "$arch" --data "$data" --split "$split" --out "$run" "${resume[@]}" \
            --set "epochs=$EPOCHS" --set "seed=$SEED" --set threads=1 --set progress=false --set optim.align_delay_s=0.06
    fi
    if [[ ! -f "$bundle/manifest.json" ]]; then
        stamp "export $name"
        emgkey export bundle --checkpoint "$run/best.pt" --data "$data" --split "$split" --out "$bundle" --formats onnx
    fi
    if [[ "${BENCH:-0}" == 1 ]]; then
        bench="$OUT/bench/${name}_u$FIRST_USER"
        stamp "calibration bench $name, users $FIRST_USER.., seconds $SECONDS_LIST"
        # shellcheck disable=SC2086
        $PY -m emgkey.benchmarks.calibration_bench --bundle "$bundle" --checkpoint "$run/best.pt" \
            --key-prior "$data" "$split" --first-user "$FIRST_USER" --seconds $SECONDS_LIST --budget-s "$BUDGET_S" \
            --strategies $STRATEGIES --out "$bench${BENCH_TAG:-}" $BENCH_ARGS
    fi
    stamp "$name done"
done
