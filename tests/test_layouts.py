"""Every batch of every config against the pod slices and GPU clusters the
launchers target, and a run whose devices cannot split its batch is refused
before its first step."""
import os
import re
import subprocess
import sys

import pytest

from attn_contrastive import config as config_lib
from attn_contrastive import config_checks
from test_config import CONFIG_ARGS, ROOT

#: name: (devices, processes), as ``jax.device_count()`` and ``jax.process_count()`` see them.
LAYOUTS = {
    "TPU v3-32": (32, 4),
    "TPU v4-32": (16, 4),
    "TPU v5e-256": (256, 64),
    "1 x 8 GPUs": (8, 8),  # launch/slurm.sbatch: one process per GPU
    "2 x 8 GPUs": (16, 16),
}
#: The configs' arguments for full-size data (ImageNet, and SALICON for the
#: teacher and the alignment of ImageNet runs); the others are the synthetic demo's.
FULL_SIZE = ("imagenet", "imagenet,r50", "salicon")
#: Full-size configs that a layout cannot run, with the keys it refuses: the
#: teacher's recipe batch of 64 is smaller than a v5e-256 (configs/teacher.py
#: trains it on one GPU or a v3-8 / v4-8).
EXPECTED = {("teacher", "salicon", "TPU v5e-256"): ["input.global_batch_size",
                                                     "eval.batch_size"]}
#: Where the synthetic configs run: one process with up to four devices (a laptop).
LOCAL = ((1, 1), (2, 1), (4, 1))

CASES = [(name, arg) for name, args in CONFIG_ARGS.items() for arg in args]


def _load(name: str, arg: str):
  return config_lib.load_config_file(os.path.join(ROOT, f"configs/{name}.py:{arg}"))


def _set(config, key: str, value) -> None:
  *parents, leaf = key.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


def test_every_config_is_checked():
  assert sorted(CONFIG_ARGS) == sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs"))
                                       if f.endswith(".py"))


@pytest.mark.parametrize("name,arg", CASES)
def test_every_config_on_every_layout(name, arg):
  """Full-size configs split on every layout (bar the teacher on a v5e-256);
  synthetic ones locally, and where they cannot, the message is usable."""
  config = _load(name, arg)
  for layout, (devices, processes) in LAYOUTS.items():
    found = config_checks.layout_problems(config, devices, processes)
    keys = [line.split("=", 1)[0] for line in found]
    if arg in FULL_SIZE:
      assert keys == EXPECTED.get((name, arg, layout), []), (layout, found)
    for line in found:
      key, value = line.split("=", 1)[0], int(line.split("=", 1)[1].split(":", 1)[0])
      assert key in config_checks.batch_keys(config)
      assert f"{devices} devices in {processes} processes" in line
      nearest = [int(x) for x in re.findall(r"\d+", line.rsplit(":", 1)[1])]
      assert nearest and all(m % devices == 0 and m % processes == 0 for m in nearest)
      assert all(abs(m - value) < max(devices, processes) for m in nearest), line
  if arg not in FULL_SIZE:
    for devices, processes in LOCAL:
      assert config_checks.layout_problems(config, devices, processes) == [], (devices,)


def test_which_batches_each_task_uses():
  keys = lambda name, arg: config_checks.batch_keys(_load(name, arg))  # noqa: E731
  train_and_eval = ["input.global_batch_size", "eval.batch_size"]
  assert keys("contrastive", "imagenet") == train_and_eval  # the kNN monitor
  assert keys("supervised", "imagenet,r50") == train_and_eval
  assert keys("teacher", "salicon") == train_and_eval
  assert keys("linear_eval", "imagenet") == train_and_eval
  assert keys("label", "imagenet") == []  # padded to each process's devices
  for name in ("robustness", "retrieval"):
    assert keys(name, "imagenet") == ["eval.batch_size"]
  assert keys("alignment", "salicon") == ["eval.batch_size"]
  cached_only = _load("linear_eval", "imagenet")
  cached_only.protocols = ("linear_cached",)
  assert config_checks.batch_keys(cached_only) == ["eval.batch_size"]
  unlabelled = _load("contrastive", "imagenet")
  unlabelled.data.num_classes = 0  # no kNN monitor
  assert config_checks.batch_keys(unlabelled) == ["input.global_batch_size"]


def test_a_study_checks_the_stages_it_runs():
  study = _load("study", "full")
  keys = config_checks.batch_keys(study)
  assert "teacher.input.global_batch_size" in keys
  assert "rows.supervised_r18_attn_teacher.eval.batch_size" in keys
  assert "robustness.eval.batch_size" in keys and "linear_eval.eval.batch_size" in keys
  assert not any(k.startswith("label.") for k in keys)
  study.study.stages = ("train", "report")
  study.study.rows = ("contrastive",)
  assert config_checks.batch_keys(study) == ["rows.contrastive.input.global_batch_size",
                                             "rows.contrastive.eval.batch_size"]


@pytest.mark.parametrize("name,arg,key,value,layout,expected", [
    ("supervised", "imagenet,r50", "eval.batch_size", 1000, "TPU v3-32",
     "eval.batch_size=1000: 32 devices in 4 processes cannot split it into equal shares; "
     "set --config.eval.batch_size to a multiple of 32: 992 or 1024"),
    ("contrastive", "imagenet", "input.global_batch_size", 4000, "TPU v5e-256",
     "input.global_batch_size=4000: 256 devices in 64 processes cannot split it into equal "
     "shares; set --config.input.global_batch_size to a multiple of 256: 3840 or 4096"),
    ("retrieval", "imagenet", "eval.batch_size", 8, "2 x 8 GPUs",
     "eval.batch_size=8: 16 devices in 16 processes cannot split it into equal shares; "
     "set --config.eval.batch_size to a multiple of 16: 16"),
    ("study", "demo", "rows.contrastive_attn_cotrain.input.global_batch_size", 250,
     "1 x 8 GPUs", "rows.contrastive_attn_cotrain.input.global_batch_size=250: 8 devices in "
     "8 processes"),
])
def test_a_bad_batch_is_named_with_the_layout_and_nearest_values(name, arg, key, value, layout,
                                                                  expected):
  config = _load(name, arg)
  before = config_checks.layout_problems(config, *LAYOUTS[layout])
  _set(config, key, value)
  found = config_checks.layout_problems(config, *LAYOUTS[layout])
  new = [line for line in found if line not in before]
  assert len(new) == 1 and new[0].startswith(expected), found


def test_processes_count_as_well_as_devices():
  """Six devices in four processes: a batch must split over both (12, 24, …)."""
  config = _load("supervised", "imagenet,r50")
  config.input.global_batch_size = 18
  found = config_checks.layout_problems(config, 6, 4)
  assert found[0].startswith("input.global_batch_size=18: 6 devices in 4 processes")
  assert found[0].endswith("a multiple of 12: 12 or 24")
  assert config_checks.layout_problems(config, 6, 1)[0].startswith("eval.batch_size=1024")
  with pytest.raises(ValueError, match="a layout needs devices"):
    config_checks.layout_problems(config, 0, 1)


def test_main_refuses_a_layout_that_cannot_split_the_batches():
  from attn_contrastive import main
  config = _load("linear_eval", "imagenet")
  config.eval.batch_size = 1000
  with pytest.raises(SystemExit) as refused:
    main.check_layout(config, *LAYOUTS["TPU v4-32"])
  message = str(refused.value.code)
  assert message.startswith("error: 1 batch size(s) that this layout cannot split")
  assert "eval.batch_size=1000: 16 devices in 4 processes" in message
  config.eval.batch_size = 1024
  main.check_layout(config, *LAYOUTS["TPU v4-32"])  # passes: no exit


def test_main_fails_fast_on_three_devices(tmp_path):
  """A batch of 8 on 3 (virtual CPU) devices: refused before any data is read."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=3")
  data_dir = tmp_path / "tfds"
  proc = subprocess.run(
      [sys.executable, "-m", "attn_contrastive.main", "--config=configs/contrastive.py",
       f"--workdir={tmp_path / 'w'}", "--config.input.global_batch_size=8",
       "--config.eval.batch_size=8", f"--config.data.data_dir={data_dir}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr
  assert "2 batch size(s) that this layout cannot split" in proc.stderr
  assert ("input.global_batch_size=8: 3 devices in 1 process cannot split it into equal "
          "shares; set --config.input.global_batch_size to a multiple of 3: 6 or 9") in proc.stderr
  assert "eval.batch_size=8: 3 devices in 1 process" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not data_dir.exists()  # no dataset was opened or built
