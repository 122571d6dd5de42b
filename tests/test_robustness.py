"""ImageNet-C's summary numbers, the corrupted split and the released-ImageNet-C reader."""
import os
import pickle

import numpy as np
import pytest

from attn_contrastive.data import image_corruptions
from attn_contrastive.data.corrupted_split import CorruptedSplit, corruption_rng
from attn_contrastive.evaluators import corruption_errors
from fakes import random_images

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def test_summary_numbers_equal_a_hand_computed_example():
  top1 = {"gaussian_noise": [0.9, 0.8, 0.7, 0.6, 0.5],   # mean 0.7, error 0.3
          "shot_noise": [0.5] * 5,                       # error 0.5
          "fog": [0.8, 0.8, 0.6, 0.6, 0.2],              # mean 0.6, error 0.4
          "saturate": [0.9, 0.7, 0.7, 0.7, 0.5]}         # extra, mean 0.7
  out = corruption_errors.summarize(top1, clean_top1=0.9)
  assert out["noise"] == pytest.approx(0.6)              # (0.7 + 0.5) / 2
  assert out["weather"] == pytest.approx(0.6)
  assert np.isnan(out["blur"]) and np.isnan(out["digital"])
  assert out["extra"] == pytest.approx(0.7)
  assert out["mean"] == pytest.approx((0.7 + 0.5 + 0.6) / 3)   # the 15 only, not saturate
  assert out["by_severity"] == pytest.approx([2.2 / 3, 2.1 / 3, 1.8 / 3, 1.7 / 3, 1.2 / 3])
  ce = {"gaussian_noise": 0.3 / 0.886428, "shot_noise": 0.5 / 0.894468, "fog": 0.4 / 0.819324}
  assert out["ce"] == pytest.approx(ce)
  assert out["mce"] == pytest.approx(np.mean(list(ce.values())))
  rel = {"gaussian_noise": 0.2 / (0.886428 - 0.4345), "shot_noise": 0.4 / (0.894468 - 0.4345),
         "fog": 0.3 / (0.819324 - 0.4345)}
  assert out["relative_ce"] == pytest.approx(rel)
  assert out["relative_mce"] == pytest.approx(np.mean(list(rel.values())))
  assert out["num_benchmark"] == 3


def test_alexnet_itself_has_mce_one():
  top1 = {c: [1 - e] * 5 for c, e in corruption_errors.ALEXNET_ERRORS.items()}
  out = corruption_errors.summarize(top1, clean_top1=1 - corruption_errors.ALEXNET_CLEAN_ERROR)
  assert out["mce"] == pytest.approx(1.0) and out["relative_mce"] == pytest.approx(1.0)
  assert list(corruption_errors.ALEXNET_ERRORS) == list(image_corruptions.BENCHMARK)
  assert sum(len(v) for k, v in image_corruptions.CATEGORIES.items() if k != "extra") == 15


def _view(ex):
  return {"image": ex["image"][2:18, 4:20], "label": ex["label"]}


def test_corrupted_split_is_the_view_corrupted_with_per_image_draws():
  src = random_images(6, (20, 24), classes=3)
  split = CorruptedSplit(src, _view, "gaussian_noise", 4, seed=7, clean_cache={})
  later = [split[i]["image"] for i in (5, 3, 1)]          # any order, same images
  for i, image in zip((5, 3, 1), later):
    expected = image_corruptions.corrupt(_view(src[i])["image"], "gaussian_noise", 4,
                                   corruption_rng(7, "gaussian_noise", 4, i))
    np.testing.assert_array_equal(image, expected)
    assert split[i]["label"] == i % 3 and image.shape == (16, 16, 3)
  other_seed = CorruptedSplit(src, _view, "gaussian_noise", 4, seed=8)
  assert not np.array_equal(other_seed[5]["image"], later[0])
  assert not np.array_equal(split[0]["image"], split[1]["image"][::-1])
  with pytest.raises(ValueError, match="unknown corruption"):
    CorruptedSplit(src, _view, "rain", 1)
  with pytest.raises(ValueError, match="1 to 5"):
    CorruptedSplit(src, _view, "fog", 6)


def _write_release(root, layout_category: bool):
  """A tiny ImageNet-C tree: 2 classes × 2 images of gaussian_noise severity 3."""
  import cv2
  rng = np.random.default_rng(1)
  wnids = ("n01440764", "n15075141")  # imagenet2012's first and last classes
  written = {}
  for w in wnids:
    base = root / ("noise" if layout_category else "") / "gaussian_noise" / "3" / w
    base.mkdir(parents=True)
    for k in range(2):
      name = f"ILSVRC2012_val_{k + (10 if w == wnids[1] else 0):08d}.JPEG"
      image = np.full((40, 40, 3), rng.integers(0, 256, 3), np.uint8)
      cv2.imwrite(str(base / name), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
      written[name] = (w, image)
  return written


@pytest.mark.parametrize("layout_category", [False, True])
def test_released_imagenet_c_reads_with_imagenet2012_labels(tmp_path, layout_category):
  from attn_contrastive.data import imagenet_c_release, prepare, sources
  written = _write_release(tmp_path / "manual", layout_category)
  data_dir = str(tmp_path / "data")
  prepare.prepare("imagenet_c/gaussian_noise_3", data_dir, manual_dir=str(tmp_path / "manual"))
  split = sources.open_split("imagenet_c/gaussian_noise_3", "validation", data_dir)
  names = imagenet_c_release.imagenet_label_names()
  assert len(names) == 1000 and names[0] == "n01440764" and names[-1] == "n15075141"
  assert len(split) == 4
  for i in range(4):
    ex = split[i]
    wnid, image = written[ex["file_name"].decode() if isinstance(ex["file_name"], bytes)
                          else ex["file_name"]]
    assert ex["label"] == names.index(wnid)
    assert np.abs(ex["image"].astype(int) - image).max() <= 3


def test_released_imagenet_c_refuses_a_missing_condition(tmp_path):
  from attn_contrastive.data import prepare
  _write_release(tmp_path / "manual", False)
  with pytest.raises(FileNotFoundError, match="fog severity 2"):
    prepare.prepare("imagenet_c/fog_2", str(tmp_path / "data"),
                    manual_dir=str(tmp_path / "manual"))


def _write_conditions(root, conditions):
  """Empty condition folders of a released tree (what corruptions_to_score looks at)."""
  for name, severity in conditions:
    (root / name / str(severity) / "n01440764").mkdir(parents=True)


def _released_config(manual_dir, corruptions, severities=(1, 2)):
  from attn_contrastive import config as config_lib
  c = config_lib.load_config_file(os.path.join(CONFIGS, "robustness.py") + ":imagenet")
  c.robustness.update(dict(source="released", manual_dir=str(manual_dir),
                           corruptions=tuple(corruptions), severities=severities))
  return c


def test_a_release_without_extra_tar_scores_the_15_and_names_the_4(tmp_path):
  from attn_contrastive.data import image_corruptions as ic
  from attn_contrastive.tasks import robustness
  _write_conditions(tmp_path, [(c, s) for c in ic.BENCHMARK for s in (1, 2)])
  scored, missing = robustness.corruptions_to_score(_released_config(tmp_path, ic.ALL))
  assert scored == ic.BENCHMARK and missing == list(ic.EXTRA)
  # One severity of an extra corruption absent: the whole corruption is left out.
  _write_conditions(tmp_path, [("spatter", 1)])
  scored, missing = robustness.corruptions_to_score(_released_config(tmp_path, ic.ALL))
  assert scored == ic.BENCHMARK and missing == list(ic.EXTRA)
  # Generated corruptions lack nothing.
  c = _released_config(tmp_path, ic.ALL)
  c.robustness.source = "generate"
  assert robustness.corruptions_to_score(c) == (ic.ALL, [])


def test_a_release_without_a_benchmark_condition_is_refused_naming_the_tar(tmp_path):
  from attn_contrastive.data import image_corruptions as ic
  from attn_contrastive.tasks import robustness
  present = [(c, s) for c in ic.BENCHMARK for s in (1, 2)]
  present.remove(("fog", 2))
  present.remove(("pixelate", 1))
  _write_conditions(tmp_path, present)
  with pytest.raises(FileNotFoundError,
                     match=r"lacks 2 benchmark .*fog severity 2, pixelate severity 1\. "
                           r"Extract digital\.tar, weather\.tar"):
    robustness.corruptions_to_score(_released_config(tmp_path, ic.ALL))


# CIFAR-10-C's release: <corruption>.npy of 5 severities × N images (severity 1 first)
# and labels.npy, the N test labels 5 times.
CIFAR_C_LABELS = np.array([3, 1, 4, 1], np.uint8)


def _write_cifar_c(root, corruptions=("fog", "contrast", "saturate")):
  """Image ``i`` of severity ``s`` of corruption ``k`` is filled with 60k + 10s + i (mod 256)."""
  root.mkdir(parents=True, exist_ok=True)
  n = len(CIFAR_C_LABELS)
  np.save(root / "labels.npy", np.tile(CIFAR_C_LABELS, 5))
  for k, name in enumerate(corruptions):
    values = [(60 * k + 10 * s + i) % 256 for s in range(1, 6) for i in range(n)]
    np.save(root / f"{name}.npy",
            np.stack([np.full((32, 32, 3), v, np.uint8) for v in values]))


def test_released_cifar10_c_reads_each_severity_with_its_labels(tmp_path):
  from attn_contrastive.data import cifar10_c_release
  _write_cifar_c(tmp_path)
  for k, name in enumerate(("fog", "contrast", "saturate")):
    for severity in range(1, 6):
      source = cifar10_c_release.CifarCSource(str(tmp_path), name, severity)
      assert len(source) == 4
      for i in range(4):
        ex = source[i]
        assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
        assert (ex["image"] == 60 * k + 10 * severity + i).all(), (name, severity, i)
        assert ex["label"] == CIFAR_C_LABELS[i]
  assert cifar10_c_release.missing_corruptions(str(tmp_path), ("fog", "snow", "saturate")) \
      == ["snow"]
  # A loader process's copy maps the files again instead of carrying the images.
  payload = pickle.dumps(source)
  assert len(payload) < 1000 and (pickle.loads(payload)[2]["image"] == 60 * 2 + 50 + 2).all()


def test_released_cifar10_c_refuses_a_missing_or_misshapen_file(tmp_path):
  from attn_contrastive.data import cifar10_c_release
  _write_cifar_c(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"(?s)snow\.npy is missing.*CIFAR-10-C\.tar"):
    cifar10_c_release.CifarCSource(str(tmp_path), "snow", 1)
  np.save(tmp_path / "fog.npy", np.zeros((19, 32, 32, 3), np.uint8))     # a row short
  with pytest.raises(ValueError, match=r"fog\.npy is uint8 of shape \(19, 32, 32, 3\).*"
                                       r"\(20, 32, 32, 3\)"):
    cifar10_c_release.CifarCSource(str(tmp_path), "fog", 2)
  np.save(tmp_path / "contrast.npy", np.zeros((20, 32, 32, 3), np.float32))
  with pytest.raises(ValueError, match=r"contrast\.npy is float32"):
    cifar10_c_release.CifarCSource(str(tmp_path), "contrast", 2)
  np.save(tmp_path / "frost.npy", np.zeros((20, 32, 32, 3), np.uint8))
  whole = (tmp_path / "frost.npy").read_bytes()
  (tmp_path / "frost.npy").write_bytes(whole[:len(whole) // 2])  # a download cut short
  with pytest.raises(ValueError, match=r"(?s)frost\.npy cannot be read.*truncated or damaged"
                                       r".*CIFAR-10-C\.tar"):
    cifar10_c_release.CifarCSource(str(tmp_path), "frost", 1)
  np.save(tmp_path / "labels.npy", np.zeros(21, np.uint8))
  with pytest.raises(ValueError, match=r"labels\.npy has shape \(21,\)"):
    cifar10_c_release.CifarCSource(str(tmp_path), "saturate", 1)
  (tmp_path / "labels.npy").unlink()
  with pytest.raises(FileNotFoundError, match=r"labels\.npy is missing"):
    cifar10_c_release.CifarCSource(str(tmp_path), "saturate", 1)


def _cifar_config(manual_dir, corruptions):
  from attn_contrastive import config as config_lib
  c = config_lib.load_config_file(os.path.join(CONFIGS, "robustness.py") + ":cifar10")
  c.robustness.update(dict(manual_dir=str(manual_dir), corruptions=tuple(corruptions)))
  return c


def test_robustness_on_released_cifar10_c_reads_the_arrays_upsampled(tmp_path):
  from attn_contrastive.data import image_corruptions as ic
  from attn_contrastive.data import pipeline
  from attn_contrastive.tasks import robustness
  _write_cifar_c(tmp_path, ic.BENCHMARK)
  c = _cifar_config(tmp_path, ic.ALL)
  assert robustness.corruptions_to_score(c) == (ic.BENCHMARK, list(ic.EXTRA))
  source, transform = robustness._condition_source(
      c, "fog", 4, None, pipeline.EvalView(64, 1.0), {})
  ex = transform(source[2])
  assert ex["image"].shape == (64, 64, 3) and (ex["image"] == (60 * 9 + 40 + 2) % 256).all()
  assert ex["label"] == 4
  (tmp_path / "snow.npy").unlink()
  with pytest.raises(FileNotFoundError, match=r"lacks snow\.npy"):
    robustness.corruptions_to_score(c)


def test_generated_cifar10_c_uses_cifar_constants():
  src = random_images(3, (32, 32), classes=3)
  view = lambda ex: {"image": ex["image"], "label": ex["label"]}
  split = CorruptedSplit(src, view, "contrast", 5, seed=1, constants="cifar")
  x = src[2]["image"] / 255.0
  means = x.mean(axis=(0, 1), keepdims=True)
  np.testing.assert_array_equal(split[2]["image"],
                                (np.clip((x - means) * 0.15 + means, 0, 1) * 255)
                                .astype(np.uint8))
  with pytest.raises(ValueError, match="unknown constants"):
    CorruptedSplit(src, view, "contrast", 5, constants="tiny")


def test_generated_cifar10_c_corrupts_the_whole_32_px_image_then_resizes():
  from attn_contrastive.data import pipeline
  from attn_contrastive.tasks import robustness
  c = _cifar_config("", ("contrast",))
  c.robustness.source = "generate"
  src = random_images(3, (32, 32), classes=3)
  source, transform = robustness._condition_source(
      c, "contrast", 5, src, pipeline.EvalView(64, 0.875), {})
  x = src[1]["image"] / 255.0
  means = x.mean(axis=(0, 1), keepdims=True)
  np.testing.assert_array_equal(source[1]["image"],
                                (np.clip((x - means) * 0.15 + means, 0, 1) * 255)
                                .astype(np.uint8))
  assert transform(source[1])["image"].shape == (64, 64, 3)
