"""Export a model, or one (layer, dim) sub-model of it, as an HF + sentence-transformers directory.

    python -m starbucks_jax.export --model SRC --output DIR [--layer N --dim D] [--push-to-hub ID [--private]]

SRC is an HF / sentence-transformers directory (or Hub id) or a project workdir (its latest
checkpoint, or --step). With --layer/--dim the result is a standalone model of N layers whose
sentence-transformers pipeline keeps the first D dimensions; `transformers.AutoModel` and
`sentence_transformers.SentenceTransformer` load it offline. --output must be new or empty
(--overwrite replaces it); it is never the source model or a training workdir. The folder holds a
model card (README.md: the model, its training run and results per (layer, dim) when SRC is a
workdir, and how to load it at a chosen size). --push-to-hub uploads the folder to that Hub model
repo (created if missing; token from HF_TOKEN or `hf auth login`); a failed upload leaves the
export in place.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile

from starbucks_jax import card, checkpoint, cli, model_dirs
from starbucks_jax import workdir as workdir_lib
from starbucks_jax.models import hf
from starbucks_jax.models.pooling import POOLINGS
from starbucks_jax.schedule import check_pair

log = logging.getLogger(__name__)


def check_output(source: str, output: str, overwrite: bool = False) -> None:
  """`output` may be written: never the source model or a folder inside it (or holding it), never a
  training workdir, and, unless `overwrite`, a new or empty directory."""
  out = os.path.realpath(os.path.expanduser(output))
  src = os.path.realpath(os.path.expanduser(source))
  if os.path.exists(src) and (out == src or out.startswith(src + os.sep) or
                              src.startswith(out + os.sep)):
    raise FileExistsError(
        f"--output {output}: is (or holds, or is inside) the source model {source}; "
        "export to another directory")
  if workdir_lib.is_workdir(out):
    raise FileExistsError(f"--output {output}: is a training workdir; export to another directory")
  if os.path.exists(out) and not os.path.isdir(out):
    raise FileExistsError(f"--output {output}: is a file")
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise FileExistsError(f"--output {output}: is not empty; pass --overwrite to replace it")


def remove_leftovers(output: str) -> None:
  """A run killed mid-export leaves its temporary siblings of `output` (`.NAME.*`): removed, except
  a previous export moved aside when `output` itself is missing (the kill came between the two
  renames), which is moved back first."""
  parent, name = os.path.dirname(output), os.path.basename(output)
  for entry in sorted(os.listdir(parent)) if os.path.isdir(parent) else ():
    path = os.path.join(parent, entry)
    if not (entry.startswith(f".{name}.") and os.path.isdir(path)):
      continue
    aside = os.path.join(path, "model")
    if entry.startswith(f".{name}.old.") and os.path.isdir(aside) and not os.path.exists(output):
      os.rename(aside, output)
      log.warning("moved %s back to %s (an export was cut short)", aside, output)
    shutil.rmtree(path)
    log.info("removed %s, left by an export that was cut short", path)


def export(source: str, output: str, *, layer: int | None = None, dim: int | None = None,
           step: int | None = None, pooling: str | None = None, normalize: bool | None = None,
           with_mlm_head: bool = False, overwrite: bool = False) -> str:
  """Writes the model to a temporary sibling of `output`, renamed into place at the end (a crash
  leaves `output` as it was; its leftovers go on the next run); files get the usual permissions
  (0644, folders 0755)."""
  remove_leftovers(os.path.realpath(os.path.expanduser(output)))
  check_output(source, output, overwrite)
  model = checkpoint.load_model(source, step=step)
  cfg, s = model.config, model.sentence
  layer = cfg.num_hidden_layers if layer is None else layer
  dim = cfg.hidden_size if dim is None else dim
  check_pair(layer, dim, cfg.num_hidden_layers, cfg.hidden_size, where=f"exporting {source}: ")
  sentence = model_dirs.SentenceSettings(pooling=pooling or s.pooling,
                                         normalize=s.normalize if normalize is None else normalize,
                                         max_seq_length=s.max_seq_length, prompts=s.prompts)
  params = dict(model.params)
  if not with_mlm_head:
    params.pop("mlm_head", None)
  elif "mlm_head" not in params:
    raise hf.ModelError(f"{source} has no MLM head to export (--with-mlm-head)")
  output = os.path.realpath(os.path.expanduser(output))
  os.makedirs(os.path.dirname(output), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.", dir=os.path.dirname(output))
  try:
    # a full disk: one error naming --output, which stays as it was
    with workdir_lib.naming_errors(output, rename=True):
      model_dirs.save_pretrained(tmp, cfg, params, model.tokenizer, sentence=sentence, layer=layer,
                                 dim=dim, extra_meta={"source": str(source), "step": step})
      with open(os.path.join(tmp, "README.md"), "w", encoding="utf8") as f:
        f.write(
            card.model_card(source, num_layers=cfg.num_hidden_layers, hidden=cfg.hidden_size,
                            layer=layer, dim=dim, pooling=sentence.pooling,
                            title=os.path.basename(output), model_type=cfg.model_type,
                            prompts=(sentence.prompt("query"), sentence.prompt("document")),
                            normalize=sentence.normalize))
    for folder, dirs, files in os.walk(tmp):
      os.chmod(folder, 0o755)
      for name in files:
        os.chmod(os.path.join(folder, name), 0o644)
    old = None
    if os.path.exists(output):  # empty, or --overwrite: moved aside until the new one is in place
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.old.",
                             dir=os.path.dirname(output))
      os.rename(output, os.path.join(old, "model"))
    os.rename(tmp, output)
    if old:
      shutil.rmtree(old)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)
  return output


def push_to_hub(folder: str, repo_id: str, *, private: bool = False) -> str:
  """Uploads an exported folder to the Hub model repo `repo_id`; returns the commit's URL. Any
  failure (offline, no token, no rights) is a ConnectionError naming the repo; `folder` stays."""
  from huggingface_hub import HfApi
  api = HfApi()
  try:
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="model",
                               commit_message="Upload a starbucks_jax export")
  except Exception as e:
    reason = " ".join(str(e).split())[:300] or type(e).__name__
    raise ConnectionError(
        f"--push-to-hub {repo_id}: the upload failed ({type(e).__name__}: {reason}); the export "
        f"in {folder} is intact: `hf upload {repo_id} {folder}` retries it") from None
  return str(getattr(commit, "commit_url", commit))


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(prog="python -m starbucks_jax.export",
                              description=__doc__.split("\n")[0])
  p.add_argument("--model", required=True,
                 help="HF / sentence-transformers dir, Hub id, or workdir")
  p.add_argument("--output", required=True, help="directory to write")
  p.add_argument("--layer", type=int, help="keep the first N layers (default: all)")
  p.add_argument("--dim", type=int, help="keep the first D dimensions (default: all)")
  p.add_argument("--step", type=int, help="checkpoint step of a workdir (default: latest)")
  p.add_argument("--pooling", choices=POOLINGS, help="default: the source's")
  p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None)
  p.add_argument("--with-mlm-head", action="store_true", help="write BertForMaskedLM (SMAE runs)")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")
  p.add_argument("--push-to-hub", metavar="REPO_ID",
                 help="then upload the folder to this Hub model repo")
  p.add_argument("--private", action="store_true",
                 help="with --push-to-hub: create the repo private")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  out = export(args.model, args.output, layer=args.layer, dim=args.dim, step=args.step,
               pooling=args.pooling, normalize=args.normalize, with_mlm_head=args.with_mlm_head,
               overwrite=args.overwrite)
  print(f"wrote {out}")
  if args.push_to_hub:
    print(f"uploaded to {push_to_hub(out, args.push_to_hub, private=args.private)}")


if __name__ == "__main__":
  cli.run(main)
