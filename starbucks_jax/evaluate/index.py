"""Encode a corpus once for every size of the schedule, into sharded files on disk.

One encoder pass per batch stops at the deepest layer of the pairs and keeps the pooled vector of
every layer the pairs use, truncated to the largest dim that layer is used at (docs/method.md,
"Evaluation": encode once, truncate at search time). Layout of an index directory:

    index.json               model, weights fingerprint, pooling, max_length, passage prompt,
                             {layer: dim kept}, shard size, count
    ids.json                 the document ids, in row order
    layer_<n>/<k>.npy        float32 [rows of shard k, dim kept for layer n]

A shard is written to a temporary name and renamed when complete, so an interrupted run resumes at
the first missing shard; an existing index built with other settings is an error, not a mix.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)
QUANTIZATIONS = ("int8", "binary")  # a funnel's first stage: search.parse_funnel's 'i8' / 'b'


def layer_dims(pairs) -> dict[int, int]:
  """{layer: the largest dim any pair uses it at}."""
  out: dict[int, int] = {}
  for n, d in pairs:
    out[int(n)] = max(out.get(int(n), 0), int(d))
  return dict(sorted(out.items()))


def fingerprint(params) -> str:
  """A short hash of the encoder weights (a strided sample of every array): an index belongs to them."""
  import hashlib

  import jax
  h = hashlib.sha1()
  for path, x in sorted(jax.tree_util.tree_flatten_with_path(params)[0], key=lambda t: str(t[0])):
    x = np.asarray(x, np.float32).ravel()
    h.update(str(path).encode() + x[::max(1, x.size // 4096)].tobytes())
  return h.hexdigest()[:16]


def _shard_path(folder: str, layer: int, k: int) -> str:
  return os.path.join(folder, f"layer_{layer}", f"{k:05d}.npy")


def encode_corpus(embedder, doc_ids: list[str], docs: list[str], pairs, folder: str, *,
                  max_length: int | None = None, pooling: str | None = None,
                  shard_size: int = 50_000) -> dict:
  """Write (or finish) the index of `docs` in `folder`; returns its metadata."""
  dims = layer_dims(pairs)
  meta = {
      "model": embedder.pretrained.path, "weights": fingerprint(embedder.pretrained.params["bert"]),
      "pooling": pooling or embedder.pretrained.sentence.pooling,
      "max_length": max_length or embedder.max_length, "prompt": embedder.prompt("document"),
      "layers": {str(k): v for k, v in dims.items()}, "shard_size": shard_size, "count": len(docs)
  }
  os.makedirs(folder, exist_ok=True)
  meta_path = os.path.join(folder, "index.json")
  if os.path.exists(meta_path):
    old = {"prompt": "", **json.load(open(meta_path))}  # an index from before prompts had none
    # the weights' fingerprint, not a path, names the model
    if {**old, "model": None} != {**meta, "model": None}:
      raise ValueError(
          f"{meta_path}: an index with other settings is there ({old}); use another folder")
  else:
    with open(os.path.join(folder, "ids.json"), "w") as f:
      json.dump(list(doc_ids), f)
    with open(meta_path, "w") as f:
      json.dump(meta, f, indent=1)
  shards = range(0, len(docs), shard_size)
  todo = [
      k for k, _ in enumerate(shards)
      if not all(os.path.exists(_shard_path(folder, n, k)) for n in dims)
  ]
  if len(todo) < len(shards):
    log.info("%s: %d of %d shards already encoded; resuming", folder,
             len(shards) - len(todo), len(shards))
  t0, encoded = time.time(), 0
  for k in tqdm(todo, desc=f"encode corpus ({len(docs)} docs)", disable=len(todo) < 2):
    texts = docs[k * shard_size:(k + 1) * shard_size]
    vecs = embedder.encode_layers(texts, tuple(dims), pooling=meta["pooling"],
                                  max_length=meta["max_length"], prompt=meta["prompt"])
    for n, d in dims.items():
      path = _shard_path(folder, n, k)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      np.save(path + ".tmp.npy", vecs[n][:, :d])
      os.replace(path + ".tmp.npy", path)
    encoded += len(texts)
  if encoded:
    elapsed = time.time() - t0
    log.info("encoded %d passages in %.1f s (%.1f passages/s, layers %s)", encoded, elapsed,
             encoded / max(elapsed, 1e-9), list(dims))
  return meta


def load_ids(folder: str) -> list[str]:
  return json.load(open(os.path.join(folder, "ids.json")))


def gather(folder: str, layer: int, dim: int, rows: np.ndarray) -> np.ndarray:
  """The (layer, dim) vectors of the index's rows `rows` (any shape, each >= 0) -> [*rows.shape, dim]
  float32, read from the memory-mapped shards (a funnel's rescoring stages: no re-encoding)."""
  meta = _meta(folder, layer, dim)
  rows = np.asarray(rows, np.int64)
  if rows.size and (rows.min() < 0 or rows.max() >= meta["count"]):
    raise IndexError(f"{folder}: rows outside 0..{meta['count'] - 1}")
  out = np.empty(rows.shape + (dim,), np.float32)
  shard_of, local = np.divmod(rows, meta["shard_size"])
  for k in np.unique(shard_of):
    block = np.load(_shard_path(folder, layer, int(k)), mmap_mode="r")
    here = shard_of == k
    out[here] = block[local[here], :dim]
  return out


def _meta(folder: str, layer: int, dim: int) -> dict:
  meta = json.load(open(os.path.join(folder, "index.json")))
  kept = meta["layers"].get(str(layer))
  if kept is None or dim > kept:
    raise ValueError(
        f"{folder}: no vectors for (layer {layer}, dim {dim}); the index keeps {meta['layers']}")
  return meta


def quantized_shards(folder: str, layer: int, dim: int, kind: str):
  """The (layer, dim) vectors as a quantized first stage searches them, shard by shard: (first row,
  [rows, dim] float32). 'int8': each dimension scaled by its largest |value| over the corpus / 127
  and rounded (dequantized here); 'binary': the signs (+1 where > 0, else -1). Stored once beside the
  float shards (layer_<n>/<kind>/<k>.npy at the layer's kept dim, int8's scale.npy; binary packed 8
  dims a byte), so any dim of the layer reads them."""
  meta = _meta(folder, layer, dim)
  if kind not in QUANTIZATIONS:
    raise ValueError(f"quantization {kind!r}; expected one of {QUANTIZATIONS}")
  count = -(-meta["count"] // meta["shard_size"])
  base = os.path.join(folder, f"layer_{layer}", kind)
  os.makedirs(base, exist_ok=True)
  scale = None
  if kind == "int8":
    scale_path = os.path.join(base, "scale.npy")
    if not os.path.exists(scale_path):
      peak = np.max([np.abs(np.load(_shard_path(folder, layer, k))).max(0) for k in range(count)],
                    0)
      _save(scale_path, (np.where(peak > 0, peak, 1.0) / 127).astype(np.float32))
    scale = np.load(scale_path)
  start = 0
  for k in range(count):
    path = os.path.join(base, f"{k}.npy")
    if not os.path.exists(path):
      x = np.load(_shard_path(folder, layer, k))
      _save(
          path,
          np.clip(np.rint(x / scale), -127, 127).astype(np.int8)
          if scale is not None else np.packbits(x > 0, axis=1))
    stored = np.load(path, mmap_mode="r")
    if scale is not None:
      block = stored[:, :dim].astype(np.float32) * scale[:dim]
    else:
      block = np.unpackbits(stored, axis=1, count=dim).astype(np.float32) * 2 - 1
    yield start, block
    start += len(stored)


def _save(path: str, array: np.ndarray) -> None:
  np.save(path + ".tmp.npy", array)
  os.replace(path + ".tmp.npy", path)


def shards(folder: str, layer: int, dim: int, mmap: bool = True):
  """The index's vectors of the (layer, dim) sub-model, shard by shard: (first row, [rows, dim])."""
  meta = _meta(folder, layer, dim)
  start = 0
  for k in range(-(-meta["count"] // meta["shard_size"])):
    block = np.load(_shard_path(folder, layer, k), mmap_mode="r" if mmap else None)
    yield start, block[:, :dim]
    start += block.shape[0]
