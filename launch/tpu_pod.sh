#!/usr/bin/env bash
# Runs one config on every host of a Cloud TPU pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/contrastive.py:imagenet gs://BUCKET/run [--config.key=value ...]
#
# Copies this checkout to each host, installs it, and starts the same command
# on all of them; jax.distributed.initialize() needs no arguments on Cloud TPU.
# tfds data must sit in a bucket the hosts can read (--config.data.data_dir=gs://...).
set -euo pipefail
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
here=$(cd "$(dirname "$0")/.." && pwd)
tar -C "$here" --exclude=.git -czf /tmp/attn_contrastive.tgz .
gcloud compute tpus tpu-vm scp /tmp/attn_contrastive.tgz "$tpu":/tmp/ --zone "$zone" --worker=all
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e
  mkdir -p ~/attn_contrastive && tar -C ~/attn_contrastive -xzf /tmp/attn_contrastive.tgz
  cd ~/attn_contrastive
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -e . 'jax[tpu]'
  nohup python -m attn_contrastive.main --config=$config --workdir=$workdir \
      --jax_distributed $* > ~/attn_contrastive.log 2>&1 &
"
echo "started on all workers of $tpu; logs in ~/attn_contrastive.log on each"
