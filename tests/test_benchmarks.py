"""benchmarks/vs_pytorch.py: its random-init models are real checkpoints, and its PyTorch
formulation computes our objective (what the timings compare must be the same training)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starbucks_jax import checkpoint, losses, schedule, srl
from starbucks_jax import step as step_lib
from starbucks_jax.config_lib import load_config
from starbucks_jax.models import bert

from conftest import REPO, load_script


@pytest.fixture(scope="module")
def vs_pytorch():
  return load_script("benchmarks/vs_pytorch.py")


@pytest.fixture(scope="module")
def random_minilm(vs_pytorch, tmp_path_factory):
  return vs_pytorch.random_model_dir("minilm-l6-h384",
                                     str(tmp_path_factory.mktemp("random_minilm")), seed=1)


def test_random_model_dir_is_an_hf_and_sentence_transformers_checkpoint(random_minilm):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  st = pytest.importorskip("sentence_transformers")
  pre = checkpoint.load_model(random_minilm)
  cfg = pre.config
  assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (6, 384, 30522)
  assert pre.tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                              "[MASK]"]) == [0, 100, 101, 102, 103]
  # HF's init: weights normal(0.02), LayerNorm ones / zeros
  kernel = np.asarray(
      pre.params["bert"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"])
  assert 0.015 < kernel.std() < 0.025
  ids = np.random.default_rng(0).integers(1000, 20000, (3, 12))
  ids[:, 0], ids[:, -1] = 101, 102
  mask = np.ones_like(ids)
  mask[1, 8:] = 0
  ref = transformers.AutoModel.from_pretrained(random_minilm).eval()
  with torch.no_grad():
    want = ref(input_ids=torch.as_tensor(ids),
               attention_mask=torch.as_tensor(mask)).last_hidden_state.numpy()
  got = bert.BertEncoder(cfg).apply({"params": pre.params["bert"]}, jnp.asarray(ids),
                                    jnp.asarray(mask))[-1]
  np.testing.assert_allclose(
      np.asarray(got) * mask[..., None], want * mask[..., None], rtol=1e-5, atol=1e-5)
  model = st.SentenceTransformer(random_minilm, device="cpu")
  assert model.get_embedding_dimension() == 384


def test_random_model_without_a_schedule_fails_clearly(vs_pytorch, tmp_path):
  with pytest.raises(ValueError, match="random:tiny: no Starbucks schedule"):
    vs_pytorch.random_model_dir("tiny", str(tmp_path / "m"))
  with pytest.raises(ValueError, match="unknown BertConfig preset"):
    vs_pytorch.random_model_dir("bert-huge", str(tmp_path / "m"))


@pytest.mark.parametrize("method", ["starbucks", "full"])
def test_pytorch_formulation_computes_our_objective(vs_pytorch, random_minilm, method):
  pytest.importorskip("sentence_transformers")
  torch = pytest.importorskip("torch")
  pre = checkpoint.load_model(random_minilm)
  N, D = pre.config.num_hidden_layers, pre.config.hidden_size
  pairs = schedule.STARBUCKS["minilm-l6-h384"]
  ft = load_config(str(REPO / "configs" / "ft.py") + ":demo")
  model, loss_fn, _ = vs_pytorch.torch_side(random_minilm, pairs, (N, D), ft.train.lr,
                                            ft.train.clip_grad_norm)
  model.eval()
  rng = np.random.default_rng(3)
  batch = {"ids": rng.integers(1000, 20000, (2, 8, 16)), "mask": np.ones((2, 8, 16), np.int64)}
  batch["mask"][:, 2, 10:] = 0  # padding in both roles
  with torch.no_grad():
    want = float(loss_fn(batch, method))
  tx = step_lib.make_optimizer(ft.train, 10)
  step = srl.make_srl_step(pre.config, schedule.plan(method, pairs, N, D), losses.LossConfig(), tx,
                           "mean", dropout=False)
  jbatch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  got = float(jax.jit(step.loss_fn)(pre.params["bert"], jbatch, jax.random.key(0))[0])
  assert abs(got - want) / abs(want) < 1e-5, (got, want)


def test_machine_line_names_the_cpu_and_its_vector_extensions(vs_pytorch, tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text(
      "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16\n"
      "processor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16\n"
  )
  assert vs_pytorch.cpu_description(str(cpuinfo)) == "AMD EPYC 9R14, avx512_bf16, avx512f, avx2"
  cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd sve\n")  # aarch64: no model name
  assert vs_pytorch.cpu_description(str(cpuinfo)).endswith(", asimd, sve")
  if (REPO / ".git").exists():  # a clone (CI, here); an unpacked archive has no commit to name
    assert re.fullmatch(r"[0-9a-f]{7,}(\+changes)?", vs_pytorch.git_commit())


@pytest.mark.parametrize("task", ["cosent", "contrastive"])
def test_recipe_benchmarks_sentence_transformers_loss_is_our_objective(random_minilm, task):
  """recipe_vs_pytorch.py trains the PyTorch side with this loss module: on the same weights and
  texts (each side tokenising and padding its own way) it must compute our SRL loss."""
  pytest.importorskip("sentence_transformers")
  torch = pytest.importorskip("torch")
  from sentence_transformers import SentenceTransformer

  recipe = load_script("benchmarks/recipe_vs_pytorch.py")
  pre = checkpoint.load_model(random_minilm)
  N, D = pre.config.num_hidden_layers, pre.config.hidden_size
  pairs = schedule.STARBUCKS["minilm-l6-h384"]
  roles = 2 if task == "cosent" else 3
  texts = [[f"[unused{10 * r + i}] " * (3 + (i * 7 + r) % 9) for i in range(8)]
           for r in range(roles)]
  scores = np.array([0.5, 4.0, 2.5, 2.5, 1.0, 5.0, 3.0, 0.0], np.float32)
  model = SentenceTransformer(random_minilm, device="cpu")
  model.eval()
  with torch.no_grad():
    want = float(
        recipe.StarbucksLoss(model, pairs,
                             task)([model.preprocess(t) for t in texts],
                                   torch.tensor(scores) if task == "cosent" else None))
  seqs = [[pre.tokenizer(t)["input_ids"] for t in role] for role in texts]
  T = max(len(s) for role in seqs for s in role) + 3  # padded further than either side's longest
  batch = {"ids": np.zeros((roles, 8, T), np.int32), "mask": np.zeros((roles, 8, T), np.int32)}
  for r, role in enumerate(seqs):
    for i, s in enumerate(role):
      batch["ids"][r, i, :len(s)], batch["mask"][r, i, :len(s)] = s, 1
  if task == "cosent":
    batch["scores"] = scores
  ft = load_config(str(REPO / "configs" / "ft.py") + ":demo")
  step = srl.make_srl_step(pre.config, schedule.plan("starbucks", pairs, N, D),
                           losses.LossConfig(task=task), step_lib.make_optimizer(ft.train, 10),
                           "mean", dropout=False)
  got = float(jax.jit(step.loss_fn)(pre.params["bert"], batch, jax.random.key(0))[0])
  assert abs(got - want) / abs(want) < 1e-5, (got, want)
