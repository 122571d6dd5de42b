"""Configs load, and mistyped keys are refused helpfully."""
import os
import subprocess
import sys

import numpy as np
import pytest

from attn_contrastive import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("path,arg,task,depth", [
    ("configs/contrastive.py", None, "pretrain", 18),
    ("configs/contrastive.py", "imagenet", "pretrain", 50),
    ("configs/supervised.py", "imagenet,r50", "supervised", 50),
    ("configs/supervised.py", "r18", "supervised", 18),
])
def test_configs_load(path, arg, task, depth):
  c = config_lib.load_config_file(os.path.join(ROOT, path) + (f":{arg}" if arg else ""))
  assert c.task == task and c.model.depth == depth


def _rows(arg):
  names = ("contrastive", "contrastive_attn_teacher", "contrastive_attn_cotrain",
           "supervised", "supervised_attn_teacher")
  return {n: config_lib.load_config_file(os.path.join(ROOT, f"configs/{n}.py:{arg}"))
          for n in names}


@pytest.mark.parametrize("arg", ["synthetic", "imagenet"])
def test_table_rows_differ_only_by_attention(arg):
  """Each attention row is its baseline row plus attention, nothing else."""
  rows = _rows(arg)
  pairs = [("contrastive", "contrastive_attn_teacher"), ("contrastive", "contrastive_attn_cotrain"),
           ("supervised", "supervised_attn_teacher")]
  for base, guided in pairs:
    a, b = rows[base].to_dict(), rows[guided].to_dict()
    assert not a["attention"]["enabled"] and b["attention"]["enabled"]
    a.pop("attention"), b.pop("attention")
    assert a == b, (base, guided)
  assert rows["contrastive_attn_teacher"].attention.labels == "teacher"
  assert rows["contrastive_attn_cotrain"].attention.labels == "human"
  width = 256 if arg == "imagenet" else 16
  assert all(rows[n].attention.width == width for n in rows if "attn" in n)
  if arg == "imagenet":
    assert rows["contrastive_attn_cotrain"].attention.human_data == "salicon"
    assert rows["supervised_attn_teacher"].model.depth == 18  # r18 is the default


def test_imagenet_recipe_follows_simclr():
  """The ImageNet SimCLR config's schedule, read off the schedule itself:
  LARS 0.3 x 4096/256 = 4.8 reached after 10 warm-up epochs, cosine to 0
  over 300 epochs of ImageNet's 1,281,167 images."""
  from attn_contrastive.train import loop, optim
  c = config_lib.load_config_file(os.path.join(ROOT, "configs/contrastive.py:imagenet"))
  assert c.input.global_batch_size == 4096 and c.loss.temperature == 0.1
  assert c.optim.name == "lars" and c.optim.weight_decay == 1e-6 and c.data.image_size == 224
  assert c.aug.jitter_impl == "simclrv1" and c.model.proj_num_layers == 2
  assert c.aug.views_on == "device"  # the CPU configs keep "host", faster there
  assert config_lib.load_config_file(os.path.join(ROOT, "configs/contrastive.py")
                                     ).aug.views_on == "host"
  per_epoch, total = loop.total_steps(c, 1_281_167)
  assert (per_epoch, total) == (312, 93_600)
  lr = optim.make_schedule(c.optim, 4096, total, per_epoch)
  warm = 3120  # 10 epochs of 312 steps
  cosine = total - warm
  for step, want in [(0, 0.0), (warm // 2, 2.4), (warm, 4.8), (warm + cosine // 2, 2.4),
                     (warm + cosine // 4, 2.4 * (1 + np.cos(np.pi / 4))), (total, 0.0)]:
    assert float(lr(step)) == pytest.approx(want, abs=1e-4), step


def test_unknown_config_argument():
  with pytest.raises(ValueError, match="imagent"):
    config_lib.parse_arg("imagent", {"data": config_lib.DATA_CHOICES})


def test_unknown_key_message_names_nearest():
  c = config_lib.base_config()
  msg = config_lib.unknown_key_message("optim.base_lrr", c)
  assert "optim.base_lrr" in msg and "'optim.base_lr'" in msg
  assert config_lib.unknown_key_message("optim.base_lr", c) is None
  with pytest.raises(KeyError, match="model.widht"):
    config_lib.check_overrides(["--config.model.widht=3"], c)


def test_the_old_checkpoint_key_is_refused_with_its_new_name():
  from attn_contrastive import config_checks
  c = config_lib.load_config_file(os.path.join(ROOT, "configs/study.py"))
  msg = config_lib.unknown_key_message("retrieval.checkpoint", c)
  assert msg.startswith("config key 'retrieval.checkpoint' is now 'retrieval.run_dir'")
  assert config_lib.unknown_key_message("checkpoint", c.linear_eval).startswith(
      "config key 'checkpoint' is now 'run_dir'")
  # Set in code (an unlocked config takes any key): the value checks name it.
  c.alignment.checkpoint = "/runs/x"
  assert "alignment.checkpoint is now alignment.run_dir" in "; ".join(
      config_checks.problems(c))


def test_the_label_tasks_old_batch_keys_are_refused_with_their_new_names():
  """The label task's batch and threads are ``eval.*``, as in every other stage."""
  from attn_contrastive import config_checks
  label_config = config_lib.load_config_file(os.path.join(ROOT, "configs/label.py"))
  assert config_lib.unknown_key_message("label.batch_size", label_config).startswith(
      "config key 'label.batch_size' is now 'eval.batch_size'")
  study = config_lib.load_config_file(os.path.join(ROOT, "configs/study.py"))
  assert config_lib.unknown_key_message("label.label.num_threads", study).startswith(
      "config key 'label.label.num_threads' is now 'label.eval.num_threads'")
  study.label.label.batch_size = 64  # set in code
  assert "label.label.batch_size is now label.eval.batch_size" in "; ".join(
      config_checks.problems(study))
  for name in ("teacher", "label", *config_checks.EVALUATIONS):
    stage = study[name]
    assert {"batch_size", "num_threads"} <= set(stage.eval), name


def test_main_refuses_unknown_key():
  proc = subprocess.run(
      [sys.executable, "-m", "attn_contrastive.main", "--config=configs/contrastive.py",
       "--workdir=/tmp/unused", "--config.optim.base_lrr=1.0"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "unknown config key 'optim.base_lrr'" in proc.stderr
  assert "'optim.base_lr'" in proc.stderr
  assert "Traceback" not in proc.stderr


# Every config file with every argument it takes.
CONFIG_ARGS = {
    "contrastive": ("synthetic", "imagenet"), "contrastive_attn_teacher": ("synthetic", "imagenet"),
    "contrastive_attn_cotrain": ("synthetic", "imagenet"),
    "supervised": ("synthetic,r18", "imagenet,r50"),
    "supervised_attn_teacher": ("synthetic,r18", "imagenet,r50"),
    "teacher": ("synthetic", "salicon"), "label": ("synthetic", "imagenet"),
    "linear_eval": ("synthetic", "imagenet"), "robustness": ("synthetic", "imagenet"),
    "retrieval": ("synthetic", "imagenet"), "alignment": ("synthetic", "salicon"),
    "study": ("demo", "full"), "shift": ("imagenet",),
    "finetune": ("synthetic", "imagenet,1pct", "imagenet,10pct"),
}
LINKS = {"run_dir": "/runs/x", "teacher_checkpoint": "/runs/teacher"}


def _linked(c):
  """``c`` with the paths a stage reads from earlier stages filled in."""
  for key, value in LINKS.items():
    if key in c:
      c[key] = value
  if c.get("attention") is not None and c.attention.enabled:
    c.attention.maps_dir = "/runs/maps"
  return c


def test_every_config_passes_the_value_checks():
  from attn_contrastive import config_checks
  assert sorted(CONFIG_ARGS) == sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs"))
                                       if f.endswith(".py"))
  for name, args in CONFIG_ARGS.items():
    for arg in args:
      c = _linked(config_lib.load_config_file(os.path.join(ROOT, f"configs/{name}.py:{arg}")))
      assert config_checks.problems(c) == [], (name, arg)


@pytest.mark.parametrize("file,key,value,expected", [
    ("contrastive", "input.global_batch_size", -256, "input.global_batch_size=-256: must be"),
    ("contrastive", "loss.temperature", 0.0, "loss.temperature=0.0: must be positive"),
    ("contrastive_attn_teacher", "attention.alpha", -1.0, "attention.alpha=-1.0: must be 0"),
    ("contrastive_attn_teacher", "attention.beta", -0.1, "attention.beta=-0.1"),
    ("supervised", "optim.momentum", 1.0, "optim.momentum=1.0: must be in [0, 1)"),
    ("contrastive", "aug.p_blur", 1.5, "aug.p_blur=1.5: must be a probability"),
    ("linear_eval", "eval.batch_size", 0, "eval.batch_size=0"),
    ("study", "rows.contrastive.loss.temperature", -0.1, "rows.contrastive.loss.temperature"),
    ("study", "study.stages", ("teacher", "finetune"), "study.stages has ['finetune']"),
    ("study", "study.rows", ("contrastive", "byol"), "study.rows has ['byol']"),
    ("robustness", "robustness.severities", (0, 3), "severities has [0]"),
])
def test_bad_values_are_named_with_what_they_must_be(file, key, value, expected):
  from attn_contrastive import config_checks
  c = _linked(config_lib.load_config_file(os.path.join(ROOT, f"configs/{file}.py")))
  node = c
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  found = config_checks.problems(c)
  assert len(found) == 1 and expected in found[0], found


def test_allowed_depths_are_the_resnets_that_exist():
  from attn_contrastive import config_checks
  from attn_contrastive.models import resnet
  assert sorted(resnet.STAGE_SIZES) == sorted(config_checks.RESNET_DEPTHS)


def test_missing_links_name_the_stage_that_makes_them():
  from attn_contrastive import config_checks
  c = config_lib.load_config_file(os.path.join(ROOT, "configs/contrastive_attn_teacher.py"))
  assert "attention.maps_dir is empty" in config_checks.problems(c)[0]
  assert "configs/label.py" in config_checks.problems(c)[0]
  c = config_lib.load_config_file(os.path.join(ROOT, "configs/robustness.py"))
  assert "a linear_eval run" in config_checks.problems(c)[0]
  c = config_lib.load_config_file(os.path.join(ROOT, "configs/label.py"))
  assert "teacher_checkpoint is empty" in config_checks.problems(c)[0]


def test_main_refuses_bad_values_before_loading_jax(tmp_path):
  """The refusal lists every bad value and comes before JAX (or any dataset) is touched."""
  out = subprocess.run(
      [sys.executable, "-c",
       "import sys; from attn_contrastive import main; "
       "sys.argv = ['main', '--config=configs/contrastive.py', f'--workdir={sys.argv[1]}', "
       "'--config.loss.temperature=0', '--config.input.global_batch_size=-1']; "
       "import atexit; atexit.register(lambda: print('jax' in sys.modules, file=sys.stderr)); "
       "main.run()", str(tmp_path / "w")],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "2 config value(s) to fix" in out.stderr
  assert "loss.temperature=0.0: must be positive" in out.stderr
  assert "input.global_batch_size=-1" in out.stderr
  assert out.stderr.strip().endswith("False")  # JAX was never imported
  assert not (tmp_path / "w").exists()


def test_main_refuses_a_value_of_the_wrong_type(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "attn_contrastive.main", "--config=configs/contrastive.py",
       f"--workdir={tmp_path / 'w'}", "--config.input.global_batch_size=2.5"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "--config.input.global_batch_size=2.5: invalid literal for int()" in out.stderr
