"""Exported models, loaded by sentence-transformers, give our embeddings; the STS-B reference number."""

import json
import os

import numpy as np
import pytest

from starbucks_jax import cli, export
from starbucks_jax.embed import Embedder
from starbucks_jax.evaluate import sts

TEXTS = [
    "the quick brown fox jumps over the lazy dog.", "a cat sat", "music",
    "the man plays red guitar on the road with a woman and a dog"
]


def _cos(a, b):
  return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def st():
  return pytest.importorskip("sentence_transformers")


@pytest.mark.parametrize("layer,dim", [(None, None), (2, 12), (1, 32)])
def test_random_model_export_matches_sentence_transformers(st, tiny_hf_dir, tmp_path, layer, dim):
  out = export.export(tiny_hf_dir, str(tmp_path / "out"), layer=layer, dim=dim)
  ours = Embedder.load(tiny_hf_dir).encode(TEXTS, layer=layer, dim=dim)
  theirs = st.SentenceTransformer(out, device="cpu").encode(TEXTS)
  assert theirs.shape == ours.shape == (len(TEXTS), dim or 32)
  assert _cos(ours, theirs).min() >= 0.99999
  cfg = json.load(open(os.path.join(out, "config.json")))
  assert cfg["num_hidden_layers"] == (layer or 4)
  # ... and our own loader reads the export back as the same sub-model.
  again = Embedder.load(out).encode(TEXTS)
  np.testing.assert_allclose(again, ours, atol=1e-5)


def test_minilm_sub_model_export(st, minilm_dir, tmp_path):
  out = export.export(minilm_dir, str(tmp_path / "sub"), layer=3, dim=64)
  ours = Embedder.load(minilm_dir).encode(TEXTS, layer=3, dim=64)
  theirs = st.SentenceTransformer(out, device="cpu").encode(TEXTS)
  assert theirs.shape == (len(TEXTS), 64)
  assert _cos(ours, theirs).min() >= 0.99999
  np.testing.assert_allclose(np.linalg.norm(theirs, axis=1), 1.0, atol=1e-5)  # Normalize kept


def test_minilm_full_export_matches_original(st, minilm_dir, tmp_path):
  out = export.export(minilm_dir, str(tmp_path / "full"))
  a = st.SentenceTransformer(minilm_dir, device="cpu").encode(TEXTS)
  b = st.SentenceTransformer(out, device="cpu").encode(TEXTS)
  c = Embedder.load(out).encode(TEXTS)
  assert _cos(a, b).min() >= 0.99999 and _cos(a, c).min() >= 0.99999


def test_exported_minilm_scores_reference_spearman_on_stsb(minilm_dir, shared_data, tmp_path):
  """all-MiniLM-L6-v2 scores 0.8203 on STS-B test (../shared/data/README.md)."""
  out = export.export(minilm_dir, str(tmp_path / "full"))
  s1, s2, gold = sts.read_sts(str(shared_data / "stsb" / "test.jsonl"))
  assert len(gold) == 1379
  model = Embedder.load(out)
  [rec] = sts.evaluate_sts(model, s1, s2, gold, [(6, 384)], dataset="stsb", split="test")
  assert rec["value"] == pytest.approx(0.8203, abs=5e-4)


def test_export_cli_and_bad_pairs(tiny_hf_dir, tmp_path, capsys):
  export.main(
      ["--model", tiny_hf_dir, "--output",
       str(tmp_path / "cli"), "--layer", "2", "--dim", "16"])
  assert "wrote" in capsys.readouterr().out
  meta = json.load(open(tmp_path / "cli" / "starbucks_jax.json"))
  assert (meta["layer"], meta["dim"]) == (2, 16)
  with pytest.raises(ValueError, match="exporting .*: layer=5 is outside 1..4"):
    export.export(tiny_hf_dir, str(tmp_path / "x"), layer=5)
  with pytest.raises(ValueError, match="exporting .*: dim=33 is outside 1..32"):
    export.export(tiny_hf_dir, str(tmp_path / "x"), dim=33)
  with pytest.raises(ValueError, match="no MLM head"):
    export.export(tiny_hf_dir, str(tmp_path / "x"), with_mlm_head=True)


def test_the_cards_loading_lines_give_the_sub_model(st, tiny_hf_dir, tmp_path):
  """The model card's sentence-transformers lines, run as written on a full export with (n, d) set,
  give the (n, d) sub-model's embeddings; a sub-model export's card says which one it is."""
  out = export.export(tiny_hf_dir, str(tmp_path / "full"))
  text = open(os.path.join(out, "README.md")).read()
  assert text.startswith(
      "---\nlibrary_name: sentence-transformers\npipeline_tag: sentence-similarity\n")
  assert "## Training" not in text  # a model directory, not a run: no training facts to state
  code = text.split("```python\n")[1].split("```")[0]
  assert "n, d = 4, 32" in code
  code = (code.replace("n, d = 4, 32",
                       "n, d = 2, 16").replace('"PATH_OR_REPO_ID"', repr(out)).replace(
                           'model.encode(["A man is playing a guitar."])', "model.encode(TEXTS)"))
  scope = {"TEXTS": TEXTS}
  exec(code, scope)
  ours = Embedder.load(tiny_hf_dir).encode(TEXTS, layer=2, dim=16)
  assert scope["embeddings"].shape == (len(TEXTS), 16) and _cos(
      ours, scope["embeddings"]).min() >= 0.99999
  sub = export.export(tiny_hf_dir, str(tmp_path / "sub"), layer=2, dim=16)
  assert "The (2, 16) sub-model" in open(os.path.join(sub, "README.md")).read()
  # a normalising export: sentence-transformers truncates after Normalize; the card's lines give
  # unit vectors again, equal to embed's
  out = export.export(tiny_hf_dir, str(tmp_path / "unit"), normalize=True)
  text = open(os.path.join(out, "README.md")).read()
  assert "truncate_dim cuts the vectors after this model's Normalize module" in text
  code = text.split("```python\n")[1].split("```")[0]
  code = (code.replace("n, d = 4, 32", "n, d = 2, 16").replace(
      '"PATH_OR_REPO_ID"',
      repr(out)).replace('model.encode(["A man is playing a guitar."], normalize_embeddings=True)',
                         "model.encode(TEXTS, normalize_embeddings=True)"))
  exec(code, scope)
  unit = Embedder.load(out).encode(TEXTS, layer=2, dim=16, normalize=True)
  np.testing.assert_allclose(scope["embeddings"], unit, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(scope["embeddings"], axis=1), 1.0, atol=1e-5)


def test_push_to_hub_offline_fails_in_one_line_and_keeps_the_export(tiny_hf_dir, tmp_path, capsys):
  """Tests run with HF_HUB_OFFLINE=1 (conftest): the real client refuses, the export stays."""
  with pytest.raises(SystemExit) as stop:
    cli.run(lambda: export.main(
        ["--model", tiny_hf_dir, "--output",
         str(tmp_path / "o"), "--push-to-hub", "me/x"]))
  err = capsys.readouterr().err.strip()
  assert stop.value.code == 2 and len(err.splitlines()) == 1, err
  assert err.startswith(
      "error: --push-to-hub me/x: the upload failed (OfflineModeIsEnabled") and "intact" in err
  assert (tmp_path / "o" / "model.safetensors").exists() and (tmp_path / "o" / "README.md").exists()
