#!/usr/bin/env bash
# The GPU check, in one call on a GPU machine with no network (docs/performance.md, docs/scaling.md):
#
#   here (CPU, registry):  make gpu-wheels          # = bash benchmarks/gpu_check.sh --prepare  -> .gpu_wheels/ (ignored)
#   there (GPU):           bash benchmarks/gpu_check.sh            # the device tool: carry [".gpu_wheels"]
#   here, as a dry run:    make gpu-check-cpu       # = bash benchmarks/gpu_check.sh --cpu: the same steps, tiny, on CPU
#
# On the GPU it installs the carried wheels the image lacks (trl, datasets, deepspeed, their missing dependencies; a
# fallback pyarrow/fsspec/peft only where the image's own does not fit) into a private --target folder on PYTHONPATH,
# leaving the image's torch 2.11 / transformers 5.17 / accelerate 1.15 in place, then, in under 8 minutes:
#   1. tests: the training tests of tests/test_compat.py on CUDA in bf16 (RLP_TEST_CUDA=1; tests/conftest.py)
#   2. speed: benchmarks/step_cost.py --models random:2048x24 (a random ~1.2B Llama), RLP against plain GRPO, without
#      and with gradient checkpointing (the packed shared-prefix loss pass)
#   3. scale: 2 RLP steps of the same model under DeepSpeed ZeRO-2 on the one GPU (accelerate, peak memory sampled)
# Results go to $OUT when set (else outputs/gpu_check/): gpu_check.log, summary.json, versions.json, step_cost.json,
# step_cost_gc.json, zero2.json (backend, step times, peak memory), zero2_memory.csv (nvidia-smi samples). Exit 0 only
# if all passed.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MODE=gpu
case "${1:-}" in
    --prepare) MODE=prepare ;;
    --cpu) MODE=cpu ;;
    ""|--gpu) MODE=gpu ;;
    *) echo "usage: $0 [--prepare | --cpu | --gpu]" >&2; exit 2 ;;
esac
PY=${PY:-python3}
WHEELS=${GPU_WHEELS:-$ROOT/.gpu_wheels}
export OUT=${OUT:-$ROOT/outputs/gpu_check}
WORK=${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/rlp_gpu_check}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
T0=$(date +%s)
echo "gpu_check: mode $MODE, $(date -u +%FT%TZ), python $($PY -c 'import sys; print(sys.version.split()[0])')"

PLATFORM=(--python-version 3.12 --implementation cp --abi cp312 --only-binary=:all:
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

if [ "$MODE" = prepare ]; then
    # wheels + assets, the dry run of the GPU install against the image's package list, and a real --target install
    # of the chosen wheels for Python 3.12 (no import: they are cp312 wheels)
    set -e
    "$PY" benchmarks/gpu_check.py prepare "$WHEELS"
    "$PY" benchmarks/gpu_check.py plan "$WHEELS"
    rm -rf "$WORK/prepare-target"
    "$PY" -m pip install -q --no-index --no-deps --no-compile "${PLATFORM[@]}" --target "$WORK/prepare-target" \
        "$WHEELS"/*.whl
    echo "dry-run install ok: $(ls "$WORK/prepare-target" | grep -c dist-info) distributions into a Python 3.12 target"
    rm -rf "$WORK/prepare-target"
    size=$(du -sm --apparent-size "$WHEELS" | cut -f1)
    echo "prepared $WHEELS ($size MiB). On the GPU machine: bash benchmarks/gpu_check.sh  (carry .gpu_wheels)"
    exit 0
fi

declare -A STATUS SECONDS_TAKEN
run_step() {  # name, timeout (s), command...; GPU_CHECK_SKIP="tests zero2 ..." skips steps (a rerun)
    local name=$1 limit=$2; shift 2
    local start rc
    if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then STATUS[$name]=skipped; SECONDS_TAKEN[$name]=0; return; fi
    start=$(date +%s)
    echo; echo "=== $name (limit ${limit}s): $*"
    timeout --signal=TERM --kill-after=20 "$limit" "$@"
    rc=$?
    SECONDS_TAKEN[$name]=$(( $(date +%s) - start ))
    if [ $rc -eq 0 ]; then STATUS[$name]=passed; elif [ $rc -eq 124 ]; then STATUS[$name]=timeout; else STATUS[$name]="failed (exit $rc)"; fi
    echo "=== $name: ${STATUS[$name]} in ${SECONDS_TAKEN[$name]}s"
}

rm -rf "$WORK"; mkdir -p "$WORK/cache"
if [ "$MODE" = gpu ]; then
    [ -d "$WHEELS" ] || { echo "no $WHEELS: run 'make gpu-wheels' on a machine with the registry, then carry it"; exit 1; }
    export DS_ACCELERATOR=cuda
    SITE=$WORK/site
    run_step install 120 bash -c "'$PY' -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target '$SITE' \$('$PY' benchmarks/gpu_check.py select '$WHEELS')"
    export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    cp -r "$WHEELS/assets/smollm2-135m" "$WORK/cache/"  # config + tokenizer for random:<hidden>x<layers>
    export RLP_TRL_CACHE=$WORK/cache
    CORPUS=$WHEELS/assets/corpus.jsonl
    export RLP_BENCH_CORPUS=$CORPUS  # benchmarks/step_cost.py: the embedded corpus without its package
    run_step verify 60 "$PY" benchmarks/gpu_check.py verify --cuda
    export RLP_TEST_CUDA=1
    MODEL_SPEC=${GPU_CHECK_MODEL:-random:2048x24}
    STEP_COST=(--models "$MODEL_SPEC" --no-sweep --groups grpo,rlp,rlp_no_sharing --steps 3 --warmup 1)
    LAUNCH=(--config_file examples/accelerate_configs/deepspeed_zero2.yaml --num_processes 1)
    TRAIN=(--bf16 true --per_device_train_batch_size 16 --num_generations 8 --max_completion_length 64
           --max_context_tokens 512 --min_context_tokens 64)
    LIMITS=(100 150 130)
else
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    export RLP_TRL_CACHE=${RLP_TRL_CACHE:-$HOME/.cache/rlp_trl}  # the converted SmolLM2 (make assets)
    CORPUS=$("$PY" -c "from rlp_trl.tools.assets import default_corpus_path as p; print(p())")
    run_step verify 120 "$PY" benchmarks/gpu_check.py verify
    if [ -d "$WHEELS" ]; then run_step plan 60 "$PY" benchmarks/gpu_check.py plan "$WHEELS"; fi
    MODEL_SPEC=tiny
    STEP_COST=(--models tiny --no-sweep --groups grpo,rlp --steps 1 --warmup 1 --G 2 --context 32 --thought 4)
    LAUNCH=(--config_file examples/accelerate_configs/deepspeed_zero2.yaml --num_processes 1 --mixed_precision no)
    TRAIN=(--use_cpu true --bf16 false --per_device_train_batch_size 4 --num_generations 2 --max_completion_length 4
           --max_context_tokens 48 --min_context_tokens 4)
    LIMITS=(300 300 300)
fi

# 1. the training tests, on CUDA in bf16 there (on CPU in fp32 here)
run_step tests "${LIMITS[0]}" "$PY" -m pytest -q -p no:cacheprovider tests/test_compat.py \
    tests/test_likelihood.py -k "end_to_end or resume or installed_trl or runs_and_logs" -W ignore::UserWarning

# 2. RLP against plain GRPO, same model and shapes; again with gradient checkpointing (the packed shared-prefix pass)
run_step step_cost "${LIMITS[1]}" "$PY" benchmarks/step_cost.py "${STEP_COST[@]}" --json "$OUT/step_cost.json"
run_step step_cost_gc "${LIMITS[1]}" "$PY" benchmarks/step_cost.py "${STEP_COST[@]}" --gradient-checkpointing \
    --json "$OUT/step_cost_gc.json"

# 3. two steps under DeepSpeed ZeRO-2 (one process); GPU memory sampled every 0.5 s
run_step zero2_model 120 "$PY" benchmarks/gpu_check.py make-model "$MODEL_SPEC" "$WORK/model"
SAMPLER=
if [ "$MODE" = gpu ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,name,memory.used,memory.total,utilization.gpu --format=csv -lms 500 \
        >"$OUT/zero2_memory.csv" 2>/dev/null &
    SAMPLER=$!
fi
export MASTER_ADDR=127.0.0.1 MASTER_PORT=${MASTER_PORT:-29517}
run_step zero2 "${LIMITS[2]}" "$PY" -m accelerate.commands.launch "${LAUNCH[@]}" benchmarks/gpu_check.py zero2 \
    --model_name_or_path "$WORK/model" --dataset_name "$CORPUS" --output_dir "$WORK/zero2" --max_steps 2 \
    --logging_steps 1 --save_strategy no --report_to none --gradient_checkpointing false --disable_tqdm true \
    --seed 0 "${TRAIN[@]}"
[ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null

# summary
ALL_OK=1
{
    echo "{\"mode\": \"$MODE\", \"model\": \"$MODEL_SPEC\", \"total_s\": $(( $(date +%s) - T0 )), \"steps\": {"
    first=1
    for name in install verify plan tests step_cost step_cost_gc zero2_model zero2; do
        [ -n "${STATUS[$name]:-}" ] || continue
        [ "${STATUS[$name]}" = passed ] || [ "${STATUS[$name]}" = skipped ] || ALL_OK=0
        [ $first = 1 ] || echo ","
        first=0
        echo -n "  \"$name\": {\"status\": \"${STATUS[$name]}\", \"seconds\": ${SECONDS_TAKEN[$name]}}"
    done
    echo; echo "}}"
} >"$OUT/summary.json"
echo; cat "$OUT/summary.json"
if [ -f "$OUT/zero2_memory.csv" ]; then
    echo "zero2 peak GPU memory (MiB): $(awk -F', ' 'NR>1 {gsub(/ MiB/,"",$3); if ($3+0>m) m=$3+0} END {print m}' \
        "$OUT/zero2_memory.csv")"
fi
echo "gpu_check: $([ $ALL_OK = 1 ] && echo PASSED || echo FAILED) in $(( $(date +%s) - T0 ))s; results in $OUT"
[ $ALL_OK = 1 ]
