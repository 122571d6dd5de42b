#!/usr/bin/env bash
# The training-step figures of benchmarks/README.md on one accelerator host:
# supervised ResNet-18/50 and SimCLR ResNet-50 without and with attention heads,
# ImageNet shapes (224 px, bf16). One JSON line per run goes to $1/results.jsonl.
#
#   bash benchmarks/accelerator.sh OUT_DIR [PEAK_TFLOPS_PER_DEVICE] [BATCH_PER_DEVICE]
#
# PEAK_TFLOPS_PER_DEVICE (for MFU; bf16 dense): H100/H200 SXM 989, A100 312,
# TPU v4 275, TPU v5e 197. EXTRA_FLAGS (e.g. "--config.data.image_size=160") is
# appended to every run; STEPS sets the timed steps (default 20).
set -uo pipefail
out=${1:?usage: accelerator.sh OUT_DIR [PEAK_TFLOPS] [BATCH_PER_DEVICE]}
peak=${2:-989}
per_device=${3:-256}
mkdir -p "$out"
cd "$(dirname "$0")/.."
python3 -c 'import jax; print(jax.__version__, jax.devices())'
ndev=$(python3 -c 'import jax; print(jax.device_count())')
batch=$((per_device * ndev))
run() {  # name, then train_step.py flags
  local name=$1; shift
  echo "== $name"
  timeout "${RUN_TIMEOUT:-300}" python3 benchmarks/train_step.py "$@" \
      --config.input.global_batch_size="$batch" --steps="${STEPS:-20}" --warmup=3 \
      --peak_tflops="$peak" ${EXTRA_FLAGS:-} 2>"$out/$name.err" | tail -n2 | tee -a "$out/results.jsonl" \
    || tail -n5 "$out/$name.err"
}
run supervised_r50 --config=configs/supervised.py:imagenet,r50
run contrastive_r50_attn --config=configs/contrastive_attn_teacher.py:imagenet --compare_attention
run supervised_r18 --config=configs/supervised.py:imagenet,r18
