"""Export a model, or one (layer, dim) sub-model of it, as an HF + sentence-transformers directory.

    python -m starbucks_jax.export --model SRC --output DIR [--layer N --dim D]

SRC is an HF / sentence-transformers directory (or Hub id) or a project workdir (its latest
checkpoint, or --step). With --layer/--dim the result is a standalone model of N layers whose
sentence-transformers pipeline keeps the first D dimensions; `transformers.AutoModel` and
`sentence_transformers.SentenceTransformer` load it offline.
"""

from __future__ import annotations

import argparse
import logging

from starbucks_jax import checkpoint
from starbucks_jax.models import hf
from starbucks_jax.models.pooling import POOLINGS
from starbucks_jax.schedule import check_pair


def export(source: str, output: str, *, layer: int | None = None, dim: int | None = None,
           step: int | None = None, pooling: str | None = None, normalize: bool | None = None,
           with_mlm_head: bool = False) -> str:
  model = checkpoint.load_model(source, step=step)
  cfg, s = model.config, model.sentence
  layer = cfg.num_hidden_layers if layer is None else layer
  dim = cfg.hidden_size if dim is None else dim
  check_pair(layer, dim, cfg.num_hidden_layers, cfg.hidden_size, where=f"exporting {source}: ")
  sentence = hf.SentenceSettings(pooling=pooling or s.pooling,
                                 normalize=s.normalize if normalize is None else normalize,
                                 max_seq_length=s.max_seq_length)
  params = dict(model.params)
  if not with_mlm_head:
    params.pop("mlm_head", None)
  elif "mlm_head" not in params:
    raise ValueError(f"{source} has no MLM head to export (--with-mlm-head)")
  return hf.save_pretrained(output, cfg, params, model.tokenizer, sentence=sentence, layer=layer,
                            dim=dim, extra_meta={"source": str(source), "step": step})


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(prog="python -m starbucks_jax.export", description=__doc__.split("\n")[0])
  p.add_argument("--model", required=True, help="HF / sentence-transformers dir, Hub id, or workdir")
  p.add_argument("--output", required=True, help="directory to write")
  p.add_argument("--layer", type=int, help="keep the first N layers (default: all)")
  p.add_argument("--dim", type=int, help="keep the first D dimensions (default: all)")
  p.add_argument("--step", type=int, help="checkpoint step of a workdir (default: latest)")
  p.add_argument("--pooling", choices=POOLINGS, help="default: the source's")
  p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None)
  p.add_argument("--with-mlm-head", action="store_true", help="write BertForMaskedLM (SMAE runs)")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  out = export(args.model, args.output, layer=args.layer, dim=args.dim, step=args.step,
               pooling=args.pooling, normalize=args.normalize, with_mlm_head=args.with_mlm_head)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
