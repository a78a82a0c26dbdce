"""Corpus encoding speed per size (early exit) and exact search speed (JAX vs FAISS flat).

    python benchmarks/retrieval.py [--model all-MiniLM-L6-v2] [--docs 512] [--length 256]
                                   [--corpus 100000] [--queries 1000] [--k 100] [--encode-only] [--out FILE]

Encoding: passages/s of the (n, d) sub-model for every n of the model's schedule, each run with
only n layers (Embedder.encode, layer=n), on --docs synthetic passages of --length tokens; and the
one-pass encoding of every layer at once (what the corpus index does). Search: queries/s of
`search.exact_topk` over a random --corpus x d matrix in blocks of 50,000, and of FAISS IndexFlatIP
when installed, for d = 16 and the model's width. Rescoring (a funnel's later stages): queries/s of
`search.rescore` of each query's top --shortlist candidates at the model's width, over a corpus of
5,000 (candidates overlap: one matmul per batch) and of --corpus (distinct: each query its own).
`--encode-only` stops after the encoding rates; `--out` writes them as JSON.
"""

import argparse
import json
import time

import numpy as np

from starbucks_jax import embed
from starbucks_jax.evaluate import search
from starbucks_jax.schedule import STARBUCKS


def encoding_rates(embedder, pairs, docs: list[str], length: int, batch: int) -> dict:
  """Passages/s of each (n, d) of `pairs` running only its n layers (early exit), each after a
  compiling warm-up batch, and of encoding every schedule layer in one pass."""
  rates = []
  for n, d in pairs:
    embedder.encode(docs[:batch], layer=n, dim=d, max_length=length)  # compile
    t0 = time.perf_counter()
    embedder.encode(docs, layer=n, dim=d, max_length=length)
    rates.append({"layer": n, "dim": d, "passages_per_s": len(docs) / (time.perf_counter() - t0)})
  layers = tuple(n for n, _ in pairs)
  embedder.encode_layers(docs[:batch], layers, max_length=length)
  t0 = time.perf_counter()
  embedder.encode_layers(docs, layers, max_length=length)
  return {
      "docs": len(docs), "length": length, "batch": batch, "rates": rates,
      "all_layers_passages_per_s": len(docs) / (time.perf_counter() - t0)
  }


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--model", default="all-MiniLM-L6-v2")
  p.add_argument("--schedule", default="minilm-l6-h384")
  p.add_argument("--docs", type=int, default=512)
  p.add_argument("--length", type=int, default=256)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--corpus", type=int, default=100_000)
  p.add_argument("--queries", type=int, default=1000)
  p.add_argument("--k", type=int, default=100)
  p.add_argument("--shortlist", type=int, nargs="+", default=[100, 1000])
  p.add_argument("--encode-only", action="store_true", help="stop after the encoding rates")
  p.add_argument("--out", help="write the encoding rates to this JSON file")
  args = p.parse_args()
  embedder = embed.Embedder.load(args.model, batch_size=args.batch)
  pairs = STARBUCKS[args.schedule]
  rng = np.random.default_rng(0)
  words = list(embedder.tokenizer.get_vocab())[2000:12000]
  docs = [" ".join(rng.choice(words, args.length)) for _ in range(args.docs)]
  print(f"encoding {args.docs} passages of {args.length} tokens, batch {args.batch}:")
  rates = encoding_rates(embedder, pairs, docs, args.length, args.batch)
  for r in rates["rates"]:
    print(f"  ({r['layer']},{r['dim']}): {r['passages_per_s']:8.1f} passages/s")
  print(f"  every layer in one pass: {rates['all_layers_passages_per_s']:8.1f} passages/s")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"model": args.model, "schedule": args.schedule, **rates}, f, indent=1)
  if args.encode_only:
    return

  print(f"exact top-{args.k} search, {args.queries} queries over {args.corpus} documents:")
  for d in sorted({pairs[0][1], pairs[-1][1]}):
    corpus = rng.normal(size=(args.corpus, d)).astype(np.float32)
    queries = rng.normal(size=(args.queries, d)).astype(np.float32)
    blocks = lambda: ((s, corpus[s:s + 50_000]) for s in range(0, args.corpus, 50_000))
    search.exact_topk(queries[:8], blocks(), args.k)  # compile
    t0 = time.perf_counter()
    _, rows = search.exact_topk(queries, blocks(), args.k)
    line = f"  d={d}: JAX {args.queries / (time.perf_counter() - t0):8.1f} queries/s"
    try:
      t0 = time.perf_counter()
      _, f_rows = search.faiss_topk(queries, corpus, args.k)
      line += (f"   FAISS flat {args.queries / (time.perf_counter() - t0):8.1f} queries/s"
               f"   same top-{args.k}: {np.mean(np.sort(rows, 1) == np.sort(f_rows, 1)):.4f}")
    except ImportError:
      line += "   (FAISS not installed)"
    print(line)

  d = pairs[-1][1]
  print(f"rescoring each query's shortlist at d={d} (top 10 kept), {args.queries} queries:")
  for size in (5_000, args.corpus):
    corpus = rng.normal(size=(size, d)).astype(np.float32)
    queries = rng.normal(size=(args.queries, d)).astype(np.float32)
    for c in args.shortlist:
      shortlist = rng.integers(0, size, (args.queries, c))
      search.rescore(queries, corpus.__getitem__, shortlist, 10)  # compile
      t0 = time.perf_counter()
      search.rescore(queries, corpus.__getitem__, shortlist, 10)
      print(
          f"  corpus {size}, shortlist {c}: {args.queries / (time.perf_counter() - t0):8.1f} queries/s"
      )


if __name__ == "__main__":
  main()
