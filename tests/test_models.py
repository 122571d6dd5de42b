"""Model shapes and parameter counts against torchvision's."""
import jax
import jax.numpy as jnp
import pytest

from attn_contrastive.models.resnet import ResNet
from attn_contrastive.train.state import count_params


def _n_params(model, size):
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, size, size, 3)), train=False))
  return count_params(shapes["params"])


@pytest.mark.parametrize("depth,expected", [(18, 11_689_512), (50, 25_557_032)])
def test_param_count_matches_torchvision(depth, expected):
  assert _n_params(ResNet(depth=depth, num_classes=1000), 224) == expected


def test_stage_outputs_have_resnet_strides():
  model = ResNet(depth=18, width=8, num_classes=5)
  x = jnp.zeros((2, 64, 64, 3))
  out, _ = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x,
                                                         train=False))
  assert out["conv2"].shape == (2, 16, 16, 8)   # stride 4
  assert out["conv3"].shape == (2, 8, 8, 16)    # stride 8
  assert out["conv4"].shape == (2, 4, 4, 32)    # stride 16
  assert out["conv5"].shape == (2, 2, 2, 64)    # stride 32
  assert out["pooled"].shape == (2, 64)
  assert out["logits"].shape == (2, 5)


def test_bottleneck_feature_dim_and_small_stem():
  model = ResNet(depth=50, width=4, stem_kernel=3, stem_stride=1, stem_pool=False)
  out, _ = jax.eval_shape(lambda: model.init_with_output(
      jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))
  assert out["conv2"].shape == (1, 32, 32, 16)
  assert out["pooled"].shape == (1, model.feature_dim) == (1, 128)
  assert "logits" not in out


def test_unknown_depth_is_refused():
  with pytest.raises(ValueError, match="depth 19"):
    jax.eval_shape(lambda: ResNet(depth=19).init(jax.random.PRNGKey(0),
                                                 jnp.zeros((1, 32, 32, 3))))
