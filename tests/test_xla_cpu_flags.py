"""The XLA:CPU setting of attn_contrastive.xla_cpu_flags takes effect on import, where CPU is the
only backend."""
import os
import subprocess
import sys
import textwrap

import pytest

from attn_contrastive import xla_cpu_flags


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
  assert xla_cpu_flags.YNN_FLAG in flags
  assert in_ynn.strip() == "False"
  _, default_in_ynn = _run(_CONV_HLO, ATTN_CONTRASTIVE_HOST_DEFAULTS="0").split("|")
  if default_in_ynn.strip() == "False":
    pytest.skip("this jaxlib does not hand convolutions to YNNPACK anyway")


def test_users_own_flag_and_opt_out_are_respected():
  flags, _ = _run(_CONV_HLO, XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=").split("|")
  assert flags.strip() == "--xla_cpu_experimental_ynn_fusion_type="
  flags, _ = _run(_CONV_HLO, ATTN_CONTRASTIVE_HOST_DEFAULTS="0").split("|")
  assert xla_cpu_flags.YNN_FLAG not in flags


def test_import_after_jax_started_warns():
  code = """
      import warnings, jax, jax.numpy as jnp
      jnp.ones(1).block_until_ready()
      with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        from attn_contrastive import xla_cpu_flags
        print(xla_cpu_flags.set_xla_flags(), any("imported after JAX" in str(x.message) for x in w))
  """
  assert _run(code) == "False True"


def _flags_after_import(**env) -> str:
  """``XLA_FLAGS`` once ``attn_contrastive`` is imported (JAX is not started)."""
  full_env = {k: v for k, v in os.environ.items()
              if k not in ("XLA_FLAGS", "ATTN_CONTRASTIVE_HOST_DEFAULTS", "JAX_PLATFORMS",
                           "JAX_PLATFORM_NAME")}
  full_env.update(env)
  out = subprocess.run([sys.executable, "-c", "import os, attn_contrastive; "
                        "print(repr(os.environ.get('XLA_FLAGS', '')))"],
                       env=full_env, capture_output=True, text=True, timeout=120, check=True)
  return out.stdout.strip()


def test_the_flag_is_left_out_where_another_backend_starts():
  """Set for CPU alone; a TPU or GPU platform leaves XLA_FLAGS as the user set it."""
  assert xla_cpu_flags.YNN_FLAG in _flags_after_import(JAX_PLATFORMS="cpu")
  assert _flags_after_import(JAX_PLATFORMS="tpu") == "''"
  assert _flags_after_import(JAX_PLATFORMS="cuda,cpu") == "''"
  assert _flags_after_import(JAX_PLATFORM_NAME="gpu") == "''"
  assert (_flags_after_import(JAX_PLATFORMS="tpu", XLA_FLAGS="--xla_dump_to=/tmp/d")
          == "'--xla_dump_to=/tmp/d'")


@pytest.mark.parametrize("env,cpu", [
    ({"JAX_PLATFORMS": "cpu"}, True),
    ({"JAX_PLATFORMS": "CPU, cpu"}, True),
    ({"JAX_PLATFORMS": "cpu,tpu"}, False),  # TPU starts too (and reads XLA_FLAGS)
    ({"JAX_PLATFORMS": "gpu"}, False),
    ({"JAX_PLATFORM_NAME": "tpu"}, False),
    ({"JAX_PLATFORM_NAME": "cpu"}, True),  # no accelerator installed here
    ({}, True),
    ({"PJRT_NAMES_AND_LIBRARY_PATHS": "custom:/opt/pjrt_custom.so"}, False),
])
def test_cpu_only_reads_the_platform_variables(env, cpu):
  assert xla_cpu_flags.cpu_only(env) is cpu


def _fake_module(root, name: str) -> None:
  """Module ``name`` under ``root`` that fails if imported (``jax_plugins.x``: in the
  namespace package, which has no ``__init__.py``)."""
  parts = name.split(".")
  folder = root.joinpath(*parts[:-1], parts[-1] if len(parts) == 1 else "")
  folder.mkdir(parents=True, exist_ok=True)
  module = folder / ("__init__.py" if len(parts) == 1 else f"{parts[-1]}.py")
  module.write_text("raise ImportError('imported')")


@pytest.mark.parametrize("module", ["libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin",
                                    "jax_rocm7_plugin", "jax_plugins.xla_cuda12"])
def test_an_installed_accelerator_plugin_means_not_cpu_only(module, tmp_path, monkeypatch):
  """Found by module name, without importing it; JAX_PLATFORMS=cpu still wins."""
  assert xla_cpu_flags.cpu_only({})
  _fake_module(tmp_path, module)
  monkeypatch.syspath_prepend(str(tmp_path))
  assert xla_cpu_flags.accelerator_installed({})
  assert not xla_cpu_flags.cpu_only({}) and not xla_cpu_flags.cpu_only({"JAX_PLATFORM_NAME": "cpu"})
  assert xla_cpu_flags.cpu_only({"JAX_PLATFORMS": "cpu"})


def test_a_tpu_library_path_means_not_cpu_only(tmp_path):
  library = tmp_path / "libtpu.so"
  assert xla_cpu_flags.cpu_only({"TPU_LIBRARY_PATH": str(library)})  # no such file: JAX ignores it
  library.write_bytes(b"")
  assert not xla_cpu_flags.cpu_only({"TPU_LIBRARY_PATH": str(library)})
