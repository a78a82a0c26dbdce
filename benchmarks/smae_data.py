"""How fast the SMAE input pipeline makes batches (tokenise, window, nested masks, 80/10/10).

    python benchmarks/smae_data.py [--batch 512] [--length 512] [--batches 4] [--text FILE]

Builds long documents (~--doc-tokens tokens each, from --text lines, default
../shared/data/mlm_text/sentences.txt, else the demo sentences) and times, per batch of the paper's
shape, (a) tokenising the documents on the fly as a streamed source does, and (b) windowing and
masking. Prints both in ms per batch and rows/s. The pipeline runs on a background thread, so the
step waits on it only when (a) + (b) exceeds the step time; the training loop also logs that wait
as `data_wait_frac` in metrics.jsonl.
"""

import argparse
import os
import time

import numpy as np

from starbucks_jax import model_dirs
from starbucks_jax.data import corpus, masking
from starbucks_jax.data.sources import DEMO_DIR, read_rows


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=512)
  p.add_argument("--length", type=int, default=512)
  p.add_argument("--batches", type=int, default=4)
  p.add_argument("--doc-tokens", type=int, default=1000)
  p.add_argument("--text", default="../shared/data/mlm_text/sentences.txt")
  p.add_argument("--model", default="all-MiniLM-L6-v2",
                 help="its tokenizer (bert-base-uncased's vocabulary)")
  args = p.parse_args()
  tok = model_dirs.load_tokenizer(
      model_dirs.transformer_dir(model_dirs.resolve_model_dir(args.model)))
  if os.path.exists(args.text):
    lines = [r["text"] for r in read_rows(args.text, {"text": str})]
  else:
    lines = [
        r["anchor"]
        for r in read_rows(os.path.join(DEMO_DIR, "triplets_train.jsonl"), {"anchor": str})
    ]
  rng = np.random.default_rng(0)
  per_doc = max(1, args.doc_tokens // 20)
  n_docs = args.batch * args.batches
  docs = [" ".join(rng.choice(lines, per_doc)) for _ in range(n_docs)]
  masker = masking.Masker(tok, masking.MaskingConfig())
  b = corpus.TextBatcher("hf:benchmark", tok, masker, batch_size=args.batch, max_length=args.length,
                         seed=0,
                         streaming=True)  # a streamed source's path; nothing is read from the spec
  t_tok = t_mask = 0.0
  for i in range(args.batches):
    chunk = docs[i * args.batch:(i + 1) * args.batch]
    t0 = time.perf_counter()
    rows = b.stream_rows(chunk, i * args.batch)  # tokenise + window + [CLS]/[SEP]
    t1 = time.perf_counter()
    b.make_batch(i, rows)  # pad, nested whole-word masks, 80/10/10, gathered labels
    t2 = time.perf_counter()
    t_tok, t_mask = t_tok + t1 - t0, t_mask + t2 - t1
  mean_len = np.mean([len(t) for t in b._tokenize(docs[:64])])
  n = args.batches
  print(
      f"batch {args.batch} x {args.length} tokens, documents ~{mean_len:.0f} tokens, {n} batches, 1 thread"
  )
  print(
      f"tokenise+window: {1e3 * t_tok / n:.0f} ms/batch   mask: {1e3 * t_mask / n:.0f} ms/batch   "
      f"total: {1e3 * (t_tok + t_mask) / n:.0f} ms/batch = {args.batch * n / (t_tok + t_mask):.0f} rows/s"
  )


if __name__ == "__main__":
  main()
