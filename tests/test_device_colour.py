"""SimCLR's colour ops in the step (``aug.views_on = "device"``) against the host path.

For the same rng state the host crop + the device's colour ops give the host
path's view (float rounding apart), every op included; over many draws each
op shows with the host path's probability; the pipeline's two paths give the
same batch up to a level of rounding. One jitted program per view size.
"""
import jax
import ml_collections
import numpy as np
import pytest

from attn_contrastive.data import augment, device_colour, pipeline

SIZE = 16
#: Views per call: every call has this shape, so each worker compiles one program.
BATCH = 48
_jitted = jax.jit(device_colour.colour_views)


def _colour(crops, params):
  """The device ops over any number of views, in calls of :data:`BATCH`."""
  crops, params = np.asarray(crops), np.asarray(params)
  n = len(crops)
  pad = -n % BATCH
  crops = np.concatenate([crops, np.zeros((pad, *crops.shape[1:]), crops.dtype)])
  params = np.concatenate([params, np.zeros((pad, params.shape[1]), params.dtype)])
  out = [np.asarray(_jitted(crops[i:i + BATCH], params[i:i + BATCH]))
         for i in range(0, len(crops), BATCH)]
  return np.concatenate(out)[:n]


def _image(seed=0, shape=(40, 52, 3)):
  """A smooth random colour image (hue, saturation and value all vary)."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 256, (5, 6, 3)).astype(np.float32)
  import cv2
  return np.clip(cv2.resize(coarse, shape[1::-1], interpolation=cv2.INTER_CUBIC), 0,
                 255).astype(np.uint8)


def _both(seed, image, **kwargs):
  """(host view, device view) of one rng state, both float32 [0, 1]."""
  host, _ = augment.simclr_view(np.random.default_rng(seed), image, out_size=SIZE, **kwargs)
  crop, _, params = augment.simclr_geometry(np.random.default_rng(seed), image, out_size=SIZE,
                                            **kwargs)
  return host, crop, params


def test_fixed_draws_give_the_host_paths_view():
  """Jitter (many orders), grey and blur always on, grey off for half; both brightness
  kinds."""
  image = _image()
  hosts, crops, params = [], [], []
  for seed in range(BATCH):
    kwargs = dict(p_jitter=1.0, p_gray=float(seed < BATCH // 2), p_blur=1.0,
                  jitter_impl=("simclrv1", "simclrv2")[seed % 2])
    host, crop, p = _both(seed, image, **kwargs)
    hosts.append(host), crops.append(crop), params.append(p)
  got = _colour(crops, params)
  np.testing.assert_allclose(got, np.stack(hosts), atol=2e-5)
  assert len({tuple(p[1:5].astype(int)) for p in params}) > 15  # orders of the four ops
  np.testing.assert_allclose(got[:BATCH // 2, ..., 0], got[:BATCH // 2, ..., 1], atol=1e-6)


def test_each_op_shows_with_the_host_paths_probability():
  """As the host path's test: jitter 0.8, grey 0.2, blur 0.5, each seen in the output
  (a flat colour changes under jitter, grey equalises the channels, blur moves a
  pattern), from one batched call of the device ops."""
  n = 12 * BATCH
  flat = np.zeros((48, 48, 3), np.uint8)
  flat[...] = (200, 90, 30)
  pattern = _image(1, (48, 48, 3))
  rng = np.random.default_rng(21)
  crops, params = [], []
  for image, kwargs in ((flat, dict(p_gray=0.0, p_blur=0.0)),
                        (flat, dict(strength=0.0, p_blur=0.0)),
                        (pattern, dict(strength=0.0, p_gray=0.0))):
    for _ in range(n):
      crop, _, p = augment.simclr_geometry(rng, image, out_size=SIZE, **kwargs)
      crops.append(crop), params.append(p)
  out = _colour(crops, params).reshape(3, n, SIZE, SIZE, 3)
  crops = np.stack(crops).reshape(3, n, SIZE, SIZE, 3) / 255
  jitters = np.mean(~np.all(np.isclose(out[0], crops[0], atol=1e-6), axis=(1, 2, 3)))
  greys = np.mean(np.all(np.isclose(out[1, ..., 0], out[1, ..., 1]), axis=(1, 2)))
  blurs = np.mean(~np.all(np.isclose(out[2], crops[2], atol=1e-6), axis=(1, 2, 3)))
  sd = np.sqrt(0.25 / n)
  assert abs(jitters - 0.8) < 4 * sd and abs(greys - 0.2) < 4 * sd
  assert 0.44 < blurs < 0.5 + 4 * sd  # sigmas below ~0.2 px move nothing, as on the host


def test_the_pipelines_two_paths_give_the_same_batch():
  """ContrastiveViews with views_on=device: uint8 crops + colour rows; the step's colour
  ops then give the host path's uint8 views (one level of rounding apart, rarely)."""
  aug = ml_collections.ConfigDict(dict(strength=1.0, p_jitter=0.8, p_gray=0.2, p_blur=0.5,
                                       area_min=0.08, jitter_impl="simclrv1",
                                       views_on="host"))
  example = {"image": _image(2), "label": 3}
  host = pipeline.ContrastiveViews(SIZE, aug)(example, np.random.default_rng(5))
  aug.views_on = "device"
  dev = pipeline.ContrastiveViews(SIZE, aug)(example, np.random.default_rng(5))
  assert dev["view1"].dtype == np.uint8 and dev["colour1"].shape == (13,)
  assert dev["label"] == host["label"] == 3
  for i in (1, 2):
    levels = device_colour.as_uint8_levels(_colour(dev[f"view{i}"][None],
                                                   dev[f"colour{i}"][None]))
    diff = np.abs(np.asarray(levels)[0] - host[f"view{i}"].astype(np.float32))
    assert diff.max() <= 1 and np.mean(diff) < 0.01
  with pytest.raises(ValueError, match="params"):
    device_colour.colour_views(dev["view1"][None], dev["colour1"])


def test_the_pretraining_loss_applies_the_colour_ops_of_a_device_batch(monkeypatch):
  """A batch with colour rows reaches the network as the host-path batch of the views
  the ops make (the network stubbed: what it is handed is compared; the loss runs
  eagerly, so the colour ops are this file's compiled ones)."""
  from attn_contrastive.tasks import pretrain
  from helpers import tiny_config
  seen = []

  def network(model, params, batch_stats, images, dtype, **rows):
    seen.append(np.asarray(images, np.float32))
    return {"embedding": images.reshape(images.shape[0], -1)[:, :8] / 255.0}, batch_stats
  monkeypatch.setattr(pretrain.forward, "apply_train", network)
  monkeypatch.setattr(device_colour, "colour_views", _colour)  # compiled once, not op by op
  rng = np.random.default_rng(6)
  crops, params = [], []
  for _ in range(8):
    crop, _, p = augment.simclr_geometry(rng, _image(3), out_size=SIZE)
    crops.append(crop), params.append(p)
  crops, params = np.stack(crops), np.stack(params)
  levels = np.asarray(device_colour.as_uint8_levels(_colour(crops, params)))
  loss_fn = pretrain.make_loss_fn(None, tiny_config())
  loss_fn({}, {}, {"view1": crops[:4], "view2": crops[4:], "colour1": params[:4],
                   "colour2": params[4:]}, None)
  loss_fn({}, {}, {"view1": crops[:4], "view2": crops[4:]}, None)
  np.testing.assert_array_equal(seen[0], levels)
  np.testing.assert_array_equal(seen[1], crops)  # without colour rows: as handed over
  assert not np.array_equal(levels, crops)
