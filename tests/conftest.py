"""Test setup: eight virtual CPU devices for sharding tests, a persistent compilation
cache so that identical programs compile once per machine, and XLA:CPU's quickest
compilation (multiprocess.COMPILE_FLAGS: the suite's tiny programs compile for much
longer than they run: only faster machine code is given up)."""
import logging
import os
import tempfile

import pytest

import multiprocess

os.environ.setdefault("XLA_FLAGS", multiprocess.xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "attn_contrastive_test_jax_cache"))
# Every program, however quick to compile: the subprocess tests start JAX again and
# again with the same small programs.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

#: The longest modules first (minutes of subprocess runs): the short tests then fill
#: the workers' ends, instead of one worker finishing a long test alone.
LONGEST_FIRST = ("test_preemption", "test_multiprocess", "test_imagenet_chain", "test_signals",
                 "test_interrupt", "test_train_step",
                 "test_workers", "test_study_kills", "test_kills", "test_remote_paths", "test_attention")


def pytest_collection_modifyitems(config, items):
  """Longest modules first. (A module whose tests share a costly module fixture
  marks itself ``pytestmark = pytest.mark.xdist_group(...)``: with ``--dist
  loadgroup``, pyproject.toml, one worker runs it and builds the fixture once.)"""
  del config

  def module(item):
    return item.module.__name__.rsplit(".", 1)[-1]

  rank = {m: i for i, m in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(module(item), len(rank)))  # stable: keeps the rest



@pytest.fixture(autouse=True)
def _absl_logger_at_its_import_level():
  """Each test starts with absl's logger at its import-time level (NOTSET: the
  root's, which ``caplog.at_level`` sets). A command run in-process before it on
  the same worker (``predict.main``'s quiet terminal, ``set_verbosity``) would
  otherwise pin it at WARNING and hide the INFO lines a test reads through caplog."""
  from absl import logging as absl_logging
  absl_logging.get_absl_logger().setLevel(logging.NOTSET)
  yield
