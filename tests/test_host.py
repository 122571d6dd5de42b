"""The XLA:CPU setting of attn_contrastive.host takes effect on import."""
import os
import subprocess
import sys
import textwrap

import pytest

from attn_contrastive import host


def _run(code: str, **env) -> str:
  full_env = {k: v for k, v in os.environ.items()
              if k not in ("XLA_FLAGS", "ATTN_CONTRASTIVE_HOST_DEFAULTS")}
  full_env.update(JAX_PLATFORMS="cpu", **env)
  out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                       capture_output=True, text=True, timeout=120, check=True)
  return out.stdout.strip().splitlines()[-1]


_CONV_HLO = """
    import attn_contrastive, jax, jax.numpy as jnp
    from jax import lax
    f = jax.jit(lambda x, w: lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    hlo = f.lower(jnp.ones((64, 16, 16, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text()
    import os
    print(os.environ.get("XLA_FLAGS", ""), "|", "__ynn_fusion" in hlo)
"""


def test_import_selects_eigen_convolutions_before_jax_starts():
  flags, in_ynn = _run(_CONV_HLO).split("|")
  assert host.YNN_FLAG in flags
  assert in_ynn.strip() == "False"
  _, default_in_ynn = _run(_CONV_HLO, ATTN_CONTRASTIVE_HOST_DEFAULTS="0").split("|")
  if default_in_ynn.strip() == "False":
    pytest.skip("this jaxlib does not hand convolutions to YNNPACK anyway")


def test_users_own_flag_and_opt_out_are_respected():
  flags, _ = _run(_CONV_HLO, XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=").split("|")
  assert flags.strip() == "--xla_cpu_experimental_ynn_fusion_type="
  flags, _ = _run(_CONV_HLO, ATTN_CONTRASTIVE_HOST_DEFAULTS="0").split("|")
  assert host.YNN_FLAG not in flags


def test_import_after_jax_started_warns():
  code = """
      import warnings, jax, jax.numpy as jnp
      jnp.ones(1).block_until_ready()
      with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        from attn_contrastive import host
        print(host.set_xla_flags(), any("imported after JAX" in str(x.message) for x in w))
  """
  assert _run(code) == "False True"
