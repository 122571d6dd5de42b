"""Attention heads and the attention loss against an independent NumPy version."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_contrastive import losses
from attn_contrastive.models.attention import AttentionHeads, spatial_softmax
from attn_contrastive.models.resnet import ResNet


def _np_softmax(z):
  z = z.reshape(len(z), -1).astype(np.float64)
  e = np.exp(z - z.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def _np_attention_loss(logits, teacher, alpha, beta, quantile=None):
  total = 0.0
  for s in logits:
    m = _np_softmax(logits[s])
    q = np.maximum(teacher[s].reshape(len(m), -1).astype(np.float64), 0)
    q = q / q.sum(1, keepdims=True)
    kld = np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1) / m), 0), 1)
    z = (m - m.mean(1, keepdims=True)) / m.std(1, keepdims=True)
    if quantile is None:
      w = q
    else:
      w = (q >= np.quantile(q, quantile, axis=1, keepdims=True)).astype(np.float64)
    nss = np.sum(w * z, 1) / w.sum(1)
    total += np.mean(alpha * kld - beta * nss)
  return total


@pytest.mark.parametrize("quantile", [None, 0.8])
def test_attention_loss_matches_numpy(quantile):
  rng = np.random.default_rng(0)
  logits = {"conv3": rng.normal(size=(4, 8, 8)).astype(np.float32),
            "conv4": rng.normal(size=(4, 4, 4)).astype(np.float32)}
  teacher = {"conv3": rng.random((4, 8, 8)).astype(np.float32) * 3,
             "conv4": rng.random((4, 4, 4)).astype(np.float32)}
  teacher["conv3"][0, :4] = 0.0  # zeros in the target: KLD terms drop out
  loss, metrics = losses.attention_loss(logits, teacher, 1.0, 0.5, quantile)
  expected = _np_attention_loss(logits, teacher, 1.0, 0.5, quantile)
  np.testing.assert_allclose(loss, expected, rtol=1e-4, atol=1e-5)
  assert set(metrics) == {"attn_kld/conv3", "attn_nss/conv3", "attn_kld/conv4", "attn_nss/conv4"}


def test_negative_quantile_means_density_target():
  rng = np.random.default_rng(1)
  logits = {"conv3": rng.normal(size=(2, 4, 4)).astype(np.float32)}
  teacher = {"conv3": rng.random((2, 4, 4)).astype(np.float32)}
  a, _ = losses.attention_loss(logits, teacher, 1.0, 1.0, -1)
  b, _ = losses.attention_loss(logits, teacher, 1.0, 1.0, None)
  np.testing.assert_allclose(a, b)


def test_heads_shapes_and_gradient():
  encoder = ResNet(depth=10, width=4, stem_kernel=3, stem_stride=1, stem_pool=False,
                   conv_impl="xla")
  heads = AttentionHeads(stages=("conv3", "conv4"), width=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  feats, _ = encoder.init_with_output(jax.random.PRNGKey(1), x, train=False)
  variables = heads.init(jax.random.PRNGKey(2), feats, train=False)
  logits = heads.apply(variables, feats, train=False)
  assert logits["conv3"].shape == (2, 8, 8) and logits["conv4"].shape == (2, 4, 4)
  np.testing.assert_allclose(spatial_softmax(logits["conv3"]).sum((1, 2)), 1.0, rtol=1e-5)
  teacher = {s: jax.random.uniform(jax.random.PRNGKey(3), v.shape) for s, v in logits.items()}

  def f(params):
    out = heads.apply({**variables, "params": params}, feats, train=False)
    return losses.attention_loss(out, teacher, 1.0, 0.1)[0]

  grads = jax.grad(f)(variables["params"])
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert max(float(jnp.abs(g).max()) for g in leaves) > 0
