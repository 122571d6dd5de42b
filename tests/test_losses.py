"""NT-Xent against an independent NumPy computation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_contrastive import losses

#: The loss as one program (as the training step runs it): op by op, each of its
#: operations would compile on its own for every shape.
nt_xent = jax.jit(losses.nt_xent, static_argnames=("return_accuracy",))


def nt_xent_numpy(z1, z2, t):
  """SimCLR's loss written out anchor by anchor: the mean over the view-1
  anchors plus the mean over the view-2 anchors (``loss_a + loss_b`` in the
  reference implementation)."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n2 = len(z)
  n = n2 // 2
  per_view, correct = [0.0, 0.0], 0
  for i in range(n2):
    pos = (i + n) % n2
    sims = np.array([z[i] @ z[k] / t for k in range(n2)])
    others = [k for k in range(n2) if k != i]
    per_view[i // n] += (-sims[pos] + np.log(np.sum(np.exp(sims[others])))) / n
    correct += others[int(np.argmax(sims[others]))] == pos
  return per_view[0] + per_view[1], correct / n2


@pytest.mark.parametrize("n,d,t", [(4, 8, 0.1), (7, 3, 0.5), (1, 5, 1.0)])
def test_nt_xent_matches_numpy(n, d, t):
  rng = np.random.default_rng(n)
  z1 = rng.normal(size=(n, d)).astype(np.float32)
  z2 = (z1 + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
  loss, acc = nt_xent(jnp.asarray(z1), jnp.asarray(z2), t, return_accuracy=True)
  want_loss, want_acc = nt_xent_numpy(z1, z2, t)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
  assert float(acc) == pytest.approx(want_acc)


def test_nt_xent_of_identical_embeddings_is_twice_log_candidates():
  # Every candidate equally similar: each direction's cross-entropy is log(2N - 1).
  z = jnp.ones((5, 3), jnp.float32)
  np.testing.assert_allclose(float(nt_xent(z, z, 0.1)), 2 * np.log(9), rtol=1e-6)


def test_nt_xent_is_scale_invariant_and_has_finite_grads():
  rng = np.random.default_rng(0)
  z1, z2 = (jnp.asarray(rng.normal(size=(6, 4)), jnp.float32) for _ in range(2))
  a = nt_xent(z1, z2, 0.2)
  b = nt_xent(3 * z1, 0.5 * z2, 0.2)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  g = jax.jit(jax.grad(lambda z: losses.nt_xent(z, z2, 0.2)))(z1)
  assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0


def test_perfect_pairs_have_low_loss():
  z = jnp.eye(8)
  loss, acc = nt_xent(z, z, 0.05, return_accuracy=True)
  assert float(acc) == 1.0 and float(loss) < 1e-3


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(5, 4)).astype(np.float32)
  labels = np.array([0, 3, 1, 1, 2])
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  want = -np.mean(np.log(p[np.arange(5), labels]))
  np.testing.assert_allclose(losses.cross_entropy(logits, labels), want, rtol=1e-5)
