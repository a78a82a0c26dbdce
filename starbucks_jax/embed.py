"""Sentence embeddings from any (layer, dim) sub-model of an HF directory or a project workdir.

    from starbucks_jax.embed import Embedder
    model = Embedder.load("all-MiniLM-L6-v2")          # or an HF dir, or a training workdir
    vecs = model.encode(texts, layer=2, dim=32)         # runs only 2 layers; numpy [len(texts), 32]

Command line (one text per line in, a .npy matrix out):

    python -m starbucks_jax.embed --model DIR --layer N --dim D --pooling mean \\
        --input texts.txt --output vecs.npy [--normalize] [--prompt-name query | --prompt 'query: ']

Texts are sorted by length and padded to a few bucket lengths, so jit compiles a handful of
programs; with `pack=True` they share rows instead (each text attending only to itself), one
program and few padded tokens. Texts longer than the model's maximum length are truncated (reported
once per Embedder). An empty list gives an empty [0, dim] array.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from starbucks_jax import checkpoint, cli, model_dirs
from starbucks_jax import workdir as workdir_lib
from starbucks_jax.config_lib import InputError
from starbucks_jax.data.packing import fill_rows, pack_in_order
from starbucks_jax.data.tokenize import bucket_length, pad_batch, tokenize
from starbucks_jax.models import hf
from starbucks_jax.models.pooling import POOLINGS, pooled_layers, pooled_layers_packed
from starbucks_jax.schedule import check_pair

log = logging.getLogger(__name__)
PROGRESS_MIN_BATCHES = 20  # show a progress bar from this many batches on (None: auto)


@functools.partial(jax.jit, static_argnames=("config", "layers", "pooling"))
def pool_layers(params, ids, mask, *, config, layers, pooling):
  """Pooled [len(layers), B, D] from one forward pass that stops at the deepest layer asked for."""
  pooled = pooled_layers(params, config, ids, mask, layers, pooling)
  return jnp.stack([pooled[n] for n in layers])


@functools.partial(jax.jit, static_argnames=("config", "layers", "pooling", "texts"))
def pool_packed_layers(params, ids, segments, positions, *, config, layers, pooling, texts):
  """`pool_layers` for packed rows holding up to `texts` texts -> [len(layers), texts, D]."""
  pooled = pooled_layers_packed(params, config, ids, segments, positions, layers, pooling, texts)
  return jnp.stack([pooled[n][0] for n in layers])


# pack=True: at most this many texts per row on average (bounds the pooling matmul)
PACKED_TEXTS_PER_ROW = 4


class Embedder:
  """Encodes texts with a loaded model; defaults come from the model's sentence settings. `pack`:
  texts share rows of `batch_size` x (longest text) tokens instead of one padded row each."""
  def __init__(self, pretrained: model_dirs.Pretrained, batch_size: int = 64, pack: bool = False):
    self.pretrained = pretrained
    self.config = pretrained.config
    self.params = jax.device_put(pretrained.params["bert"])
    self.tokenizer = pretrained.tokenizer
    self.batch_size = batch_size
    self.pack = pack
    self._warned_truncation = False

  @classmethod
  def load(cls, source: str, *, batch_size: int = 64, dtype: str = "float32",
           pack: bool = False) -> "Embedder":
    return cls(checkpoint.load_model(source, dtype=dtype), batch_size=batch_size, pack=pack)

  @property
  def max_length(self) -> int:
    return min(self.pretrained.sentence.max_seq_length, self.config.max_tokens)

  def _defaults(self, layer, dim, pooling, normalize):
    s = self.pretrained.sentence
    first = lambda *xs: next(int(x) for x in xs if x is not None)
    layer = first(layer, s.layer, self.config.num_hidden_layers)
    dim = first(dim, s.dim, self.config.hidden_size)
    pooling = pooling or s.pooling
    normalize = s.normalize if normalize is None else bool(normalize)
    check_pair(layer, dim, self.config.num_hidden_layers, self.config.hidden_size)
    if pooling not in POOLINGS:
      raise ValueError(f"pooling={pooling!r}; expected one of {POOLINGS}")
    return layer, dim, pooling, normalize

  def prompt(self, role: str) -> str:
    """The model's prompt for 'query' or 'document' texts ('' if none): SentenceSettings.prompt."""
    return self.pretrained.sentence.prompt(role)

  def encode(self, texts: list[str], *, layer: int | None = None, dim: int | None = None,
             pooling: str | None = None, normalize: bool | None = None,
             batch_size: int | None = None, max_length: int | None = None,
             show_progress: bool | None = None, prompt_name: str | None = None,
             prompt: str | None = None) -> np.ndarray:
    """[len(texts), dim] float32 embeddings of the (layer, dim) sub-model (only `layer` layers run).
    `prompt_name` (one of the model's named prompts) or `prompt` goes before each text, as in
    sentence-transformers' encode."""
    layer, dim, pooling, normalize = self._defaults(layer, dim, pooling, normalize)
    if prompt_name is not None:
      prompts = self.pretrained.sentence.prompts
      if prompt is not None or prompt_name not in prompts:
        raise InputError(f"prompt_name={prompt_name!r}: " +
                         ("pass prompt_name or prompt, not both" if prompt is not None else
                          f"the model's prompts are {sorted(prompts) or 'none'}"))
      prompt = prompts[prompt_name]
    vecs = self.encode_layers(texts, (layer,), pooling=pooling, batch_size=batch_size,
                              max_length=max_length, show_progress=show_progress, prompt=prompt or
                              "")[layer][:, :dim]
    if normalize:
      vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    return vecs

  def encode_layers(self, texts: list[str], layers: tuple[int, ...], *, pooling: str | None = None,
                    batch_size: int | None = None, max_length: int | None = None,
                    show_progress: bool | None = None, prompt: str = "") -> dict[int, np.ndarray]:
    """{layer: [len(texts), hidden] pooled, unnormalised} for several layers from ONE pass per batch
    (the encoder stops at the deepest layer asked for). Any (layer, dim) is `out[layer][:, :dim]`.
    `prompt` goes before each text (its tokens count toward max_length and the pooling)."""
    layers = tuple(sorted({int(x) for x in layers}))
    for layer in layers:
      check_pair(layer, 1, self.config.num_hidden_layers, self.config.hidden_size)
    pooling = self._defaults(None, None, pooling, None)[2]
    if isinstance(texts, str):
      raise TypeError("encode() takes a list of texts, not a single string")
    texts = list(texts)
    for i, t in enumerate(texts):
      if not isinstance(t, str):
        raise TypeError(f"texts[{i}] is {type(t).__name__}, not str")
    if prompt:
      texts = [prompt + t for t in texts]
    out = {layer: np.zeros((len(texts), self.config.hidden_size), np.float32) for layer in layers}
    if not texts:
      return out
    max_length = min(max_length or self.max_length, self.config.max_tokens)
    batch_size = self.batch_size if batch_size is None else batch_size
    if batch_size < 1:
      raise InputError(f"batch_size={batch_size}: must be >= 1")
    ids, truncated = tokenize(self.tokenizer, texts, max_length)
    if truncated and not self._warned_truncation:
      log.warning(
          "%d of %d texts are longer than max_length=%d tokens and were truncated "
          "(reported once)", truncated, len(texts), max_length)
      self._warned_truncation = True
    order = np.argsort([-len(x) for x in ids], kind="stable")
    if self.pack:
      return self._encode_packed(ids, order, out, layers, pooling, batch_size)
    starts = range(0, len(texts), batch_size)
    progress = len(starts) >= PROGRESS_MIN_BATCHES if show_progress is None else show_progress
    desc = f"encode layers {','.join(map(str, layers))}"
    for start in tqdm(starts, desc=desc, disable=not progress, file=sys.stderr, mininterval=2.0):
      rows = order[start:start + batch_size]
      seqs = [ids[i] for i in rows]
      length = bucket_length(max(len(x) for x in seqs), max_length)
      batch_ids, mask = pad_batch(seqs, length, batch_size, self.tokenizer.pad_token_id)
      pooled = np.asarray(
          pool_layers(self.params, batch_ids, mask, config=self.config, layers=layers,
                      pooling=pooling))
      for j, layer in enumerate(layers):
        out[layer][rows] = pooled[j, :len(rows)]
    return out

  def _encode_packed(self, ids, order, out, layers, pooling, rows: int) -> dict[int, np.ndarray]:
    """Texts longest first into batches of `rows` packed rows as long as the longest text: one shape."""
    lengths = np.array([len(ids[i]) for i in order])
    L = min(-(-int(lengths[0]) // 8) * 8, self.config.max_tokens)
    cap = PACKED_TEXTS_PER_ROW * rows
    flat = np.fromiter((t for i in order for t in ids[i]), np.int32, int(lengths.sum()))
    starts = np.cumsum(lengths) - lengths
    for chosen, row, offset in pack_in_order(lengths, L, rows, cap):
      batch = fill_rows(flat, starts[chosen], lengths[chosen], row * L + offset,
                        np.arange(len(chosen)), rows * L, self.tokenizer.pad_token_id)
      pooled = np.asarray(
          pool_packed_layers(self.params,
                             *(batch[k].reshape(rows, L) for k in ("ids", "segments", "positions")),
                             config=self.config, layers=layers, pooling=pooling, texts=cap))
      for j, layer in enumerate(layers):
        out[layer][order[chosen]] = pooled[j, :len(chosen)]
    return out


def read_lines(path: str, skip_empty: bool = False) -> list[str]:
  """One text per line; a blank line is an error naming it (a row of the output would be a vector of
  nothing), or with `skip_empty` left out and counted."""
  try:
    with open(path, encoding="utf8") as f:
      lines = [line.rstrip("\n").rstrip("\r") for line in f]
  except FileNotFoundError:
    raise FileNotFoundError(f"--input {path}: no such file") from None
  except UnicodeDecodeError as e:
    raise InputError(f"--input {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
  blank = [i + 1 for i, t in enumerate(lines) if not t.strip()]
  if blank and not skip_empty:
    raise InputError(
        f"--input {path}:{blank[0]}: blank line ({len(blank)} in all); remove them or pass "
        "--skip-empty")
  if blank:
    print(
        f"skipped {len(blank)} blank line(s) of {path}; the output has one row per non-blank line",
        file=sys.stderr)
  texts = [t for t in lines if t.strip()]
  if not texts:
    raise InputError(f"--input {path}: no texts (one text per line expected)")
  return texts


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(prog="python -m starbucks_jax.embed",
                              description=__doc__.split("\n")[0])
  p.add_argument("--model", required=True,
                 help="HF / sentence-transformers dir, Hub id, or workdir")
  p.add_argument("--layer", type=int, help="run this many layers (default: the model's)")
  p.add_argument("--dim", type=int, help="keep this many dimensions (default: the model's)")
  p.add_argument("--pooling", choices=POOLINGS,
                 help="default: the model's pooling config, else mean")
  p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                 help="L2-normalise the vectors (default: as the model says)")
  p.add_argument("--input", required=True, help="text file, one text per line")
  p.add_argument("--output", required=True, help="where to write the .npy matrix")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--max-length", type=int, help="tokens per text (default: the model's)")
  p.add_argument("--skip-empty", action="store_true",
                 help="leave out blank lines (counted) instead of failing")
  prompts = p.add_mutually_exclusive_group()
  prompts.add_argument(
      "--prompt-name",
      help="one of the model's named prompts (e.g. query, document) before each text")
  prompts.add_argument("--prompt", help="this text before each text (e.g. 'query: ')")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  if args.batch_size < 1:
    raise InputError(f"--batch-size={args.batch_size}: must be >= 1")
  if args.max_length is not None and args.max_length < 3:
    raise InputError(f"--max-length={args.max_length}: must be >= 3 ([CLS], a token, [SEP])")
  cli.check_output_file(args.output, "--output")
  texts = read_lines(args.input, args.skip_empty)
  model = Embedder.load(args.model, batch_size=args.batch_size)
  vecs = model.encode(texts, layer=args.layer, dim=args.dim, pooling=args.pooling,
                      normalize=args.normalize, max_length=args.max_length,
                      prompt_name=args.prompt_name, prompt=args.prompt)
  bad = int((~np.isfinite(vecs).all(axis=1)).sum())
  if bad:
    raise hf.ModelError(
        f"--model {args.model}: {bad} of {len(vecs)} embeddings are not finite (NaN or "
        "infinite); the model's weights or dtype are broken")
  out = args.output if args.output.endswith(".npy") else args.output + ".npy"  # as np.save names it
  # numpy writes a real file with tofile(), whose short write has no errno; through .write() it has
  workdir_lib.write_atomically(out, lambda f: np.save(types.SimpleNamespace(write=f.write), vecs))
  print(f"wrote {out}: {vecs.shape[0]} x {vecs.shape[1]} float32")


if __name__ == "__main__":
  cli.run(main)
