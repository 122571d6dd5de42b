#!/usr/bin/env bash
# The training-step figures of benchmarks/README.md on one accelerator host:
# supervised ResNet-18/50 and SimCLR ResNet-50, each attention row against its
# baseline (teacher maps, co-train),
# ImageNet shapes (224 px, bf16). One JSON line per run goes to $1/results.jsonl.
#
#   bash benchmarks/accelerator.sh OUT_DIR [PEAK_TFLOPS_PER_DEVICE] [BATCH_PER_DEVICE]
#
# PEAK_TFLOPS_PER_DEVICE (for MFU; bf16 dense): H100/H200 SXM 989, A100 312,
# TPU v4 275, TPU v5e 197. EXTRA_FLAGS (e.g. "--config.data.image_size=160") is
# appended to every run; STEPS sets the timed steps (default 20); ONLY (a regex)
# keeps the runs whose name matches.
set -uo pipefail
out=${1:?usage: accelerator.sh OUT_DIR [PEAK_TFLOPS] [BATCH_PER_DEVICE]}
peak=${2:-989}
per_device=${3:-256}
mkdir -p "$out"
cd "$(dirname "$0")/.."
python3 -c 'import jax; print(jax.__version__, jax.devices())'
ndev=$(python3 -c 'import jax; print(jax.device_count())')
batch=$((per_device * ndev))
ONLY=${ONLY:-}  # a regex: run only the runs whose name matches
run() {  # name, then train_step.py flags
  local name=$1; shift
  [[ -n "$ONLY" && ! "$name" =~ $ONLY ]] && return 0
  echo "== $name"
  timeout "${RUN_TIMEOUT:-300}" python3 benchmarks/train_step.py "$@" \
      --config.input.global_batch_size="$batch" --steps="${STEPS:-20}" --warmup=3 \
      --peak_tflops="$peak" ${EXTRA_FLAGS:-} 2>"$out/$name.err" | tail -n2 | tee -a "$out/results.jsonl" \
    || tail -n5 "$out/$name.err"
}
run supervised_r50 --config=configs/supervised.py:imagenet,r50
run contrastive_r50_attn --config=configs/contrastive_attn_teacher.py:imagenet --compare_attention
run supervised_r18 --config=configs/supervised.py:imagenet,r18
run supervised_r50_attn --config=configs/supervised_attn_teacher.py:imagenet,r50 --compare_attention
run contrastive_r50_cotrain --config=configs/contrastive_attn_cotrain.py:imagenet --compare_attention
