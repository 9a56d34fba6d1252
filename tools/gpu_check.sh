#!/usr/bin/env bash
# `make gpu-check`: the checks that need a GPU, in one command (about 5 minutes on one H200-class GPU):
#   1. the CUDA-marked tests (tests/test_cuda.py);
#   2. `fsanet bench attention` on CUDA at the paper's setting and sweep (table T1 on the GPU);
#   3. one AMP training step of R101-D8 FsaNet at 769×769 (time, peak memory);
#   4. a two-process DDP training (NCCL), if two GPUs exist;
#   5. seed 0 of FCN, non-local and FsaNet trained and evaluated on the GPU (the study's models).
# Without CUDA it says so and exits 0. Every step has its own time limit, so one slow step cannot hide
# the others; the script exits 1 if any step failed.
#
# Usage: tools/gpu_check.sh [OUT_DIR]   (default results/gpu_check)
set -uo pipefail
out=${1:-results/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
fsanet() { "$py" -m fsanet.cli "$@"; }
failed=0
step() { local name=$1 rc=$2; echo "$name: rc $rc"; [ "$rc" -eq 0 ] || failed=1; }

gpus=$("$py" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
if [ "$gpus" -eq 0 ]; then
  "$py" - <<'PY' 2>/dev/null || echo "gpu-check: torch is not importable; nothing to check"
import torch
print(f"gpu-check: no CUDA device (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); nothing to check")
PY
  exit 0
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null; "$py" -c \
  'import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'
} > "$out/env.txt" 2>&1
cat "$out/env.txt"

echo "== 1. CUDA tests"
timeout 240 "$py" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py > "$out/test_cuda.log" 2>&1
step "pytest -m cuda" $?; tail -n 15 "$out/test_cuda.log"

echo "== 2. module benchmark on the GPU (T1)"
timeout 150 fsanet -q bench attention bench.device=cuda bench.memory_budget_gb=100 \
  --out "$out/bench_attention_cuda.json" > "$out/bench.log" 2>&1
step "bench attention" $?
fsanet -q tables efficiency --bench "$out/bench_attention_cuda.json" --out-dir "$out/tables" \
  --plot "$out/efficiency_scaling_cuda.png" >> "$out/bench.log" 2>&1
step "tables efficiency" $?; tail -n 5 "$out/bench.log"

echo "== 3. one AMP training step, R101-D8 FsaNet at 769x769"
timeout 120 "$py" tools/gpu_train_step.py "$out/train_step_r101_769.json" > "$out/train_step.log" 2>&1
step "train step" $?; tail -n 25 "$out/train_step.log"

data=$(mktemp -d)/data
timeout 120 fsanet -q data prepare synthetic --root "$data" --workers 0 > "$out/prepare.log" 2>&1
step "prepare synthetic" $?
common=(-c params/data/synthetic.yaml -c params/train/cpu.yaml "data.root=$data/synthetic"
        train.device=cuda eval.device=cuda train.progress=false tracking.enabled=false eval.figures=false)

echo "== 4. two-process DDP (NCCL)"
if [ "$gpus" -ge 2 ]; then
  run=$(mktemp -d)/ddp
  timeout 180 "$py" -m torch.distributed.run --standalone --nproc-per-node 2 -m fsanet.cli -q train "${common[@]}" \
    model.name=fsanet train.max_iters=40 --out-dir "$run" > "$out/ddp.log" 2>&1
  step "ddp (2 GPUs)" $?
  "$py" -c "import json,sys; d=json.load(open(sys.argv[1])); print('world_size', d['world_size'], d['status'])" \
    "$run/run_info.json" 2>&1 | tee -a "$out/ddp.log"
else
  echo "ddp: skipped, $gpus GPU (needs 2)" | tee "$out/ddp.log"
fi

echo "== 5. seed 0 of three study models on the GPU"
pids=()
for model in fcn nonlocal fsanet; do
  run=$(mktemp -d)/$model
  ( SECONDS=0
    timeout 240 "$py" -m fsanet.cli -q train "${common[@]}" "model.name=$model" train.seed=0 \
      --out-dir "$run" --eval-out "$run/eval/none" > "$out/train_$model.log" 2>&1
    rc=$?
    cp "$run/eval/none/metrics.json" "$out/metrics_$model.json" 2>/dev/null
    echo "train+eval $model: rc $rc, ${SECONDS}s"
    exit $rc
  ) &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
for model in fcn nonlocal fsanet; do
  "$py" -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], 'mIoU', d['mIoU'])" \
    "$out/metrics_$model.json" "$model" 2>/dev/null || echo "$model: no metrics"
done
echo "gpu-check: $([ $failed -eq 0 ] && echo 'all steps passed' || echo 'some steps FAILED') (logs in $out)"
exit $failed
