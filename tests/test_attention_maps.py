"""The attention-map reader: the same values as reading whole shards, bounded
memory, light pickles, and clear refusals of map folders that do not fit."""
import concurrent.futures
import mmap
import os
import pickle

import numpy as np
import pytest

from attn_contrastive import config as config_lib
from attn_contrastive.data import attention_maps as am
from attn_contrastive.tasks import label
from fakes import Split, file_names

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
N, SHARDS, SIZE = 37, 5, 8
TEACHER = "/checkpoints/teacher_a"


def _images(n=N):
  """An image source whose records carry the keys the maps were made with."""
  return Split(image=np.zeros((n, 4, 4, 3), np.uint8), file_name=file_names(n, ".jpg"))


def _write_maps(maps_dir, *, compressed=False, n=N):
  """A map folder written with the label task's own writers; returns the maps."""
  c = config_lib.load_config_file(os.path.join(CONFIGS, "label.py"))
  c.teacher_checkpoint = TEACHER
  c.label.update(dict(map_size=SIZE, num_shards=SHARDS))
  os.makedirs(maps_dir, exist_ok=True)
  label._write_metadata(str(maps_dir), label.metadata(c, n))
  maps = np.random.default_rng(0).integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8)
  keys = np.array([f"img_{i:03d}.jpg" for i in range(n)])
  for s, (a, b) in enumerate(am.shard_ranges(n, SHARDS)):
    path = am.shard_path(str(maps_dir), s, SHARDS)
    if compressed:
      np.savez_compressed(path, maps=maps[a:b], keys=keys[a:b])
    else:
      label._save_shard(path, maps[a:b], keys[a:b])
  return maps, keys


def _old_reader(maps_dir, i):
  """What the reader returned when it loaded whole shards into a dict."""
  ranges = am.shard_ranges(N, SHARDS)
  s = next(k for k, (a, b) in enumerate(ranges) if a <= i < b)
  with np.load(am.shard_path(str(maps_dir), s, SHARDS)) as z:
    return z["maps"][i - ranges[s][0]], am.key_str(z["keys"][i - ranges[s][0]])


@pytest.mark.parametrize("compressed,memory_map", [(False, True), (False, False),
                                                    (True, True)])
def test_every_index_matches_whole_shard_reads_with_a_bounded_cache(tmp_path, compressed,
                                                                    memory_map):
  """Memory-mapped (the label task's uncompressed shards), read whole and
  compressed shards give the old reader's values; at most ``max_open_shards``
  shards are ever held, from one thread or several."""
  _write_maps(tmp_path, compressed=compressed)
  src = am.AttentionMapSource(str(tmp_path), max_open_shards=2, memory_map=memory_map)
  order = np.random.default_rng(1).permutation(N)
  for i in order:
    m = src[int(i)]
    want_map, want_key = _old_reader(tmp_path, int(i))
    np.testing.assert_array_equal(m["attention_map"], want_map)
    assert m["file_name"] == want_key and m["attention_map"].dtype == np.uint8
    assert type(m["attention_map"]) is np.ndarray  # a copy, not a view of the shard
    assert len(src.open_shards) <= 2
  mapped = not compressed and memory_map
  shard = src._shard(0)
  assert isinstance(shard["maps"].base, mmap.mmap) == mapped
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    got = list(pool.map(lambda i: src[int(i)]["file_name"], np.tile(order, 3)))
  assert got == [f"img_{int(i):03d}.jpg" for i in np.tile(order, 3)]
  assert len(src.open_shards) <= 2


def test_remote_shards_are_copied_once_then_mapped(tmp_path, monkeypatch):
  """Maps on a remote file system (here: a local folder taken for one) are copied
  to the cache folder once and memory-mapped there; a damaged copy is made again."""
  maps, keys = _write_maps(tmp_path / "bucket")
  monkeypatch.setattr(am.paths, "is_remote", lambda path: True)
  cache = tmp_path / "cache"
  src = am.AttentionMapSource(str(tmp_path / "bucket"), cache_dir=str(cache))
  assert sorted(os.listdir(cache)) == [f"shard-{i:05d}-of-{SHARDS:05d}.npz"
                                       for i in range(SHARDS)]
  for i in range(N):
    np.testing.assert_array_equal(src[i]["attention_map"], maps[i])
    assert src[i]["file_name"] == keys[i]
  assert isinstance(src._shard(0)["maps"].base, mmap.mmap)
  assert os.fspath(src._paths[0]).startswith(str(cache))
  kept = cache / f"shard-00001-of-{SHARDS:05d}.npz"
  damaged = cache / f"shard-00002-of-{SHARDS:05d}.npz"
  damaged.write_bytes(b"not a zip")
  mtime = os.path.getmtime(kept)
  again = am.AttentionMapSource(str(tmp_path / "bucket"), cache_dir=str(cache))
  assert os.path.getmtime(kept) == mtime  # reused
  np.testing.assert_array_equal(again[N - 1]["attention_map"], maps[N - 1])
  assert am.inspect_shard(damaged, 7)["maps"].shape == (7, SIZE, SIZE)  # copied again
  default = am.default_cache_dir(str(tmp_path / "bucket"), src.metadata)
  assert default != am.default_cache_dir(str(tmp_path / "other"), src.metadata)


def test_pickle_carries_no_maps(tmp_path):
  """Grain workers get the source pickled: the open shards stay behind."""
  maps, _ = _write_maps(tmp_path)
  src = am.AttentionMapSource(str(tmp_path), memory_map=False)
  fresh = len(pickle.dumps(src))
  for i in range(N):
    src[i]
  assert len(src.open_shards) == SHARDS
  blob = pickle.dumps(src)
  assert len(blob) == fresh
  assert not any(maps[a:b].tobytes() in blob for a, b in am.shard_ranges(N, SHARDS))
  copy = pickle.loads(blob)
  assert copy.open_shards == []
  np.testing.assert_array_equal(copy[N - 1]["attention_map"], src[N - 1]["attention_map"])


def test_refuses_maps_of_another_dataset_split_or_version(tmp_path):
  _write_maps(tmp_path)
  d = str(tmp_path)
  with pytest.raises(ValueError, match=r"(?s)cover 37 examples .* has 36: they were made from "
                     r"another version .*--config=configs/label.py"):
    am.with_attention_maps(_images(36), d)
  with pytest.raises(ValueError,
                     match="(?s)split 'train', not 'validation'.*data.split=validation"):
    am.with_attention_maps(_images(), d, split="validation")
  with pytest.raises(ValueError, match="(?s)dataset 'salient_objects/classification', not "
                     "'imagenet2012'.*configs/label.py:imagenet"):
    am.with_attention_maps(_images(), d, dataset="imagenet2012")
  joined = am.with_attention_maps(_images(), d, dataset="salient_objects/classification",
                                  split="train")
  assert joined[5]["file_name"] == b"img_005.jpg"


def test_refuses_maps_of_another_teacher(tmp_path):
  _write_maps(tmp_path)
  d = str(tmp_path)
  with pytest.raises(ValueError, match=f"made by the teacher {TEACHER}, but this run expects "
                     "attention.teacher_checkpoint=/checkpoints/teacher_b"):
    am.with_attention_maps(_images(), d, teacher="/checkpoints/teacher_b")
  for same in (TEACHER, TEACHER + "/", "", None):
    assert len(am.with_attention_maps(_images(), d, teacher=same)) == N


@pytest.mark.parametrize("damage", ["truncated", "empty", "short"])
def test_refuses_a_broken_shard_naming_it(tmp_path, damage):
  """A shard cut short (e.g. a copy that stopped), an empty file, or one with
  too few maps is refused when the source opens, naming the file and the fix."""
  _write_maps(tmp_path)
  path = am.shard_path(str(tmp_path), 2, SHARDS)
  if damage == "short":
    label._save_shard(path, np.zeros((3, SIZE, SIZE), np.uint8), np.array(["a", "b", "c"]))
  else:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
      f.write(data[:len(data) // 2] if damage == "truncated" else b"")
  with pytest.raises(am.ShardError, match=f"{path}.*re-run the label task with the same "
                     f"flags \\(--workdir={tmp_path}\\).*redoes missing and broken"):
    am.AttentionMapSource(str(tmp_path))


def test_refuses_a_missing_shard(tmp_path):
  _write_maps(tmp_path)
  os.remove(am.shard_path(str(tmp_path), 3, SHARDS))
  with pytest.raises(FileNotFoundError, match=r"incomplete: shards \[3\] missing.*rerun "
                     "the label task"):
    am.AttentionMapSource(str(tmp_path))
