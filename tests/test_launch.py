"""The launchers: the commands they run (--dry-run), the per-host rerun on exit 75,
the TPU watcher's restarts, and the SLURM batch shell passing signals on and
requeueing. gcloud, srun and scontrol are fakes on PATH that record their calls."""
import os
import re
import shutil
import signal
import stat
import subprocess
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(ROOT, "launch", "tpu_pod.sh")
SLURM = os.path.join(ROOT, "launch", "slurm.sbatch")
OVERRIDES = ["--config.data.data_dir=gs://bucket/tensorflow_datasets",
             "--config.study.rows=it's two words"]


def _script(path, body: str) -> str:
  path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return str(path)


def _recorder(bin_dir, name: str, log) -> None:
  """A ``name`` that only records that it was called."""
  _script(bin_dir / name, f'echo "{name} $*" >> {log}\n')


def _env(tmp_path, **extra) -> dict:
  bin_dir = tmp_path / "bin"
  return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TMPDIR=str(tmp_path),
              HOME=str(tmp_path / "home"), **extra)


def _bash(args, env, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", *args], env=env, capture_output=True, text=True,
                        timeout=60, **kwargs)


def _heredoc(text: str, tag: str) -> str:
  """The body of the first ``<<'tag'`` here-document in ``text``."""
  return re.search(rf"<<'{tag}'\n(.*?)\n{tag}\n", text, re.S).group(1)


@pytest.fixture
def no_tools(tmp_path):
  """gcloud, srun and scontrol that only record calls: a dry run must make none."""
  (tmp_path / "bin").mkdir()
  (tmp_path / "home").mkdir()
  log = tmp_path / "calls"
  for name in ("gcloud", "srun", "scontrol", "sbatch", "ssh"):
    _recorder(tmp_path / "bin", name, log)
  return log


# -- Cloud TPU pods ------------------------------------------------------------------------


def test_tpu_dry_run_prints_every_command(tmp_path, no_tools):
  out = _bash([TPU, "--dry-run", "my-v4-32", "us-central2-b", "configs/contrastive.py:imagenet",
               "gs://bucket/runs/simclr", *OVERRIDES], _env(tmp_path))
  assert out.returncode == 0, out.stderr
  assert not no_tools.exists()  # nothing was run
  assert not (tmp_path / "attn_contrastive.tgz").exists()
  lines = out.stdout.splitlines()
  assert lines[1].startswith(f"tar -C {ROOT} --exclude=.git --exclude=.venv")
  assert lines[2] == (f"gcloud compute tpus tpu-vm scp {tmp_path}/attn_contrastive.tgz "
                      "my-v4-32:/tmp/attn_contrastive.tgz --zone us-central2-b --worker=all")
  assert lines[3] == ("gcloud compute tpus tpu-vm ssh my-v4-32 --zone us-central2-b "
                      "--worker=all --command \"$(cat <<'REMOTE'")
  remote = _heredoc(out.stdout, "REMOTE")
  assert "tar -C ~/attn_contrastive -xzf /tmp/attn_contrastive.tgz" in remote
  assert "python3 -m venv .venv && . .venv/bin/activate\npip install -q -e . 'jax[tpu]'" in remote
  assert "setsid nohup bash ~/attn_contrastive/run.sh >> ~/attn_contrastive.log" in remote
  assert ("  python -m attn_contrastive.main --config=configs/contrastive.py:imagenet "
          "--workdir=gs://bucket/runs/simclr --jax_distributed "
          "--config.data.data_dir=gs://bucket/tensorflow_datasets "
          "'--config.study.rows=it'\\''s two words'\n") in _heredoc(remote, "RUN")
  assert "describe" not in out.stdout  # no watcher without --watch


def test_tpu_dry_run_with_watch_prints_the_polls(tmp_path, no_tools):
  out = _bash([TPU, "--dry-run", "--watch=60", "my-v4-32", "us-central2-b",
               "configs/supervised.py:imagenet,r50", "gs://bucket/runs/sup"], _env(tmp_path))
  assert out.returncode == 0, out.stderr
  assert not no_tools.exists()
  assert ("gcloud compute tpus tpu-vm describe my-v4-32 --zone us-central2-b "
          "'--format=value(state)'") in out.stdout
  assert "every 60 s" in out.stdout
  assert "echo attn_contrastive:running" in out.stdout
  assert out.stdout.rstrip().endswith("gcloud storage ls gs://bucket/runs/sup/results.json")


def test_tpu_usage_errors(tmp_path, no_tools):
  out = _bash([TPU, "my-v4-32", "us-central2-b"], _env(tmp_path))
  assert out.returncode == 2 and "usage:" in out.stderr
  out = _bash([TPU, "--wacth", "a", "b", "c", "d"], _env(tmp_path))
  assert out.returncode == 2 and "unknown option --wacth" in out.stderr


def _host_run_script(tmp_path, no_tools) -> str:
  """The run.sh a host gets, written to ``tmp_path``, with the host's home set up."""
  out = _bash([TPU, "--dry-run", "tpu", "zone", "configs/contrastive.py:imagenet",
               "gs://bucket/run", *OVERRIDES], _env(tmp_path))
  venv = tmp_path / "home" / "attn_contrastive" / ".venv" / "bin"
  venv.mkdir(parents=True)
  (venv / "activate").write_text("")
  (tmp_path / "run.sh").write_text(_heredoc(_heredoc(out.stdout, "REMOTE"), "RUN") + "\n")
  return str(tmp_path / "run.sh")


def test_tpu_host_reruns_the_command_while_it_exits_75(tmp_path, no_tools):
  """Each host's loop: the arguments arrive intact, exit 75 runs it again, 0 ends it."""
  run_sh = _host_run_script(tmp_path, no_tools)
  _script(tmp_path / "bin" / "python", f"""\
      printf '%s\\n' "$@" > {tmp_path}/argv
      n=$(( $(cat {tmp_path}/runs 2>/dev/null || echo 0) + 1 )); echo $n > {tmp_path}/runs
      [ $n -lt 3 ] && exit 75 || exit 0
      """)
  out = _bash([run_sh], _env(tmp_path))
  assert out.returncode == 0, out.stderr
  assert (tmp_path / "runs").read_text().strip() == "3"
  assert out.stdout.count("exit 75 (preempted): resuming from the last checkpoint") == 2
  assert (tmp_path / "argv").read_text().splitlines() == [
      "-m", "attn_contrastive.main", "--config=configs/contrastive.py:imagenet",
      "--workdir=gs://bucket/run", "--jax_distributed", *OVERRIDES]
  home = tmp_path / "home"
  assert (home / "attn_contrastive.exit").read_text().strip() == "0"
  assert (home / "attn_contrastive.pid").read_text().strip().isdigit()


def test_tpu_host_stops_on_other_statuses_and_when_asked(tmp_path, no_tools):
  run_sh = _host_run_script(tmp_path, no_tools)
  _script(tmp_path / "bin" / "python", f"echo x >> {tmp_path}/runs; exit $FAKE_EXIT\n")
  out = _bash([run_sh], _env(tmp_path, FAKE_EXIT="1"))
  assert out.returncode == 1 and (tmp_path / "runs").read_text().count("x") == 1
  (tmp_path / "home" / "attn_contrastive.stop").write_text("")  # the launcher's stop
  out = _bash([run_sh], _env(tmp_path, FAKE_EXIT="75"))
  assert out.returncode == 75 and (tmp_path / "runs").read_text().count("x") == 2
  assert (tmp_path / "home" / "attn_contrastive.exit").read_text().strip() == "75"


def _wait_for(predicate, what: str, timeout: float = 30.0) -> None:
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.05)


def test_tpu_host_start_replaces_the_earlier_run_and_the_probe_sees_it(tmp_path, no_tools):
  """The start and probe scripts as a host runs them (tar, python3, pip and the run
  faked): run.sh is detached, the probe finds it, a second start stops it
  (SIGTERM to its process group: it saves, exits 75 and is not rerun) and
  starts a new one."""
  out = _bash([TPU, "--dry-run", "--watch", "tpu", "zone", "configs/contrastive.py",
               "gs://bucket/run"], _env(tmp_path))
  start, probe = re.findall(r"<<'REMOTE'\n(.*?)\nREMOTE\n", out.stdout, re.S)
  home, bin_dir = tmp_path / "home", tmp_path / "bin"
  _script(bin_dir / "tar", "mkdir -p ~/attn_contrastive\n")
  _script(bin_dir / "python3", "mkdir -p .venv/bin && touch .venv/bin/activate\n")
  _script(bin_dir / "pip", "true\n")
  _script(bin_dir / "python", f"""\
      echo $$ >> {tmp_path}/runs
      trap 'kill $sleeper; echo saved >> {tmp_path}/saved; exit 75' TERM
      sleep 60 & sleeper=$!
      wait $sleeper
      """)
  env = _env(tmp_path)
  pid_file = home / "attn_contrastive.pid"
  runs = lambda: (tmp_path / "runs").read_text().split() if (tmp_path / "runs").exists() else []  # noqa: E731
  assert _bash(["-c", probe], env).stdout.strip() == "attn_contrastive:stopped"
  try:
    first = _bash(["-c", start], env)
    assert first.returncode == 0, first.stderr
    _wait_for(lambda: len(runs()) == 1 and pid_file.exists(), "the first run")
    first_pid = int(pid_file.read_text())
    assert _bash(["-c", probe], env).stdout.strip() == "attn_contrastive:running"
    second = _bash(["-c", start], env)
    assert second.returncode == 0, second.stderr
    assert f"stopping the run started before (process group {first_pid})" in second.stdout
    assert (tmp_path / "saved").read_text().split() == ["saved"]
    _wait_for(lambda: len(runs()) == 2 and pid_file.exists()
              and int(pid_file.read_text()) != first_pid, "the second run")
    assert _bash(["-c", probe], env).stdout.strip() == "attn_contrastive:running"
    log = (home / "attn_contrastive.log").read_text()
    assert "SIGTERM: the run saves and exits 75" in log and "resuming" not in log
  finally:
    if pid_file.exists():
      try:
        os.killpg(int(pid_file.read_text()), signal.SIGKILL)
      except ProcessLookupError:
        pass
  _wait_for(lambda: _bash(["-c", probe], env).stdout.strip() != "attn_contrastive:running",
            "the run to end")


def _fake_gcloud(tmp_path, states: list[str], probes: list[str]) -> None:
  """A gcloud that plays ``states`` (describe) and ``probes`` (the hosts' answers,
  lines joined by '|') in turn, repeating the last, and records every call."""
  (tmp_path / "states").write_text("\n".join(states) + "\n")
  (tmp_path / "probes").write_text("\n".join(probes) + "\n")
  _script(tmp_path / "bin" / "gcloud", f"""\
      d={tmp_path}
      next_line() {{  # the next line of $1, the last one again once they are used up
        n=$(( $(cat "$1.n" 2>/dev/null || echo 0) + 1 )); echo $n > "$1.n"
        total=$(wc -l < "$1"); [ $n -le $total ] || n=$total
        sed -n "${{n}}p" "$1"
      }}
      case "$*" in
        *"tpu-vm describe"*) echo describe >> $d/calls; next_line $d/states ;;
        *"tpu-vm scp"*) echo scp >> $d/calls ;;
        *"tpu-vm ssh"*"attn_contrastive:stopped"*)
          echo probe >> $d/calls; next_line $d/probes | tr '|' '\\n' ;;
        *"tpu-vm ssh"*) echo start >> $d/calls ;;
        *"storage ls"*) echo storage >> $d/calls; exit 1 ;;
        *) echo "unexpected: $*" >> $d/calls; exit 1 ;;
      esac
      """)


@pytest.fixture
def small_checkout(tmp_path):
  """launch/tpu_pod.sh in a checkout of one file, so that its tarball is small."""
  (tmp_path / "bin").mkdir()
  (tmp_path / "home").mkdir()
  repo = tmp_path / "repo"
  (repo / "launch").mkdir(parents=True)
  shutil.copy(TPU, repo / "launch" / "tpu_pod.sh")
  (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
  return str(repo / "launch" / "tpu_pod.sh")


def test_tpu_watch_restarts_after_preemption_and_when_a_host_run_is_gone(tmp_path,
                                                                          small_checkout):
  _fake_gcloud(
      tmp_path,
      states=["READY", "READY", "PREEMPTED", "PREEMPTED", "READY", "READY", "READY", "READY"],
      probes=["attn_contrastive:exit:0",  # an earlier run's status: this one starts
              "attn_contrastive:running|attn_contrastive:running",
              # (preempted, then READY: started again without asking the hosts)
              "attn_contrastive:running|attn_contrastive:stopped",  # a host restarted
              "attn_contrastive:running|attn_contrastive:running",
              "attn_contrastive:exit:0|attn_contrastive:exit:0"])
  out = _bash([small_checkout, "--watch=0", "my-v4-32", "us-central2-b",
               "configs/contrastive.py:imagenet", "gs://bucket/run"], _env(tmp_path))
  assert out.returncode == 0, out.stderr
  calls = (tmp_path / "calls").read_text().split()
  polls = [c for c in calls if c in ("describe", "probe", "scp", "start")]
  assert polls == ["describe", "probe", "scp", "start",
                   "describe", "probe",
                   "describe", "describe",
                   "describe", "scp", "start",
                   "describe", "probe", "scp", "start",
                   "describe", "probe",
                   "describe", "probe"]
  assert calls.count("storage") == 5  # results.json looked for at every probe
  assert "my-v4-32 is PREEMPTED: waiting until it is READY again" in out.stderr
  assert "READY again after a preemption: starting the run" in out.stderr
  assert "the run has finished" in out.stderr
  assert (tmp_path / "attn_contrastive.tgz").exists()


def test_tpu_watch_leaves_a_going_run_alone_and_stops_on_a_failure(tmp_path, small_checkout):
  _fake_gcloud(tmp_path, states=["READY"],
               probes=["attn_contrastive:running",
                       "attn_contrastive:exit:1|attn_contrastive:exit:75"])
  out = _bash([small_checkout, "--watch=0", "tpu", "zone", "configs/contrastive.py",
               "gs://bucket/run"], _env(tmp_path))
  assert out.returncode == 1
  assert "start" not in (tmp_path / "calls").read_text().split()
  assert "the run failed with exit status 1: not restarting" in out.stderr


# -- SLURM -------------------------------------------------------------------------------


def test_slurm_dry_run_prints_the_step_and_its_environment(tmp_path, no_tools):
  out = _bash([SLURM, "--dry-run", "configs/supervised.py:imagenet,r50", "/shared/runs/sup",
               *OVERRIDES], _env(tmp_path))
  assert out.returncode == 0, out.stderr
  assert not no_tools.exists()
  lines = out.stdout.splitlines()
  for directive in ("--ntasks-per-node=8", "--gpus-per-node=8", "--requeue",
                    "--signal=B:USR1@300"):
    assert f"#SBATCH {directive}" in lines
  assert not any("--gpus-per-task" in line for line in lines if line.startswith("#SBATCH"))
  assert "export PYTHONUNBUFFERED=1" in lines
  assert ("srun python -m attn_contrastive.main --config=configs/supervised.py:imagenet,r50 "
          "--workdir=/shared/runs/sup --jax_distributed "
          "--config.data.data_dir=gs://bucket/tensorflow_datasets "
          "'--config.study.rows=it'\\''s two words' &") in lines
  assert lines[-1] == 'scontrol requeue "$SLURM_JOB_ID"'


@pytest.fixture
def fake_slurm(tmp_path):
  """srun: the task (records its arguments, then sleeps; on USR1 or TERM it
  "saves" and exits 75; FAKE_EXIT: exits at once with it); scontrol: records its
  arguments, and ``show job`` answers JobState=$FAKE_JOB_STATE."""
  (tmp_path / "bin").mkdir()
  (tmp_path / "home").mkdir()
  _script(tmp_path / "bin" / "srun", f"""\
      printf '%s\\n' "$@" > {tmp_path}/srun_args
      [ -n "${{FAKE_EXIT:-}}" ] && exit "$FAKE_EXIT"
      saved() {{ kill $sleeper; echo "$1" > {tmp_path}/task_signal; exit 75; }}
      trap 'saved USR1' USR1
      trap 'saved TERM' TERM
      sleep 60 & sleeper=$!
      echo started > {tmp_path}/task_started
      wait $sleeper
      exit 3
      """)
  _script(tmp_path / "bin" / "scontrol", f"""\
      echo "$*" >> {tmp_path}/scontrol_calls
      [ "$1" = show ] && echo "JobId=$3 JobName=attn_contrastive JobState=${{FAKE_JOB_STATE:-RUNNING}}"
      exit 0
      """)
  return tmp_path


def _run_batch_and_signal(tmp_path, sig, **env) -> subprocess.CompletedProcess:
  proc = subprocess.Popen(["bash", SLURM, "configs/contrastive.py:imagenet", "/shared/run",
                           *OVERRIDES], env=_env(tmp_path, SLURM_JOB_ID="4242", **env),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 30
  while not (tmp_path / "task_started").exists():
    assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
    time.sleep(0.05)
  os.kill(proc.pid, sig)  # as SLURM signals the batch shell (--signal=B:USR1@300)
  try:
    stdout, stderr = proc.communicate(timeout=30)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise
  return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_slurm_passes_the_signal_on_and_requeues_on_75(fake_slurm, sig):
  out = _run_batch_and_signal(fake_slurm, sig)
  assert out.returncode == 75, out.stderr
  assert (fake_slurm / "task_signal").read_text().strip() == sig.name[3:]
  assert (fake_slurm / "scontrol_calls").read_text().splitlines() == [
      "show job 4242", "requeue 4242"]
  assert (fake_slurm / "srun_args").read_text().splitlines() == [
      "python", "-m", "attn_contrastive.main", "--config=configs/contrastive.py:imagenet",
      "--workdir=/shared/run", "--jax_distributed", *OVERRIDES]
  assert f"SIG{sig.name[3:]} received: passing it on to the job step" in out.stderr


def test_slurm_does_not_requeue_a_cancelled_job(fake_slurm):
  out = _run_batch_and_signal(fake_slurm, signal.SIGTERM, FAKE_JOB_STATE="CANCELLED")
  assert out.returncode == 75
  assert (fake_slurm / "scontrol_calls").read_text().splitlines() == ["show job 4242"]
  assert "was cancelled: not requeueing" in out.stderr


@pytest.mark.parametrize("status", ["0", "1"])
def test_slurm_a_run_that_ends_is_not_requeued(fake_slurm, status):
  out = _bash([SLURM, "configs/contrastive.py", "/shared/run"],
              _env(fake_slurm, SLURM_JOB_ID="4242", FAKE_EXIT=status))
  assert out.returncode == int(status)
  assert not (fake_slurm / "scontrol_calls").exists()


def test_slurm_requeues_a_run_that_exits_75_by_itself(fake_slurm):
  out = _bash([SLURM, "configs/contrastive.py", "/shared/run"],
              _env(fake_slurm, SLURM_JOB_ID="4242", FAKE_EXIT="75"))
  assert out.returncode == 75
  assert "requeue 4242" in (fake_slurm / "scontrol_calls").read_text().splitlines()
