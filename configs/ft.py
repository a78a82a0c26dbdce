"""SRL fine-tuning (METHOD.md, "SRL fine-tuning"): one model, every (layer, dim) of the schedule good.

    python -m starbucks_jax.main --config=configs/ft.py:VARIANT[,key=value] --workdir=DIR \
        [--config.a.b=value ...]

Variants:
  demo  all-MiniLM-L6-v2 (installed by the README's set-up) evaluated per pair on the STS data
        that ships in the package; offline, about a minute on 2 CPU cores. Expected table: the
        (6, 384) pair best, small pairs far worse (no SRL training yet).
  eval  evaluate `model.init_from` (an HF dir, Hub id, or a workdir) on `eval.sts`, no training.

Every run validates the whole config (including the schedule against the backbone's config.json)
before it touches a weight, and writes WORKDIR/config.json and WORKDIR/results/<name>.json.
"""

import ml_collections

from starbucks_jax import config_lib
from starbucks_jax.schedule import STARBUCKS


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, demo=False, eval=False)
  c = ml_collections.ConfigDict()
  c.mode = "eval"  # 'train': fine-tune, then evaluate; 'eval': evaluate model.init_from only
  c.seed = 0  # seeds init, dropout and data order

  c.model = ml_collections.ConfigDict()
  c.model.init_from = "bert-base-uncased"  # HF dir, Hub id, 'all-MiniLM-L6-v2', or a workdir
  c.model.pooling = "mean"  # 'mean' | 'cls'
  c.model.max_length = 0  # tokens per text incl. [CLS]/[SEP]; 0 = the model's max_seq_length
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 | float16
  c.model.param_dtype = "float32"  # parameter storage dtype
  c.model.remat = False  # recompute each layer in the backward pass

  c.schedule = ml_collections.ConfigDict()
  c.schedule.pairs = STARBUCKS["bert-base"]  # (layer, dim) pairs, small to large

  c.eval = ml_collections.ConfigDict()
  c.eval.sts = "demo/test=demo:sts_test.jsonl"  # DATASET/SPLIT=SOURCE, comma-separated
  c.eval.grid = False  # also evaluate every layer x every dim of the schedule
  c.eval.batch_size = 64  # texts per encoding batch

  if arg.demo:
    c.model.init_from = "all-MiniLM-L6-v2"
    c.schedule.pairs = STARBUCKS["minilm-l6-h384"]
  if arg.eval:
    c.mode = "eval"
  return c
