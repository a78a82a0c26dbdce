"""Our jitted SRL train step vs the authors' PyTorch formulation, side by side in one run.

    python benchmarks/vs_pytorch.py [--model all-MiniLM-L6-v2 | DIR | random:bert-base] [--batch 16] [--length 32] \
        [--steps 10] [--rounds 2] [--dtype float32|bfloat16] [--attention standard] [--forward-splits 1] \
        [--peak-tflops 989] [--out results.json]

The PyTorch side is written from docs/method.md's equations the way the authors' sentence-transformers
code computes them: a SentenceTransformer model, one forward per text role with every hidden
state, mean pooling of each layer of the schedule, per pair MNRL on cosine x 20 of the first d
features plus the feature KL (x0.3, teacher not detached) to the full pair, summed over pairs;
AdamW (torch.optim), global-norm clipping 1.0. Our side is `srl.make_srl_step` with the same
loss config (configs/ft.py defaults), one encoder forward for every role and pair, or with
`--forward-splits K` (train.forward_splits) K independent forwards over strided splits of the texts.

Before timing, both losses are computed on the same weights and batch with dropout off and their
relative difference is printed (they must agree: the same objective). Then each side times its
training steps (dropout on) in a process of its own, the SRL and the full-only step (the (N, D) task
loss alone, for the SRL/full ratio) alternately; `--rounds` such pairs of processes (ours, then
PyTorch) run in turn, so drifting background load hits both; the medians give examples/s. Separate
processes because two runtimes' thread pools in one process slow each other on a CPU
(experiments/bench_vs_pytorch.md, session 5). Both sides also get the achieved model
FLOP/s (BertConfig.matmul_flops: the encoder's matmuls, forward and backward) and, given the
device's peak (`--peak-tflops`, e.g. 989 for an H100 SXM in bf16), the MFU. On a GPU machine both
sides run on the GPU (torch on CUDA, jax on its default device); `--dtype bfloat16` times both in
bf16 compute with float32 weights and optimizer (torch autocast; our model.dtype), the objective
check staying in float32. `--attention` picks our step's attention core (model.attention: 'cudnn'
on an NVIDIA GPU, in bf16); the objective check uses the standard one.

`--model random:bert-base` (or `random:minilm-l6-h384`) times a randomly initialised model of that
shape (HF's init, a placeholder vocabulary laid out as bert-base-uncased's), written as a
sentence-transformers directory that both sides load: step time does not depend on the weights, so
BERT-base can be timed on a machine with no network and no room to copy its checkpoint. `--out`
writes the results (machine, settings, examples/s, FLOP/s, MFU) as JSON.
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from starbucks_jax import checkpoint, losses, model_dirs, schedule, srl
from starbucks_jax import step as step_lib
from starbucks_jax.config_lib import load_config
from starbucks_jax.models import attention, bert, encoders

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("starbucks", "full")  # the SRL step and the full-only step
SCHEDULES = {(12, 768): "bert-base", (6, 384): "minilm-l6-h384"}  # (layers, dims) -> STARBUCKS key
RANDOM = "random:"
# named in the machine line, when present
VECTOR_ISA = ("avx512_bf16", "avx512f", "amx_bf16", "avx2", "asimd", "sve")


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The CPU's model and its vector extensions of VECTOR_ISA (Linux's cpuinfo; elsewhere platform's
  name): CPU results differ with them, e.g. PyTorch's oneDNN runs bf16 products on avx512_bf16."""
  try:
    with open(cpuinfo, encoding="utf8") as f:
      info = f.read()
  except OSError:
    return platform.processor() or platform.machine()
  name = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
  flags = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", info, re.M)
  flags = set(flags.group(1).split()) if flags else set()
  return ", ".join([name.group(1).strip() if name else platform.machine()] +
                   [f for f in VECTOR_ISA if f in flags])


def git_commit() -> str | None:
  """This checkout's commit (with '+changes' when the tree differs from it), or None outside git."""
  try:
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None
  return head + ("+changes" if dirty else "")


def starbucks_pairs(num_layers: int, hidden_size: int, model: str) -> tuple[tuple[int, int], ...]:
  """The Starbucks schedule of a benchmarked shape; any other shape fails naming `--model`."""
  if (num_layers, hidden_size) not in SCHEDULES:
    raise ValueError(
        f"--model {model}: no Starbucks schedule for {num_layers} layers x {hidden_size} dims here "
        f"(benchmarked shapes: those of {', '.join(RANDOM + name for name in SCHEDULES.values())})")
  return schedule.STARBUCKS[SCHEDULES[(num_layers, hidden_size)]]


def random_model_dir(preset: str, out_dir: str, seed: int = 0) -> str:
  """Write a randomly initialised `preset` (BertConfig.preset; HF's init) as a sentence-transformers
  directory with a placeholder WordPiece vocabulary of the preset's size (words w<id>), its specials where
  bert-base-uncased has them ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103)."""
  from transformers import BertTokenizerFast

  config = bert.BertConfig.preset(preset)
  starbucks_pairs(config.num_hidden_layers, config.hidden_size, RANDOM + preset)  # before the init
  specials = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
  # "w1234": one token per word
  vocab = {specials.get(i, f"w{i}"): i for i in range(config.vocab_size)}
  tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True,
                                model_max_length=config.max_position_embeddings)
  params = jax.device_get(encoders.init_params(config, jax.random.key(seed)))
  return model_dirs.save_pretrained(
      out_dir, config, {"bert": params}, tokenizer,
      sentence=model_dirs.SentenceSettings(max_seq_length=config.max_position_embeddings))


def torch_side(model_dir, pairs, full, lr, clip, dtype="float32"):
  """(model, loss_fn(batch) -> scalar tensor, step(batch, method) -> float) of the PyTorch
  formulation, on CUDA when torch sees a GPU; `dtype` bfloat16 runs the step under autocast
  (float32 weights and optimizer, as ours)."""
  import contextlib

  import torch
  from sentence_transformers import SentenceTransformer

  device = "cuda" if torch.cuda.is_available() else "cpu"
  model = SentenceTransformer(model_dir, device=device)
  bert = model[0].auto_model
  opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, eps=1e-8)

  def loss_fn(batch, method="starbucks"):
    ids = torch.as_tensor(batch["ids"], dtype=torch.long, device=device)
    mask = torch.as_tensor(batch["mask"], device=device)
    # anchor, positive
    roles = [torch_pooled(bert, ids[r], mask[r], pairs) for r in range(ids.shape[0])]
    return torch_srl_loss(roles, pairs if method == "starbucks" else (full,), full)

  def step(batch, method):
    model.train()
    opt.zero_grad()
    with (torch.autocast(device, dtype=torch.bfloat16)
          if dtype == "bfloat16" else contextlib.nullcontext()):
      loss = loss_fn(batch, method)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return float(loss.detach())  # waits for the device

  return model, loss_fn, step


def torch_pooled(bert, ids, mask, pairs):
  """{layer: mean-pooled [B, D]} of the schedule's layers from one forward of one role's texts."""
  hs = bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
  m = mask.unsqueeze(-1).float()
  return {n: (hs[n] * m).sum(1) / m.sum(1).clamp(min=1e-9) for n in {n for n, _ in pairs}}


def torch_srl_loss(roles, pairs, full, task="contrastive", scores=None):
  """The authors' SRL loss in PyTorch from each role's {layer: mean-pooled [B, D]}: per (n, d) the task
  loss on the first d features (MNRL: anchor against every positive and negative, cosine x 20;
  CoSENT on the two roles' cosines x 20) plus 0.3 x KL from the full layer's first d features to
  layer n's (every input, teacher not detached), summed; the full pair has no KL term."""
  import torch
  import torch.nn.functional as F

  total = 0.0
  for n, d in pairs:
    if task == "cosent":
      pred = F.cosine_similarity(roles[0][n][:, :d], roles[1][n][:, :d], dim=-1) * 20.0
      diff = pred[:, None] - pred[None, :]
      diff = diff[scores[:, None] < scores[None, :]]
      total = total + torch.logsumexp(
          torch.cat([torch.zeros(1, dtype=diff.dtype, device=diff.device), diff]), 0)
    else:
      a = F.normalize(roles[0][n][:, :d], dim=-1)
      cands = F.normalize(torch.cat([r[n][:, :d] for r in roles[1:]]), dim=-1)
      labels = torch.arange(a.shape[0], device=a.device)
      total = total + F.cross_entropy(a @ cands.T * 20.0, labels)
    if (n, d) != tuple(full):
      teacher = torch.cat([r[full[0]][:, :d] for r in roles])  # every input, not detached
      student = torch.cat([r[n][:, :d] for r in roles])
      total = total + 0.3 * F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1),
                                     log_target=True, reduction="batchmean")
  return total


def _times(step, steps: int) -> dict[str, list[float]]:
  """Seconds of each timed call of step(method, i) (after a warm-up), SRL and full-only alternated."""
  for m in METHODS:
    step(m, 0)
  times = {m: [] for m in METHODS}
  for i in range(steps):
    for m in METHODS:
      t = time.perf_counter()
      step(m, i + 1)
      times[m].append(time.perf_counter() - t)
  return times


def worker(side: str, args, setup) -> None:
  """Time one side's steps in this process; print {method: [seconds]} as the last line."""
  pre, model_dir, pairs, ft, tx, loss_cfg, batch = setup
  cfg = pre.config.replace(dtype=args.dtype,
                           attention=args.attention if side == "jax" else "standard")
  N, D = cfg.num_hidden_layers, cfg.hidden_size
  if side == "torch":
    _, _, torch_step = torch_side(model_dir, pairs, (N, D), ft.train.lr, ft.train.clip_grad_norm,
                                  args.dtype)
    times = _times(lambda m, i: torch_step(batch, m), args.steps)
  else:
    jitted, states = {}, {}
    for m in METHODS:
      jitted[m], states[m], jbatch = jax_step(cfg, setup, m, args.forward_splits)

    def step(m, i):
      states[m], metrics = jitted[m](states[m], jbatch, jax.random.key(i))
      jax.block_until_ready(metrics)

    times = _times(step, args.steps)
  print(json.dumps(times))


def jax_step(cfg, setup, method: str, forward_splits: int = 1):
  """(jitted update(state, batch, key), its initial TrainState, the batch on the device): our
  step for `method` (starbucks: SRL over the schedule; full: the (N, D) task loss alone), the
  state donated."""
  pre, _, pairs, _, tx, loss_cfg, batch = setup
  N, D = cfg.num_hidden_layers, cfg.hidden_size
  params = pre.params["bert"]
  update = jax.jit(
      srl.make_srl_step(cfg, schedule.plan(method, pairs, N, D), loss_cfg, tx, "mean",
                        forward_splits=forward_splits).update, donate_argnums=(0,))
  state = step_lib.TrainState(jnp.zeros((), jnp.int32), jax.tree_util.tree_map(jnp.array, params),
                              tx.init(params))
  return update, state, {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}


def _setup(args):
  """What both sides and the check share: model, schedule, optimizer config, loss config, batch."""
  pre = checkpoint.load_model(args.model)
  model_dir = model_dirs.resolve_model_dir(args.model)  # the sentence-transformers directory
  N, D = pre.config.num_hidden_layers, pre.config.hidden_size
  pairs = starbucks_pairs(N, D, args.model)
  ft = load_config(os.path.join(REPO, "configs", "ft.py") + ":demo")
  tx = step_lib.make_optimizer(ft.train, 1000)
  # MNRL cosine x20, feature KL x0.3, sum: configs/ft.py's nli recipe
  loss_cfg = losses.LossConfig()
  rng = np.random.default_rng(0)
  batch = {
      "ids": rng.integers(1000, 20000, (2, args.batch, args.length)).astype(np.int64),
      "mask": np.ones((2, args.batch, args.length), np.int64)
  }
  batch["ids"][:, :, 0], batch["ids"][:, :, -1] = 101, 102
  return pre, model_dir, pairs, ft, tx, loss_cfg, batch


def main():
  p = argparse.ArgumentParser()
  p.add_argument(
      "--model", default="all-MiniLM-L6-v2",
      help=f"a model directory or name (model_dirs.resolve_model_dir), or {RANDOM}PRESET: a random-init "
      "BertConfig preset (bert-base, minilm-l6-h384)")
  p.add_argument("--batch", type=int, default=16, help="(anchor, positive) pairs per step")
  p.add_argument("--length", type=int, default=32, help="tokens per text")
  p.add_argument("--steps", type=int, default=10, help="timed steps per method, side and round")
  p.add_argument("--rounds", type=int, default=2, help="timing processes per side, alternated")
  p.add_argument("--peak-tflops", type=float, default=0.0,
                 help="the device's peak, for MFU (0: not printed)")
  p.add_argument(
      "--forward-splits", type=int, default=1,
      help="our step's train.forward_splits: its texts as this many independent encoder forwards")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="compute dtype of the timed steps (params and optimizer stay float32)")
  p.add_argument("--attention", default="standard", choices=attention.ATTENTIONS,
                 help="our step's attention core (model.attention; 'cudnn': NVIDIA GPUs, bfloat16)")
  p.add_argument("--out", help="write the results to this JSON file")
  # one side's timing process
  p.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
    p.error(f"--out {args.out}: its directory does not exist")
  if args.forward_splits < 1 or args.batch % args.forward_splits:
    p.error(f"--forward-splits {args.forward_splits} must be >= 1 and divide --batch {args.batch}")
  if args.attention == "cudnn" and args.dtype != "bfloat16":
    p.error("--attention cudnn computes in half precision: add --dtype bfloat16")
  if not args.worker:  # the parent only checks the objective: leave the accelerator to the workers
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  model_label = args.model
  if args.model.startswith(RANDOM):  # written once here; the workers load the directory
    args.model = random_model_dir(args.model[len(RANDOM):],
                                  tempfile.mkdtemp(prefix="vs_pytorch_model_"))
  setup = _setup(args)
  if args.worker:
    return worker(args.worker, args, setup)
  import torch

  pre, model_dir, pairs, ft, tx, loss_cfg, batch = setup
  cfg = pre.config.replace(dtype="float32")  # the same-objective check runs in float32
  N, D = cfg.num_hidden_layers, cfg.hidden_size
  torch_device = torch.cuda.get_device_name() if torch.cuda.is_available(
  ) else f"CPU, {torch.get_num_threads()} threads"
  machine = (
      f"{os.cpu_count()} CPU cores ({cpu_description()}); torch {torch.__version__} on {torch_device}; "
      f"jax {jax.__version__} on {jax.devices()[0].device_kind}")
  print(
      f"machine: {machine}; model {model_label} ({N} layers, {D} dims, {args.dtype} compute, our attention "
      f"{args.attention}); "
      f"batch {args.batch} pairs x {args.length} tokens; schedule {pairs}")

  torch_model, torch_loss, _ = torch_side(model_dir, pairs, (N, D), ft.train.lr,
                                          ft.train.clip_grad_norm)
  torch_model.eval()
  with torch.no_grad():
    want = float(torch_loss(batch))
  params = jax.tree_util.tree_map(jnp.asarray, pre.params["bert"])
  check = srl.make_srl_step(cfg, schedule.plan("starbucks", pairs, N, D), loss_cfg, tx, "mean",
                            dropout=False, forward_splits=args.forward_splits)
  jbatch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  got = float(jax.jit(check.loss_fn)(params, jbatch, jax.random.key(0))[0])
  print(
      f"same objective: SRL loss ours {got:.6f}, PyTorch {want:.6f}, relative difference "
      f"{abs(got - want) / abs(want):.1e}", flush=True)
  del torch_model, check, params
  if torch.cuda.is_available():
    torch.cuda.empty_cache()

  times = {(side, m): [] for side in ("jax", "torch") for m in METHODS}
  for _ in range(args.rounds):  # rounds of (ours, PyTorch): background load drifts over minutes
    for side in ("jax", "torch"):
      argv = [
          "--model", model_dir, "--batch",
          str(args.batch), "--length",
          str(args.length), "--steps",
          str(args.steps), "--dtype", args.dtype, "--forward-splits",
          str(args.forward_splits), "--attention", args.attention, "--worker", side
      ]
      out = subprocess.run([sys.executable, os.path.abspath(__file__), *argv], capture_output=True,
                           text=True, check=False)
      if out.returncode:
        raise RuntimeError(f"the {side} timing process failed:\n{out.stderr[-3000:]}")
      for m, seconds in json.loads(out.stdout.strip().splitlines()[-1]).items():
        times[(side, m)] += seconds
  rate = {k: args.batch / statistics.median(v) for k, v in times.items()}
  flops_per_example = cfg.matmul_flops(2, args.length)  # the anchor and the positive
  gflops = {k: r * flops_per_example / 1e9 for k, r in rate.items()}
  print(f"{'step':>10} {'ours ex/s':>10} {'PyTorch ex/s':>13} {'ours / PyTorch':>15} "
        f"{'ours GFLOP/s':>13} {'PyTorch GFLOP/s':>16}" +
        (f" {'MFU ours':>9} {'MFU PyTorch':>12}" if args.peak_tflops else ""))
  for m in METHODS:
    mfu = (
        f" {gflops[('jax', m)] / 1e3 / args.peak_tflops:>9.1%} {gflops[('torch', m)] / 1e3 / args.peak_tflops:>12.1%}"
        if args.peak_tflops else "")
    print(
        f"{m:>10} {rate[('jax', m)]:>10.1f} {rate[('torch', m)]:>13.1f} "
        f"{rate[('jax', m)] / rate[('torch', m)]:>14.2f}x {gflops[('jax', m)]:>13.1f} {gflops[('torch', m)]:>16.1f}"
        + mfu)
  print(
      f"SRL step time / full-only step time: ours {rate[('jax', 'full')] / rate[('jax', 'starbucks')]:.2f}x, "
      f"PyTorch {rate[('torch', 'full')] / rate[('torch', 'starbucks')]:.2f}x")
  results = {
      "command": " ".join(["python", "benchmarks/vs_pytorch.py",
                           *sys.argv[1:]]), "commit": git_commit(), "machine": machine,
      "model": model_label, "layers": N, "dims": D, "dtype": args.dtype, "batch_pairs": args.batch,
      "length": args.length, "forward_splits": args.forward_splits, "attention": args.attention,
      "steps": args.steps, "rounds": args.rounds,
      "loss": {"ours": got, "torch": want, "relative_difference": abs(got - want) / abs(want)
              }, "examples_per_sec": {f"{s}/{m}": r for (s, m), r in rate.items()},
      "gflops_per_sec": {f"{s}/{m}": r for (s, m), r in gflops.items()}
  }
  if args.peak_tflops:
    results["peak_tflops"] = args.peak_tflops
    results["mfu"] = {f"{s}/{m}": g / 1e3 / args.peak_tflops for (s, m), g in gflops.items()}
  print(json.dumps(results))
  if args.out:
    with open(args.out, "w", encoding="utf8") as f:
      json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
