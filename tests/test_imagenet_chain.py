"""The study on ImageNet, rehearsed: the documented commands, as written, on tiny copies of
the releases that the test writes itself.

The fixtures are in the release formats: ``ILSVRC2012_img_train.tar`` of per-class tars and
``ILSVRC2012_img_val.tar`` of flat files labelled by tfds's own validation labels (the
``imagenet2012`` builder reads both from manual_dir), the released ImageNet-C tree without
``extra.tar``'s corruptions, and the SALICON tree. They hold the release's quirks: a
greyscale JPEG, CMYK JPEGs (passed on by tfds, which converts only the release's own by
name), the release's PNG under a ``.JPEG`` name (converted by tfds), images from 90 to
500 px on either side.

The commands are read from docs/datasets.md (prepare) and docs/chain.md ("On ImageNet and
SALICON") and expanded by bash itself (variables, loops) with ``python`` standing for a
recorder, so the test follows the docs when they change. Each runs in this process through
``attn_contrastive.main``'s own parsing and ``main.execute``; only sizes are added (steps,
batches, widths, depths, image sides, shards, threads, the cached probe's grid and
iterations, one seed and one ImageNet-C severity), and ``--jax_distributed`` is dropped
(one process).
"""
import io
import json
import os
import re
import subprocess
import tarfile

import numpy as np
import pytest
import scipy.io
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: tfds's first validation labels (datasets/imagenet2012/validation_labels.txt): images
#: ILSVRC2012_val_00000001 … 8 belong to these classes, in this order.
VAL_WNIDS = ("n01751748", "n09193705", "n02105855", "n04263257", "n03125729", "n01735189",
             "n02346627", "n02776631")
#: Image sides (height, width) dealt to the fixtures' images in turn: four of the label
#: task's canvases (2:1 and 4:3, either way up), so four compiled teacher passes.
SIDES = ((90, 500), (500, 90), (120, 160), (375, 500), (300, 400), (96, 128), (240, 180),
         (160, 120))
#: Sizes added to each documented command (by config file): nothing else is changed.
TEACHER = {"data.image_size": 24, "data.image_width": 32, "model.depth": 10,
           "model.width": 4, "model.decoder_width": 8}
SMALL_EVAL = {"eval.batch_size": 8, "eval.num_threads": 1}
SMALL_TRAIN = {"train.num_steps": 2, "input.global_batch_size": 8, "input.num_workers": 0,
               "input.num_threads": 1, "input.prefetch": 1, **SMALL_EVAL}
ROW = {**SMALL_TRAIN, "data.image_size": 32, "model.depth": 10, "model.width": 4,
       "model.proj_hidden_dim": 16, "model.proj_out_dim": 8, "attention.width": 4,
       "attention.map_size": 8, "eval.knn_bank_size": 16}
SIZES = {
    "teacher.py": {**TEACHER, **SMALL_TRAIN},
    "label.py": {**{f"teacher.{k}": v for k, v in TEACHER.items()}, "label.num_shards": 2,
                 **SMALL_EVAL},
    "contrastive.py": ROW, "contrastive_attn_teacher.py": ROW,
    "contrastive_attn_cotrain.py": ROW,
    "linear_eval.py": {**SMALL_TRAIN, "linear_cached.l2_grid": (1e-4,),
                       "linear_cached.max_iters": 20},
    "robustness.py": {**SMALL_EVAL, "robustness.severities": (3,)},
    "retrieval.py": SMALL_EVAL,
    "alignment.py": SMALL_EVAL,
}


def _image(side, seed, mode="RGB"):
  """A flat colour with a brighter square (the object) off centre."""
  rng = np.random.default_rng(seed)
  h, w = side
  pixels = np.full((h, w, 3), rng.integers(0, 160, 3), np.uint8)
  pixels[h // 4:h // 2, w // 3:2 * w // 3] = rng.integers(160, 256, 3)
  return Image.fromarray(pixels).convert(mode)


def _encoded(image, fmt="JPEG"):
  out = io.BytesIO()
  image.save(out, fmt, quality=90)
  return out.getvalue()


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _write_imagenet(manual):
  """ILSVRC2012_img_train.tar (a tar per class, two images each) and
  ILSVRC2012_img_val.tar (one image per class, named as released)."""
  manual.mkdir(parents=True)
  with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as train:
    for c, wnid in enumerate(VAL_WNIDS):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as per_class:
        for k in range(2):
          image, fmt, name = _image(SIDES[(2 * c + k) % 8], 10 * c + k), "JPEG", f"{wnid}_{k}.JPEG"
          if (c, k) == (0, 1):
            image = image.convert("L")
          if (c, k) == (1, 0):
            image = image.convert("CMYK")
          if (c, k) == (2, 0):  # the release's PNG, which tfds converts by name
            fmt, name = "PNG", "n02105855_2933.JPEG"
          _add(per_class, name, _encoded(image, fmt))
      _add(train, f"{wnid}.tar", inner.getvalue())
  with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as val:
    for c in range(len(VAL_WNIDS)):
      image = _image(SIDES[(c + 3) % 8], 100 + c, "CMYK" if c == 4 else "RGB")
      _add(val, f"ILSVRC2012_val_{c + 1:08d}.JPEG", _encoded(image))


def _write_imagenet_c(root):
  """The released tree of the 15 benchmark corruptions (no extra.tar), 5 severities,
  224-px images of four classes."""
  from attn_contrastive.data import image_corruptions as ic
  data = [_encoded(_image((224, 224), 200 + c)) for c in range(4)]
  for corruption in ic.BENCHMARK:
    for severity in range(1, 6):
      for c in range(4):
        folder = root / corruption / str(severity) / VAL_WNIDS[c]
        folder.mkdir(parents=True)
        (folder / f"ILSVRC2012_val_{c + 1:08d}.JPEG").write_bytes(data[c])


def _write_salicon(root, h=48, w=64):
  """SALICON's tree: 8 train and 4 validation images with maps and fixations (1-based)."""
  rng = np.random.default_rng(0)
  for folder, count in (("train", 8), ("val", 4)):
    for kind in ("images", "maps", "fixations"):
      (root / kind / folder).mkdir(parents=True)
    for k in range(count):
      stem = f"COCO_{folder}2014_{k + 1:012d}"
      (root / "images" / folder / f"{stem}.jpg").write_bytes(_encoded(_image((h, w), k)))
      smap = np.zeros((h, w), np.uint8)
      smap[h // 4:h // 2, w // 3:2 * w // 3] = 255
      Image.fromarray(smap).save(root / "maps" / folder / f"{stem}.png")
      gaze = np.empty((2, 1), dtype=[("location", "O"), ("timestamp", "O"),
                                     ("fixations", "O")])
      for i in range(2):
        fixes = np.stack([rng.integers(w // 3, 2 * w // 3, 4),
                          rng.integers(h // 4, h // 2, 4)], 1).astype(np.float64) + 1
        gaze[i, 0] = (fixes, np.arange(4.0), fixes)
      scipy.io.savemat(str(root / "fixations" / folder / f"{stem}.mat"), {
          "image": stem, "resolution": np.array([[h, w]], np.float64), "gaze": gaze})


def _bash_block(doc, heading):
  """The first ```bash block after ``heading`` in docs/``doc``."""
  text = open(os.path.join(ROOT, "docs", doc)).read()
  return re.search(r"```bash\n(.*?)```", text[text.index(heading):], re.S).group(1)


def _expand(block, home, replacements):
  """Each ``python`` command of ``block`` as bash runs it (variables and loops
  expanded, ``~`` as ``home``): a list of argument lists."""
  for old, new in replacements.items():
    block = block.replace(old, new)
  recorder = "python() { printf '%s\\0' \"$@\"; printf '\\n\\0'; }\nmkdir() { :; }\n"
  out = subprocess.run(["bash", "-c", recorder + block], capture_output=True, check=True,
                       env={"HOME": str(home), "PATH": os.environ["PATH"]}).stdout
  commands, current = [], []
  for arg in out.decode().split("\0")[:-1]:
    if arg == "\n":
      commands.append(current)
      current = []
    else:
      current.append(arg)
  return commands


def _prepare(argv, home):
  from attn_contrastive.data import prepare
  args = {k: v.replace("~", str(home)) for k, v in
          (a[2:].split("=", 1) for a in argv[2:])}  # as prepare's expanduser would
  prepare.prepare(args["dataset"], args.get("data_dir", str(home / "tensorflow_datasets")),
                  manual_dir=args.get("manual_dir"))


def _main(argv):
  """``python -m attn_contrastive.main ARGS`` in this process, ``--jax_distributed``
  dropped, the config file's sizes added."""
  from absl import flags
  from ml_collections import config_flags
  from attn_contrastive import main
  config_arg = next(a for a in argv if a.startswith("--config="))
  sizes = SIZES[os.path.basename(config_arg.split("=", 1)[1].split(":")[0])]
  argv = ["main"] + [a for a in argv[2:] if a != "--jax_distributed"] + [
      f"--config.{k}={v}" for k, v in sizes.items()]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  fv(argv)
  main.execute(fv.config, fv.workdir, config_flags.get_config_filename(fv["config"]))


def _stages(home):
  """The prepare commands, then the chain's ``attn_contrastive.main`` commands, then the
  report's, as the docs give them (every row and seed)."""
  prepares = (_expand(_bash_block("datasets.md", "## ImageNet"), home, {})
              + _expand(_bash_block("datasets.md", "## SALICON"), home,
                        {"MANUAL_DIR": str(home / "salicon_release")}))
  prepares = [a for a in prepares if a[:2] == ["-m", "attn_contrastive.data.prepare"]]
  *chain, report = _expand(_bash_block("chain.md", "## On ImageNet and SALICON"), home,
                           {"gs://BUCKET": str(home),
                            "IMAGENET_C_DIR": str(home / "imagenet_c")})
  return prepares, chain, report


def test_the_study_on_imagenet_from_release_files_to_the_report(tmp_path, monkeypatch):
  """Every stage of the documented list, prepare to report, for the first seed of the
  attn. teacher row (the row that reads every earlier stage's output); with
  ``ATTN_CONTRASTIVE_EVERY_ROW=1`` the first seed of every row."""
  from attn_contrastive.data import image_corruptions as ic
  from attn_contrastive.data import sources
  from attn_contrastive.report import write_report
  monkeypatch.chdir(ROOT)  # the documented commands name configs/ from the checkout
  home = tmp_path
  _write_imagenet(home / "tensorflow_datasets" / "downloads" / "manual")
  _write_imagenet_c(home / "imagenet_c")
  _write_salicon(home / "salicon_release")
  prepares, chain, report = _stages(home)
  assert [a[2] for a in prepares] == ["--dataset=imagenet2012", "--dataset=salicon"]
  workdirs = [os.path.relpath(a[3].split("=", 1)[1], home).split(os.sep) for a in chain]
  rows = {w[0] for w in workdirs if len(w) == 3}
  assert len(chain) == 2 + 3 * 3 * 5 and len(rows) == 3, workdirs
  assert report[:2] == ["-m", "attn_contrastive.report"]
  chosen = rows if os.environ.get("ATTN_CONTRASTIVE_EVERY_ROW") else {
      "contrastive_attn_teacher"}
  stages = [a for a, w in zip(chain, workdirs)
            if len(w) == 1 or (w[0] in chosen and w[1] == "seed0")]

  for argv in prepares:
    _prepare(argv, home)
  train = sources.open_split("imagenet2012", "train", str(home / "tensorflow_datasets"))
  assert len(train) == 2 * len(VAL_WNIDS)
  decoded = [train[i] for i in range(len(train))]  # grey, CMYK, PNG: all decoded
  assert train.log.count == 0 and all(ex["image"].shape[2] == 3 for ex in decoded)
  assert {ex["image"].shape[:2] for ex in decoded} >= {(90, 500), (500, 90)}
  for argv in stages:
    assert argv[:2] == ["-m", "attn_contrastive.main"], argv
    _main(argv)
  args = dict(a[2:].split("=", 1) for a in report[2:])
  written = write_report(args["runs"].split(","), str(home / args["out"]))

  assert len(written["rows"]) == len(chosen), written["rows"]
  run = home / "contrastive_attn_teacher" / "seed0"
  robust = json.loads((run / "robustness" / "results.json").read_text())
  assert robust["robustness/missing"] == list(ic.EXTRA)
  assert set(robust["robustness/top1"]) == set(ic.BENCHMARK)
  assert robust["robustness/num_images"] == len(VAL_WNIDS)
  for stage in ("linear_eval", "retrieval", "alignment"):
    assert (run / stage / "results.json").exists(), stage
  assert written["missing"] == {}, written["missing"]  # every stage of each row ran
