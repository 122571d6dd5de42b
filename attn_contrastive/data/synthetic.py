"""Synthetic "salient objects": a laptop-sized stand-in for SALICON and ImageNet.

Every image holds one saturated, high-contrast foreground object whose SHAPE
is the class, on a cluttered background of low-contrast blobs and strokes.
Simulated observers fixate mostly on the object, partly near the image centre
and a little at random; their fixations, blurred by a Gaussian, give a
SALICON-like grey density map. The same generator therefore serves as

* a human-attention dataset (images, fixations, density maps) to train the
  saliency teacher, like SALICON;
* a labelled classification dataset to pre-train and evaluate the students,
  like ImageNet, with ground-truth attention for alignment metrics;
* a shortcut-robustness probe, where a background tint predicts the class in
  training but not in validation.

Generation is pure numpy and deterministic: example ``i`` of split ``s`` is
drawn from ``np.random.default_rng([seed, split_id, 0, i])`` alone, so it does
not depend on generation order or parallelism, and `render_example` reproduces
any stored record without tfds.
"""
from __future__ import annotations

import colorsys
import concurrent.futures
import dataclasses
import functools
import inspect
import itertools
import multiprocessing
import os
from typing import Any, Iterator

import cv2
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

CLASS_NAMES: tuple[str, ...] = (
    "disk", "square", "triangle", "plus", "ring", "star", "diamond",
    "horizontal_bar", "vertical_bar", "l_shape", "x_cross", "t_shape",
)
"""Shape names in class-id order; a config uses the first ``num_classes``."""

SPLIT_IDS: dict[str, int] = {"train": 0, "validation": 1}
"""Split name -> the split's component of the per-example seed."""

# Streams of the per-example seed sequence [seed, split_id, stream, index].
_IMAGE_STREAM = 0
_LABEL_STREAM = 1


@dataclasses.dataclass(eq=False, kw_only=True)
class SalientObjectsConfig(tfds.core.BuilderConfig):
  """Parameters of the synthetic generator (see `SalientObjects`).

  Sizes and lengths given as fractions are fractions of ``image_size``;
  pairs ``(lo, hi)`` are uniform ranges (integer ranges include ``hi``).
  """

  image_size: int = 64
  num_classes: int = 10
  seed: int = 0
  num_train: int = 10_000
  num_validation: int = 2_000
  # Object geometry: diameter range, rotation jitter (degrees), axis stretch.
  object_size: tuple[float, float] = (0.3, 0.6)
  max_rotation: float = 10.0
  max_stretch: float = 0.15
  # Background clutter.
  num_distractors: tuple[int, int] = (12, 24)
  distractor_contrast: float = 0.08
  texture_contrast: float = 0.05
  # Simulated observers.
  num_observers: int = 8
  fixations_per_observer: tuple[int, int] = (6, 10)
  frac_object: float = 0.75
  frac_center: float = 0.15
  frac_random: float = 0.10
  object_fixation_jitter: float = 0.02
  center_bias_sigma: float = 0.2
  saliency_sigma: float = 1.0 / 18.0
  # Background tint equals the label with this probability in train only.
  spurious_strength: float = 0.0

  def __post_init__(self):
    if not 2 <= self.num_classes <= len(CLASS_NAMES):
      raise ValueError(f"num_classes must be in [2, {len(CLASS_NAMES)}], "
                       f"got {self.num_classes}")
    if self.image_size < 16:
      raise ValueError(f"image_size must be >= 16, got {self.image_size}")
    fractions = (self.frac_object, self.frac_center, self.frac_random)
    if min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
      raise ValueError(f"fixation fractions must be >= 0 and sum to 1, "
                       f"got {fractions}")
    if not 0.0 <= self.spurious_strength <= 1.0:
      raise ValueError(f"spurious_strength must be in [0, 1], "
                       f"got {self.spurious_strength}")

  @property
  def class_names(self) -> tuple[str, ...]:
    """Names of the classes this config uses."""
    return CLASS_NAMES[:self.num_classes]

  def num_examples(self, split: str) -> int:
    """Number of examples generated for ``split``."""
    sizes = {"train": self.num_train, "validation": self.num_validation}
    if split not in sizes:
      raise ValueError(f"unknown split {split!r}; expected one of {sorted(sizes)}")
    return sizes[split]


def generator_parameters(config: SalientObjectsConfig) -> dict[str, Any]:
  """The generator's fields of ``config`` (not tfds's own), by name."""
  base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
  return {f.name: getattr(config, f.name)
          for f in dataclasses.fields(config) if f.name not in base}


HUMAN_ATTENTION = SalientObjectsConfig(
    name="human_attention",
    description=("SALICON stand-in: 2000 train / 500 validation images with "
                 "simulated fixations of 8 observers and density maps, for "
                 "training and evaluating the saliency teacher."),
    num_train=2_000, num_validation=500, seed=1,
)
CLASSIFICATION = SalientObjectsConfig(
    name="classification",
    description=("ImageNet stand-in: 10000 train / 2000 validation labelled "
                 "images (class = object shape), with simulated fixations and "
                 "density maps for attention-alignment evaluation."),
    num_train=10_000, num_validation=2_000, seed=0,
)
CLASSIFICATION_SPURIOUS = SalientObjectsConfig(
    name="classification_spurious",
    description=("As classification, but in train the background tint equals "
                 "a class-specific tint with probability 0.9 (else random); "
                 "in validation it is random. Measures shortcut robustness."),
    num_train=10_000, num_validation=2_000, seed=0, spurious_strength=0.9,
)
CONFIGS: dict[str, SalientObjectsConfig] = {
    c.name: c for c in (HUMAN_ATTENTION, CLASSIFICATION, CLASSIFICATION_SPURIOUS)
}


# ----------------------------------------------------------------------------
# Drawing primitives.


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Row and column coordinates of pixel centres, each (size, size) float32."""
  coords = np.arange(size, dtype=np.float32) + 0.5
  rows, cols = np.meshgrid(coords, coords, indexing="ij")
  rows.setflags(write=False)
  cols.setflags(write=False)
  return rows, cols


def _polygon(u: np.ndarray, v: np.ndarray, vertices) -> np.ndarray:
  """Even-odd point-in-polygon test of points (u, v) against ``vertices``."""
  inside = np.zeros(u.shape, dtype=bool)
  verts = np.asarray(vertices, dtype=np.float32)
  for (u0, v0), (u1, v1) in zip(verts, np.roll(verts, -1, axis=0)):
    if v0 == v1:
      continue
    crosses = (v0 > v) != (v1 > v)
    u_cross = u0 + (v - v0) * (u1 - u0) / (v1 - v0)
    inside ^= crosses & (u < u_cross)
  return inside


def _star_vertices(points: int = 5, outer: float = 1.0,
                   inner: float = 0.42) -> list[tuple[float, float]]:
  """Vertices of a star pointing up (v grows downwards)."""
  verts = []
  for k in range(2 * points):
    radius = outer if k % 2 == 0 else inner
    angle = np.pi * k / points
    verts.append((radius * np.sin(angle), -radius * np.cos(angle)))
  return verts


_STAR = _star_vertices()
_TRIANGLE = [(0.0, -0.95), (0.95, 0.8), (-0.95, 0.8)]

# Each shape is a predicate on object coordinates (u right, v down), drawn to
# fill roughly [-1, 1]^2; shapes differ in topology or in where their mass
# lies so that they survive 64-px rendering and random resized crops.
_SHAPES = {
    "disk": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.82,
    "triangle": lambda u, v: _polygon(u, v, _TRIANGLE),
    "plus": lambda u, v: ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0))
                         | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0)),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.3),
    "star": lambda u, v: _polygon(u, v, _STAR),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1.0,
    "horizontal_bar": lambda u, v: (np.abs(u) <= 1.0) & (np.abs(v) <= 0.28),
    "vertical_bar": lambda u, v: (np.abs(u) <= 0.28) & (np.abs(v) <= 1.0),
    "l_shape": lambda u, v: (((u >= -0.8) & (u <= -0.2) & (np.abs(v) <= 1.0))
                             | ((np.abs(u) <= 0.8) & (v >= 0.4) & (v <= 1.0))),
    "x_cross": lambda u, v: (((np.abs(u - v) <= 0.42) | (np.abs(u + v) <= 0.42))
                             & (np.maximum(np.abs(u), np.abs(v)) <= 0.8)),
    "t_shape": lambda u, v: (((np.abs(u) <= 1.0) & (v >= -1.0) & (v <= -0.4))
                             | ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0))),
}
assert tuple(_SHAPES) == CLASS_NAMES


def shape_mask(class_id: int, image_size: int, center: tuple[float, float],
               half_size: float, angle_deg: float = 0.0,
               stretch: tuple[float, float] = (1.0, 1.0),
               mirror: bool = False) -> np.ndarray:
  """Boolean (S, S) mask of shape ``class_id`` placed in an S x S image.

  ``center`` is (row, col) in pixels, ``half_size`` the half-extent in pixels
  of the shape's [-1, 1] box; ``angle_deg`` rotates it, ``stretch`` scales its
  (u, v) axes and ``mirror`` flips it left-right (so that the class is
  invariant to the horizontal flips of the augmentation).
  """
  rows, cols = _pixel_grid(image_size)
  dy = (rows - center[0]) / half_size
  dx = (cols - center[1]) / half_size
  theta = np.deg2rad(angle_deg)
  cos, sin = np.cos(theta), np.sin(theta)
  u = (dx * cos + dy * sin) / stretch[0]
  v = (-dx * sin + dy * cos) / stretch[1]
  if mirror:
    u = -u
  return _SHAPES[CLASS_NAMES[class_id]](u, v)


def tint_hue(tint: int, num_classes: int) -> float:
  """Hue in [0, 1) of background tint ``tint`` (evenly spaced palette)."""
  return tint / num_classes


def _hsv(h: float, s: float, v: float) -> np.ndarray:
  """One RGB colour in [0, 1] from HSV components."""
  return np.asarray(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


# ----------------------------------------------------------------------------
# One example.


@functools.lru_cache(maxsize=64)
def _block_permutation(seed: int, split_id: int, block: int,
                       num_classes: int) -> tuple[int, ...]:
  """Class order of one block of ``num_classes`` consecutive indices."""
  rng = np.random.default_rng([seed, split_id, _LABEL_STREAM, block])
  return tuple(int(k) for k in rng.permutation(num_classes))


def _label(config: SalientObjectsConfig, split_id: int, index: int) -> int:
  """Class of example ``index``: a fresh permutation per block of classes.

  Labels are exactly balanced over every run of ``num_classes`` indices, so
  even tiny builds cover all classes, yet are not a plain function of index.
  """
  block, offset = divmod(index, config.num_classes)
  return _block_permutation(config.seed, split_id, block,
                            config.num_classes)[offset]


def _background(config: SalientObjectsConfig, rng: np.random.Generator,
                tint: int) -> np.ndarray:
  """Tinted, textured, cluttered background, float32 (S, S, 3) in [0, 1].

  The base colour is a desaturated mid-grey tinted by palette entry ``tint``;
  smooth luminance texture and small blobs/strokes whose colour stays within
  ``distractor_contrast`` of the base make it busy but not salient.
  """
  size = config.image_size
  base = _hsv(tint_hue(tint, config.num_classes) + rng.uniform(-0.02, 0.02),
              rng.uniform(0.25, 0.4), rng.uniform(0.35, 0.6))
  coarse = rng.standard_normal((size // 8, size // 8)).astype(np.float32)
  texture = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
  img = base + config.texture_contrast * np.clip(texture, -2, 2)[..., None] / 2
  img = np.ascontiguousarray(img)
  # All distractor parameters in one draw each (far cheaper than per item).
  n = int(rng.integers(config.num_distractors[0], config.num_distractors[1] + 1))
  pos = rng.uniform(0, size, (n, 2))  # (row, col)
  delta = (rng.uniform(0.4, 1.0, n) * config.distractor_contrast
           * np.where(rng.random(n) < 0.5, 1.0, -1.0))
  colours = base + delta[:, None] + rng.uniform(-0.02, 0.02, (n, 3))
  is_blob = rng.random(n) < 0.5
  radius = rng.uniform(0.02, 0.06, n) * size
  angle = rng.uniform(0, np.pi, n)
  half_len = rng.uniform(0.03, 0.1, n) * size
  offset = half_len[:, None] * np.stack([np.sin(angle), np.cos(angle)], -1)
  # cv2 takes integer (x, y) points with `shift` fractional bits.
  shift = 4
  fixed = lambda a: np.round(a * (1 << shift)).astype(np.int64).tolist()
  centres, starts, ends = (fixed(p[:, ::-1]) for p in
                           (pos, pos - offset, pos + offset))
  radii = fixed(radius)
  for k, colour in enumerate(colours.tolist()):
    if is_blob[k]:
      cv2.circle(img, centres[k], radii[k], colour, -1, cv2.LINE_8, shift)
    else:  # a thin stroke of random orientation
      cv2.line(img, starts[k], ends[k], colour, 1, cv2.LINE_8, shift)
  return img


def _object(config: SalientObjectsConfig, rng: np.random.Generator,
            label: int) -> np.ndarray:
  """Boolean (S, S) mask of the foreground object of class ``label``."""
  size = config.image_size
  half = rng.uniform(*config.object_size) * size / 2
  margin = half * (1.0 + config.max_stretch) * 1.1 + 1.0
  center = tuple(rng.uniform(margin, size - margin, 2))
  angle = rng.uniform(-config.max_rotation, config.max_rotation)
  stretch = tuple(1.0 + rng.uniform(-config.max_stretch, config.max_stretch, 2))
  mirror = bool(rng.random() < 0.5)
  return shape_mask(label, size, center, half, angle, stretch, mirror)


def _object_colour(rng: np.random.Generator) -> np.ndarray:
  """A saturated colour of random hue, bright (70%) or dark (30%).

  The hue is independent of the class, so only the shape identifies it.
  """
  value = rng.uniform(0.85, 1.0) if rng.random() < 0.7 else rng.uniform(0.0, 0.12)
  return _hsv(rng.random(), rng.uniform(0.75, 1.0), value)


def _fixations(config: SalientObjectsConfig, rng: np.random.Generator,
               mask: np.ndarray) -> np.ndarray:
  """Simulated fixations of all observers, int32 (N, 2) of (row, col).

  Each fixation lands on a uniformly chosen object pixel (plus a little
  jitter) with probability ``frac_object``, near the image centre (Gaussian
  centre bias) with ``frac_center``, and anywhere with ``frac_random``.
  """
  size = config.image_size
  lo, hi = config.fixations_per_observer
  n = int(rng.integers(lo, hi + 1, config.num_observers).sum())
  kind = rng.choice(3, size=n, p=[config.frac_object, config.frac_center,
                                  config.frac_random])
  on_object = np.argwhere(mask)[rng.integers(0, mask.sum(), n)].astype(np.float64)
  on_object += rng.normal(0, config.object_fixation_jitter * size, (n, 2))
  centre = rng.normal(size / 2, config.center_bias_sigma * size, (n, 2))
  anywhere = rng.uniform(0, size, (n, 2))
  points = np.choose(kind[:, None], [on_object, centre, anywhere])
  return np.clip(np.floor(points), 0, size - 1).astype(np.int32)


def density_map(fixations: np.ndarray, image_size: int,
                sigma: float) -> np.ndarray:
  """Fixations blurred by a Gaussian of ``sigma`` px, uint8 (S, S), max 255.

  The same construction as SALICON's maps: a fixation count image convolved
  with a Gaussian and scaled to a peak of 255.
  """
  counts = np.zeros((image_size, image_size), dtype=np.float32)
  np.add.at(counts, (fixations[:, 0], fixations[:, 1]), 1.0)
  blurred = cv2.GaussianBlur(counts, (0, 0), sigma,
                             borderType=cv2.BORDER_CONSTANT)
  peak = blurred.max()
  if peak <= 0:
    return np.zeros((image_size, image_size), dtype=np.uint8)
  return np.round(blurred * (255.0 / peak)).astype(np.uint8)


def file_name(split: str, index: int) -> str:
  """Stable, unique name of example ``index`` of ``split``."""
  return f"salient_objects_{split}_{index:06d}.png"


def render_example(config: SalientObjectsConfig, split: str,
                   index: int) -> dict[str, Any]:
  """Renders example ``index`` of ``split`` as numpy arrays, without tfds.

  Returns the builder's features: ``image`` uint8 (S, S, 3), ``label`` int,
  ``file_name`` str, ``saliency_map`` uint8 (S, S, 1), ``fixations`` int32
  (N, 2) 0-based (row, col), ``object_mask`` uint8 (S, S, 1) in {0, 255},
  ``background_tint`` int (the palette entry of the background tint).
  """
  if not 0 <= index < config.num_examples(split):
    raise IndexError(f"index {index} out of range for {split!r} "
                     f"({config.num_examples(split)} examples)")
  split_id = SPLIT_IDS[split]
  label = _label(config, split_id, index)
  rng = np.random.default_rng([config.seed, split_id, _IMAGE_STREAM, index])
  # Draw both tint candidates always, so configs that differ only in
  # spurious_strength render otherwise identical images.
  correlated = rng.random() < config.spurious_strength and split == "train"
  random_tint = int(rng.integers(config.num_classes))
  tint = label if correlated else random_tint

  img = _background(config, rng, tint)
  mask = _object(config, rng, label)
  img[mask] = _object_colour(rng)
  # Luminance sensor noise, so no region is perfectly flat.
  img += 0.01 * rng.standard_normal((*mask.shape, 1), dtype=np.float32)
  image = np.clip(img * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)

  fixations = _fixations(config, rng, mask)
  sigma = config.saliency_sigma * config.image_size
  return {
      "image": image,
      "label": label,
      "file_name": file_name(split, index),
      "saliency_map": density_map(fixations, config.image_size, sigma)[..., None],
      "fixations": fixations,
      "object_mask": (mask.astype(np.uint8) * 255)[..., None],
      "background_tint": tint,
  }


def _png(image: np.ndarray) -> bytes:
  """Lossless PNG bytes of a uint8 (H, W, 1|3) RGB/grey image."""
  if image.shape[-1] == 3:
    image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
  ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
  if not ok:
    raise RuntimeError("PNG encoding failed")
  return buf.tobytes()


def _encoded_examples(config: SalientObjectsConfig, split: str,
                      indices: range) -> list[tuple[int, dict[str, Any]]]:
  """(index, features) pairs with images as PNG bytes, ready for tfds.

  Encoding here with OpenCV is much faster than tfds's TensorFlow encoder
  and lets worker processes do it.
  """
  out = []
  for index in indices:
    ex = render_example(config, split, index)
    for key in ("image", "saliency_map", "object_mask"):
      ex[key] = _png(ex[key])
    out.append((index, ex))
  return out


def _num_workers(num_examples: int) -> int:
  """Worker processes for a split: none for small splits, else one per core."""
  if num_examples < _PARALLEL_MIN_EXAMPLES:
    return 0
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    cores = os.cpu_count() or 1
  return min(cores, 8) if cores > 1 else 0


_PARALLEL_MIN_EXAMPLES = 1_000
_CHUNK = 250


def generate_encoded(config: SalientObjectsConfig, split: str,
                     num_workers: int | None = None,
                     chunk_size: int = _CHUNK,
                     ) -> Iterator[tuple[int, dict[str, Any]]]:
  """Yields (index, PNG-encoded features) for a whole split, in index order.

  Large splits are rendered by ``num_workers`` spawned processes (default:
  one per core from 1000 examples up), ``chunk_size`` examples per task; each
  example depends only on its index, so the output is identical for any
  number of workers.
  """
  n = config.num_examples(split)
  workers = _num_workers(n) if num_workers is None else num_workers
  chunks = [range(a, min(a + chunk_size, n))
            for a in range(0, n, chunk_size)]
  if workers <= 1:
    for chunk in chunks:
      yield from _encoded_examples(config, split, chunk)
    return
  # Spawn, not fork: the parent may hold TensorFlow threads.
  ctx = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
    for batch in pool.map(_encoded_examples, itertools.repeat(config),
                          itertools.repeat(split), chunks):
      yield from batch


# ----------------------------------------------------------------------------
# tfds builder.


class SalientObjects(tfds.core.GeneratorBasedBuilder):
  """Synthetic salient-object images with class labels and simulated fixations.

  Each 64x64 RGB image (``image_size``) shows one foreground object whose
  shape is the class (`CLASS_NAMES`: disk, square, triangle, plus, ring, star,
  diamond, horizontal bar, vertical bar, L-shape, and with ``num_classes`` up
  to 12 also x-cross and T-shape). It is placed at a random position, with
  diameter ``object_size`` x image size, rotation within +-``max_rotation``
  degrees, axes stretched by up to +-``max_stretch`` and a random left-right
  mirror. It is salient by contrast: a saturated colour of random hue (so
  colour never tells the class), bright or dark against a desaturated
  mid-grey background. The background is tinted by one of ``num_classes``
  evenly spaced hues, carries smooth luminance texture
  (``texture_contrast``) and ``num_distractors`` small blobs and strokes within
  ``distractor_contrast`` of its colour.

  ``num_observers`` simulated observers each make ``fixations_per_observer``
  fixations: on the object with probability ``frac_object``, Gaussian around
  the centre (sd ``center_bias_sigma`` x size) with ``frac_center``, uniform
  with ``frac_random``. The density map is the fixation count image blurred by
  a Gaussian of sd ``saliency_sigma`` x size (1/18, within SALICON's range)
  and scaled to a peak of 255.

  Configs:

  * ``human_attention`` (2000 / 500, seed 1): the SALICON stand-in for the
    saliency teacher; use ``image``, ``saliency_map`` and ``fixations``.
  * ``classification`` (10000 / 2000, seed 0): the ImageNet stand-in for
    contrastive and supervised training, linear evaluation and robustness;
    its fixations and maps serve attention-alignment metrics.
  * ``classification_spurious``: the same images except that in train the
    background tint equals the label with probability ``spurious_strength``
    (0.9), else it is random, so tint and label agree on
    0.9 + 0.1 / num_classes = 91% of train images; in validation the tint is
    random (agreement 1 / num_classes). Accuracy on its validation split
    measures reliance on the shortcut. (Colour-jitter augmentation weakens a
    hue shortcut; it is strongest for supervised training without it.)

  Records are written in index order (``disable_shuffling``) in array_record
  format, so record ``i`` of a split is `render_example(config, split, i)`.
  Splits of 1000 examples or more are generated by one spawned worker per
  core (build times: ``docs/performance.md``).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = list(CONFIGS.values())
  DEFAULT_CONFIG_NAME = "classification"

  def __init__(self, *, file_format=None, **kwargs: Any):
    """As `GeneratorBasedBuilder`, but new data defaults to array_record."""
    super().__init__(file_format=file_format, **kwargs)
    if file_format is None and not self.data_path.joinpath(
        "dataset_info.json").exists():
      self.info.set_file_format(tfds.core.FileFormat.ARRAY_RECORD, override=True)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file; tfds's own lookup needs the optional importlib_resources."""
    return epath.Path(inspect.getfile(cls))

  def _info(self) -> tfds.core.DatasetInfo:
    """Feature spec; shapes follow the config's image size."""
    config: SalientObjectsConfig = self.builder_config
    size = config.image_size
    params = ", ".join(f"{k}={v!r}"
                       for k, v in generator_parameters(config).items())
    return self.dataset_info_from_configs(
        description=(self.__doc__.split("\n")[0]
                     + f"\n\nGenerator parameters: {params}."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3)),
            "label": tfds.features.ClassLabel(names=config.class_names),
            "file_name": tfds.features.Text(),
            "saliency_map": tfds.features.Image(shape=(size, size, 1)),
            "fixations": tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
            "object_mask": tfds.features.Image(shape=(size, size, 1)),
            "background_tint": tfds.features.Scalar(
                dtype=np.int32,
                doc="Palette index of the background tint (hue = tint / "
                    "num_classes); correlated with the label only in the "
                    "train split of classification_spurious."),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Train and validation splits; nothing is downloaded."""
    del dl_manager
    return {split: self._generate_examples(split)
            for split in ("train", "validation")}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    """Yields (index, features) in index order, images pre-encoded as PNG."""
    return generate_encoded(self.builder_config, split)
