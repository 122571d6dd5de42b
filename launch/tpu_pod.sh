#!/usr/bin/env bash
# Runs one config on every host of a Cloud TPU pod slice, and runs it again
# after a preemption until it has finished.
#
#   launch/tpu_pod.sh [--dry-run] [--watch[=SECONDS]] TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]
#
#   launch/tpu_pod.sh --watch my-v4-32 us-central2-b configs/contrastive.py:imagenet \
#       gs://BUCKET/runs/simclr --config.data.data_dir=gs://BUCKET/tensorflow_datasets
#
# Start: copies this checkout to each host, installs it with jax[tpu], and
# starts the same command on all of them in the background, with
# --jax_distributed (jax.distributed.initialize() needs no arguments on Cloud
# TPU). Output goes to ~/attn_contrastive.log on each host. A run this
# launcher started earlier on the slice is stopped first (SIGTERM: it saves).
# WORKDIR must be storage every host reaches (gs://...), and so must the tfds
# data (--config.data.data_dir=gs://...).
#
# On each host the command runs again while it exits 75 (EX_TEMPFAIL: on
# SIGTERM or SIGUSR1, as a maintenance event sends, the training loop saves at
# a step all processes agree on and exits 75), and resumes from WORKDIR's
# checkpoint. Any other exit status ends it; it is kept in
# ~/attn_contrastive.exit.
#
# --watch[=SECONDS]: stays in the foreground and polls every SECONDS (300):
# the slice's state (gcloud compute tpus tpu-vm describe), then each host's
# run. It starts the run when the slice is READY again after PREEMPTED, and
# when a host's run is gone without having finished (no WORKDIR/results.json
# and no exit status 0); it returns 0 once the run has finished, and the run's
# status if it failed (any status but 0 and 75: rerunning would fail again).
# At its first poll the watcher starts the run unless it is going already or
# WORKDIR/results.json exists (an exit status left by an earlier run does not
# count), so watching a run started without --watch, or watching again after
# closing this terminal, leaves it alone (one run per slice). A preempted
# spot slice does not come back by itself: the watcher waits until it is
# READY again under the same name (recreated by hand or by a queued
# resource), then starts the run on it.
#
# --dry-run: prints every command (as a bash script) and runs nothing.
set -euo pipefail

readonly EX_TEMPFAIL=75
usage="usage: $0 [--dry-run] [--watch[=SECONDS]] TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]"
dry_run=0 watch=0 interval=300
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    --watch) watch=1 ;;
    --watch=*) watch=1 interval=${1#--watch=} ;;
    --help|-h) echo "$usage"; exit 0 ;;
    *) echo "$usage" >&2; echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ $# -lt 4 ]]; then
  echo "$usage" >&2
  exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
here=$(cd "$(dirname "$0")/.." && pwd)
tarball=${TMPDIR:-/tmp}/attn_contrastive.tgz

# One word for bash: as is when safe, else in single quotes; a word of several
# lines as a quoted here-document, so that the printed remote scripts read as
# they run.
quote() {
  local word=$1 q="'"
  if [[ $word == *$'\n'* ]]; then
    printf '"$(cat <<%sREMOTE%s\n%s\nREMOTE\n)"' "$q" "$q" "$word"
  elif [[ -z $word || $word =~ [^A-Za-z0-9_./:=,@%+-] ]]; then
    printf "'%s'" "${word//$q/$q\\$q$q}"
  else
    printf '%s' "$word"
  fi
}

quote_all() {
  local word sep=""
  for word in "$@"; do
    printf '%s%s' "$sep" "$(quote "$word")"
    sep=" "
  done
}

# Runs a command, or prints it with --dry-run.
run() {
  if [[ $dry_run == 1 ]]; then
    quote_all "$@"
    echo
  else
    "$@"
  fi
}

log() {
  echo "tpu_pod.sh: $*" >&2
}

# The command each host runs, rerun while it exits 75.
run_script() {
  cat <<EOF
#!/usr/bin/env bash
# Written by launch/tpu_pod.sh: runs the command again while it exits
# $EX_TEMPFAIL (saved on SIGTERM/SIGUSR1, resume me), unless a stop was asked.
echo \$\$ > ~/attn_contrastive.pid
cd ~/attn_contrastive && . .venv/bin/activate
# A trap with a command (not an ignored signal) keeps this shell alive through
# a SIGTERM to the process group and leaves the run's own handler in place.
trap 'echo "run.sh: SIGTERM: the run saves and exits $EX_TEMPFAIL"' TERM
while :; do
  $(quote_all python -m attn_contrastive.main "--config=$config" "--workdir=$workdir" \
      --jax_distributed "$@")
  status=\$?
  if [ "\$status" -ne $EX_TEMPFAIL ] || [ -e ~/attn_contrastive.stop ]; then
    break
  fi
  echo "run.sh: exit $EX_TEMPFAIL (preempted): resuming from the last checkpoint"
done
echo "\$status" > ~/attn_contrastive.exit
exit "\$status"
EOF
}

# Whether run.sh is going on a host: the process of its pid file is run.sh
# (after a reboot the pid may belong to another process).
readonly ALIVE='alive() { pid=$(cat ~/attn_contrastive.pid 2>/dev/null) && [ -n "$pid" ] && grep -qs attn_contrastive/run.sh "/proc/$pid/cmdline"; }'

# What each host does to start the run: stop the one this launcher started
# earlier (by its process group), unpack and install, start run.sh detached.
start_script() {
  cat <<EOF
set -e
$ALIVE
if alive; then
  echo "stopping the run started before (process group \$pid)"
  touch ~/attn_contrastive.stop
  kill -TERM -- "-\$pid" 2>/dev/null || true
  for _ in \$(seq 300); do kill -0 "\$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-\$pid" 2>/dev/null || true
fi
rm -f ~/attn_contrastive.stop ~/attn_contrastive.exit ~/attn_contrastive.pid
mkdir -p ~/attn_contrastive && tar -C ~/attn_contrastive -xzf /tmp/attn_contrastive.tgz
cd ~/attn_contrastive
python3 -m venv .venv && . .venv/bin/activate
pip install -q -e . 'jax[tpu]'
cat > ~/attn_contrastive/run.sh <<'RUN'
$(run_script "$@")
RUN
setsid nohup bash ~/attn_contrastive/run.sh >> ~/attn_contrastive.log 2>&1 < /dev/null &
echo "started on \$(hostname)"
EOF
}

# Each host's answer to "how is the run?": running, exit:N (it ended with N),
# stopped (gone without an exit status: the host restarted), and finished
# where WORKDIR/results.json is on its disk (a local WORKDIR).
probe_script() {
  cat <<EOF
$ALIVE
if alive; then
  echo attn_contrastive:running
elif [ -f ~/attn_contrastive.exit ]; then
  echo "attn_contrastive:exit:\$(cat ~/attn_contrastive.exit)"
else
  echo attn_contrastive:stopped
fi
EOF
  if [[ $workdir != *://* ]]; then
    printf 'cd ~/attn_contrastive 2>/dev/null && [ -f %s/results.json ] && echo attn_contrastive:finished\ntrue\n' \
        "$(quote "$workdir")"
  fi
}

ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$1"
}

start() {
  run tar -C "$here" --exclude=.git --exclude=.venv --exclude=__pycache__ \
      --exclude='*.egg-info' --exclude=workdir -czf "$tarball" . &&
  run gcloud compute tpus tpu-vm scp "$tarball" "$tpu":/tmp/attn_contrastive.tgz \
      --zone "$zone" --worker=all &&
  ssh_all "$(start_script "$@")"
}

state() {
  run gcloud compute tpus tpu-vm describe "$tpu" --zone "$zone" --format='value(state)'
}

# The run's state from the hosts' answers: finished, failed:N, gone (some
# host's run is not going and it has not finished), running, or unknown (no
# host answered). With "new", an exit status left on the hosts is ignored: it
# is that of an earlier run, and only WORKDIR/results.json says this one is done.
run_status() {
  local answers failed mode=${1:-}
  answers=$(ssh_all "$(probe_script)" 2>/dev/null) || true
  if [[ $workdir == gs://* ]] && run gcloud storage ls "$workdir/results.json" >/dev/null 2>&1; then
    echo finished
  elif grep -q 'attn_contrastive:finished' <<<"$answers"; then
    echo finished
  elif [[ $mode == new ]]; then
    if grep -q 'attn_contrastive:running' <<<"$answers"; then echo running; else echo gone; fi
  elif grep -q 'attn_contrastive:exit:0$' <<<"$answers"; then
    echo finished
  elif failed=$(grep -o 'attn_contrastive:exit:[0-9]*' <<<"$answers" \
                | grep -v ":exit:$EX_TEMPFAIL\$" | head -n1); then
    echo "failed:${failed##*:}"
  elif grep -q 'attn_contrastive:stopped\|attn_contrastive:exit:' <<<"$answers"; then
    echo gone
  elif grep -q 'attn_contrastive:running' <<<"$answers"; then
    echo running
  else
    echo unknown
  fi
}

watch() {
  local preempted=0 mode=new slice status
  while :; do
    slice=$(state 2>/dev/null) || slice=UNKNOWN
    case $slice in
      READY)
        if [[ $preempted == 1 ]]; then
          log "$tpu is READY again after a preemption: starting the run (it resumes)"
          start "$@" || log "start failed; trying again at the next poll"
          preempted=0
        else
          status=$(run_status "$mode")
          case $status in
            finished) log "the run has finished"; return 0 ;;
            failed:*) log "the run failed with exit status ${status#failed:}: not restarting" \
                          "(see ~/attn_contrastive.log on the hosts)"
                      return "${status#failed:}" ;;
            gone) log "the run is not going on every host and has not finished: starting it" \
                      "(it resumes from $workdir)"
                  start "$@" || log "start failed; trying again at the next poll" ;;
          esac
          [[ $status == unknown ]] || mode=""
        fi ;;
      PREEMPTED|TERMINATED|STOPPED|STOPPING)
        [[ $preempted == 1 ]] || log "$tpu is $slice: waiting until it is READY again"
        preempted=1 ;;
    esac
    sleep "$interval"
  done
}

if [[ $dry_run == 1 ]]; then
  echo "# start: on every host of $tpu"
  start "$@"
  if [[ $watch == 1 ]]; then
    echo "# --watch: every $interval s, the slice's state, then each host's run (the start"
    echo "# above when READY after PREEMPTED or a host's run is gone unfinished; the end"
    echo "# once it has finished or failed)"
    state
    ssh_all "$(probe_script)"
    if [[ $workdir == gs://* ]]; then
      run gcloud storage ls "$workdir/results.json"
    fi
  fi
  exit 0
fi
if [[ $watch == 1 ]]; then
  watch "$@"
else
  start "$@"
  log "started on all hosts of $tpu; logs in ~/attn_contrastive.log on each." \
      "Run again with --watch to restart it after a preemption."
fi
