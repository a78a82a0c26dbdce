"""Corpus encoding speed per size (early exit) and exact search speed (JAX vs FAISS flat).

    python benchmarks/retrieval.py [--model all-MiniLM-L6-v2] [--docs 512] [--length 256]
                                   [--corpus 100000] [--queries 1000] [--k 100]

Encoding: passages/s of the (n, d) sub-model for every n of the model's schedule, each run with
only n layers (Embedder.encode, layer=n), on --docs synthetic passages of --length tokens; and the
one-pass encoding of every layer at once (what the corpus index does). Search: queries/s of
`search.exact_topk` over a random --corpus x d matrix in blocks of 50,000, and of FAISS IndexFlatIP
when installed, for d = 16 and the model's width. Rescoring (a funnel's later stages): queries/s of
`search.rescore` of each query's top --shortlist candidates at the model's width, over a corpus of
5,000 (candidates overlap: one matmul per batch) and of --corpus (distinct: each query its own).
"""

import argparse
import time

import numpy as np

from starbucks_jax import embed
from starbucks_jax.evaluate import search
from starbucks_jax.schedule import STARBUCKS


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
  args = p.parse_args()
  embedder = embed.Embedder.load(args.model, batch_size=args.batch)
  pairs = STARBUCKS[args.schedule]
  rng = np.random.default_rng(0)
  words = list(embedder.tokenizer.get_vocab())[2000:12000]
  docs = [" ".join(rng.choice(words, args.length)) for _ in range(args.docs)]
  print(f"encoding {args.docs} passages of {args.length} tokens, batch {args.batch}:")
  for n, d in pairs:
    embedder.encode(docs[:args.batch], layer=n, dim=d, max_length=args.length)  # compile
    t0 = time.perf_counter()
    embedder.encode(docs, layer=n, dim=d, max_length=args.length)
    rate = args.docs / (time.perf_counter() - t0)
    print(f"  ({n},{d}): {rate:8.1f} passages/s")
  layers = tuple(n for n, _ in pairs)
  embedder.encode_layers(docs[:args.batch], layers, max_length=args.length)
  t0 = time.perf_counter()
  embedder.encode_layers(docs, layers, max_length=args.length)
  print(f"  every layer in one pass: {args.docs / (time.perf_counter() - t0):8.1f} passages/s")

  print(f"exact top-{args.k} search, {args.queries} queries over {args.corpus} documents:")
  for d in sorted({pairs[0][1], pairs[-1][1]}):
    corpus = rng.normal(size=(args.corpus, d)).astype(np.float32)
    queries = rng.normal(size=(args.queries, d)).astype(np.float32)
    blocks = lambda: ((s, corpus[s:s + 50_000]) for s in range(0, args.corpus, 50_000))  # noqa: E731
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
      print(f"  corpus {size}, shortlist {c}: {args.queries / (time.perf_counter() - t0):8.1f} queries/s")


if __name__ == "__main__":
  main()
