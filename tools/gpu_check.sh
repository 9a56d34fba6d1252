#!/usr/bin/env bash
# The checks that need a GPU, as one script: the CUDA tests, the module benchmark (table T1) on the
# GPU, and seed 0 of three study models trained and evaluated on the GPU.
#
# Usage: tools/gpu_check.sh OUT_DIR
# Needs a CUDA build of torch and the project's dependencies (mlflow is not needed: tracking is off).
# Every step has its own time limit, so one slow step cannot hide the results of the others.
set -uo pipefail
out=${1:?usage: tools/gpu_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
fsanet() { "$py" -m fsanet.cli "$@"; }

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; "$py" -c \
  'import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'
} > "$out/env.txt" 2>&1
cat "$out/env.txt"

echo "== CUDA tests"
timeout 200 "$py" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py > "$out/test_cuda.log" 2>&1
echo "pytest -m cuda: rc $?"; tail -n 15 "$out/test_cuda.log"

echo "== module benchmark on the GPU (T1)"
timeout 150 fsanet -q bench attention -c params/bench.yaml bench.device=cuda bench.memory_budget_gb=100 \
  --out "$out/bench_attention_cuda.json" > "$out/bench.log" 2>&1
echo "bench attention: rc $?"
fsanet -q tables efficiency --bench "$out/bench_attention_cuda.json" --out-dir "$out/tables" \
  --plot "$out/efficiency_scaling_cuda.png" >> "$out/bench.log" 2>&1
echo "tables efficiency: rc $?"; tail -n 5 "$out/bench.log"

echo "== seed 0 of three study models on the GPU"
data=$(mktemp -d)/data
timeout 120 fsanet -q data prepare synthetic --root "$data" --workers 0 > "$out/prepare.log" 2>&1
echo "prepare: rc $?"
pids=()
for model in fcn nonlocal fsanet; do
  run=$(mktemp -d)/$model
  ( SECONDS=0
    timeout 240 "$py" -m fsanet.cli -q train -c params/data/synthetic.yaml -c params/model/cpu.yaml \
      -c params/train/cpu.yaml "data.root=$data/synthetic" "model.name=$model" train.seed=0 train.device=cuda \
      eval.device=cuda train.progress=false tracking.enabled=false eval.figures=false \
      --out-dir "$run" --eval-out "$run/eval/none" > "$out/train_$model.log" 2>&1
    rc=$?
    cp "$run/eval/none/metrics.json" "$out/metrics_$model.json" 2>/dev/null
    echo "train+eval $model: rc $rc, ${SECONDS}s"
  ) &
  pids+=($!)
done
wait "${pids[@]}"
for model in fcn nonlocal fsanet; do
  "$py" -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], 'mIoU', d['mIoU'])" \
    "$out/metrics_$model.json" "$model" 2>/dev/null || echo "$model: no metrics"
done
