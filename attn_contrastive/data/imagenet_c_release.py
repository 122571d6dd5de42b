r"""ImageNet-C as released (Hendrycks & Dietterich, ICLR 2019), as a tfds dataset.

The release holds the 50,000 ImageNet validation images, each resized to 256
and centre-cropped to 224, corrupted by 15 benchmark corruptions and 4 extra
ones at 5 severities, saved as JPEG (quality 85). One config per corruption
and severity (``imagenet_c/gaussian_noise_3``), one ``validation`` split,
labels equal to ``imagenet2012``'s (the same class index for the same WordNet
id), so a model trained on ``imagenet2012`` is scored on it unchanged.

Prepare a config from the extracted tar files with
``python -m attn_contrastive.data.prepare --dataset=imagenet_c/<corruption>_<severity>
--manual_dir=DIR``; the robustness stage builds and reads the configs it
scores (``configs/robustness.py:imagenet``). tfds's own
``imagenet2012_corrupted`` regenerates the images instead, which needs
ImageMagick and the network; datasets without a released copy are corrupted
on the fly by :mod:`attn_contrastive.data.image_corruptions`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, Sequence

import tensorflow_datasets as tfds
from etils import epath

from attn_contrastive.data import image_corruptions

MANUAL_INSTRUCTIONS = """\
Download the ImageNet-C tar files (https://zenodo.org/record/2235448: blur.tar,
digital.tar, extra.tar, noise.tar, weather.tar) and extract them into
`manual_dir`, which then holds

  manual_dir/<corruption>/<severity>/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG

(e.g. manual_dir/gaussian_noise/3/n01440764/ILSVRC2012_val_00000293.JPEG).
A category folder above the corruptions (manual_dir/noise/gaussian_noise/3/...)
is found too.
"""

_CITATION = """\
@inproceedings{hendrycks2019robustness,
  title={Benchmarking Neural Network Robustness to Common Corruptions and Perturbations},
  author={Dan Hendrycks and Thomas Dietterich},
  booktitle={International Conference on Learning Representations},
  year={2019}}
"""

_SUFFIXES = (".jpeg", ".jpg")


@dataclasses.dataclass(eq=False)
class ImagenetCConfig(tfds.core.BuilderConfig):
  """One corruption at one severity."""

  corruption: str = "gaussian_noise"
  severity: int = 1


def _configs() -> list[ImagenetCConfig]:
  return [ImagenetCConfig(name=f"{c}_{s}", corruption=c, severity=s,
                          description=f"{c} at severity {s}")
          for c in image_corruptions.ALL for s in range(1, 6)]


def imagenet_label_names() -> list[str]:
  """The WordNet ids of ``imagenet2012``'s classes, in its label order."""
  from tensorflow_datasets.datasets.imagenet2012 import imagenet_common
  return epath.Path(imagenet_common.label_names_file()).read_text().split()


def find_condition_dir(root: epath.Path, corruption: str, severity: int) -> epath.Path:
  """``root/<corruption>/<severity>``, or under a category folder; refuses a missing one."""
  candidates = [root / corruption / str(severity)]
  candidates += [root / cat / corruption / str(severity) for cat in image_corruptions.CATEGORIES]
  for path in candidates:
    if path.is_dir():
      return path
  raise FileNotFoundError(
      f"no folder for {corruption} severity {severity} in {root} (looked for "
      f"{candidates[0]} and <category>/{corruption}/{severity}).\n{MANUAL_INSTRUCTIONS}")


def missing_conditions(root: str, corruptions: Sequence[str],
                       severities: Sequence[int]) -> list[tuple[str, int]]:
  """The (corruption, severity) pairs of the grid that the extracted release at ``root``
  lacks: a look at the folders, so that a stage can refuse (or leave out) what is absent
  before it computes anything."""
  base = epath.Path(root)
  missing = []
  for corruption in corruptions:
    for severity in severities:
      try:
        find_condition_dir(base, corruption, severity)
      except FileNotFoundError:
        missing.append((corruption, int(severity)))
  return missing


class ImagenetC(tfds.core.GeneratorBasedBuilder):
  """The released ImageNet-C images with ``imagenet2012``'s labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS
  BUILDER_CONFIGS = _configs()

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file's path (tfds's default needs ``importlib_resources``)."""
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=imagenet_label_names()),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/hendrycks/robustness",
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    cfg = self.builder_config
    folder = find_condition_dir(epath.Path(dl_manager.manual_dir), cfg.corruption,
                                cfg.severity)
    return {"validation": self._generate_examples(folder)}

  def _generate_examples(self, folder: epath.Path) -> Iterator[tuple[str, dict]]:
    """Yields ``(file name, example)`` for every image, in (wnid, name) order."""
    index = {wnid: i for i, wnid in enumerate(imagenet_label_names())}
    count = 0
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
      if class_dir.name not in index:
        raise ValueError(f"{class_dir} is not named after an ImageNet class (a WordNet id "
                         "such as n01440764): is manual_dir the extracted ImageNet-C?")
      for path in sorted(class_dir.iterdir()):
        if path.suffix.lower() in _SUFFIXES:
          count += 1
          yield path.name, {"image": os.fspath(path), "label": index[class_dir.name],
                            "file_name": path.name}
    if not count:
      raise FileNotFoundError(f"no .JPEG images under {folder}/<wnid>/")
