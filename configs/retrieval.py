"""SRL retrieval training (docs/method.md, "Recipes", retrieval column): groups of 1 positive + G-1 negatives.

    python -m starbucks_jax.main --config=configs/retrieval.py[:VARIANT][,method=M] --workdir=DIR

The fields are configs/ft.py's (this file starts from it); data.format is 'groups' (Tevatron's
layout, data/groups.py) and evaluation adds eval.retrieval (BEIR folders; nDCG@10, MRR@10,
R@100, R@1000 per pair, TREC run files in DIR/runs).

Without a variant: the paper's recipe. bert-base-uncased (or an SMAE run: model.init_from), Tevatron
MS MARCO passage with its BM25 negatives (hf:Tevatron/msmarco-passage, ~400k queries), group 8,
batch 128 queries, 3 epochs (~9.4k steps), query 32 / passage 196 tokens, CLS pooling, raw dot
product / temperature 1, score KL (tau 1, teacher detached), summed over the six pairs as the code
does, AdamW lr 1e-4, warmup 10%, linear decay, wd 0, bf16 (the authors' AMP and bf16 evaluation:
model.precision=amp eval.dtype=bfloat16; no difference at CPU scale: experiments/precision.md).
Needs the Hub. Evaluated as the authors
do, on Tevatron's title + text corpus (8.8M passages, hf:Tevatron/msmarco-passage-corpus, the same
"title text" passages as training) with Tevatron's queries for MS MARCO dev (6,980 queries; MRR@10
is the paper's metric; qrels from BeIR/msmarco-qrels dev), TREC DL 2019 (43) and DL 2020 (54)
(nDCG@10; NIST's graded qrels, downloaded once). The three share one index (dataset name msmarco):
encoding the corpus once for all six sizes is the long part. Offline (a TPU host without the Hub),
copy the parts into a folder D once and point the three sets at it (data/tevatron.py):
    hf download --repo-type dataset Tevatron/msmarco-passage-corpus corpus.jsonl.gz --local-dir D
    hf download --repo-type dataset Tevatron/msmarco-passage dev.jsonl.gz dl19.jsonl.gz dl20.jsonl.gz --local-dir D
    hf download --repo-type dataset BeIR/msmarco-qrels dev.tsv --local-dir D/qrels
    curl -o D/qrels/dl19.txt https://trec.nist.gov/data/deep/2019qrels-pass.txt   # and 2020 -> dl20.txt
    --config.eval.retrieval=msmarco/dev=tevatron:D,msmarco/dl19=tevatron:D,msmarco/dl20=tevatron:D
Needs a TPU slice or a GPU: the 9.4k steps in >= 9 min on a v6e-8, >= 17 min on one H200 with
model.attention=cudnn; one TPU chip needs train.grad_cache_chunks=8 (>= 2.9 h on a v5e-1); encoding
the 8.8M passages for evaluation takes >= 44 min on one v5e chip (compiled bounds and the settings
per chip: experiments/recipes.md).
Paper: Starbucks MRR@10 .2282 .2950 .3274 .3369 .3416 .3403
(SMAE + SRL), BERT + SRL mean .2921.

Variants:
  demo      offline, on a fresh machine: all-MiniLM-L6-v2 (the pip package) on the retrieval set
            that ships in the package (starbucks_jax/data/demo/retrieval: the Python reference
            documentation's section headings as queries, their paragraphs as passages; 448
            passages, 86 train and 43 test queries; PSF License). One epoch (5 steps of 16 queries,
            group 4, random negatives), then nDCG@10, MRR@10, R@100 per size on the test queries:
            ~2.5 min on 2 CPU cores.
  scifact   all-MiniLM-L6-v2 and its schedule on BEIR SciFact (`python -m
            starbucks_jax.data.fetch scifact` first): train on the train
            qrels (809 queries, random corpus negatives, group 4, batch 16, 1 epoch = 50 steps),
            evaluate on the 300 test queries (5,183 abstracts). Passages cut to 128 tokens in
            training and evaluation so that the recorded CPU run fits a session (~17 min on 2
            cores: experiments/recipes.md). MiniLM keeps its
            own mean pooling and cosine x 20 (the recipe's CLS + dot suits a BERT that is not yet a
            sentence model); score KL as the recipe. Also evaluates five funnels (a small size's
            shortlist rescored by larger ones) and writes every size's and funnel's cost per query
            (WORKDIR/costs; `python -m starbucks_jax.evaluate.pareto --workdir W` plots the front).
            Recorded: experiments/elastic_retrieval.md.

  beir      Table A2: evaluate model.init_from (a trained workdir, an HF or sentence-transformers
            dir; no training) on the paper's 12 BEIR sets, nDCG@10 (with MRR@10, R@100, R@1000)
            per size, test split: DBpedia-entity, Quora, SciDocs, SciFact, Climate-FEVER, ArguAna,
            Touche-2020 (BEIR's webis-touche2020), FiQA, TREC-COVID, NFCorpus, FEVER, HotpotQA.
            From the Hub (hf:BeIR/NAME + hf:BeIR/NAME-qrels) or, with beir_dir=D, from BEIR's
            unzipped folders D/NAME (corpus.jsonl, queries.jsonl, qrels/test.tsv). Lengths: the
            authors state none for BEIR (their 32 / 196 are MS MARCO's), so both are BERT's 512:
            a batch is padded to its longest text, so the limit only cuts what BERT must, and
            BEIR has long texts on both sides (ArguAna's queries are whole arguments; TREC-COVID,
            NFCorpus, SciDocs and SciFact passages are abstracts). Dot product as trained; a
            retrieved document with the query's own id is dropped, as BEIR's evaluation does
            (ArguAna and Quora hold their queries in the corpus). The 12 corpora hold ~21.8M
            passages (~2.5x MS MARCO's tokens: >= ~2 h on one v5e chip, scaled from the compiled
            MS MARCO encoding bound). `python -m starbucks_jax.paper a2 WORKDIR` lays the results
            out as Table A2, the paper's rows beside ours.
  beir_scifact  The beir evaluation cut down to the one BEIR set a developer checkout holds
            (`python -m starbucks_jax.data.fetch scifact`), with all-MiniLM-L6-v2 and its
            schedule, mean pooling
            and cosine as that model was trained: ~40 min on 2 CPU cores (experiments/recipes.md).

Arguments: method=starbucks|full|mrl|starbucks_mrl|2dmse|2dmse_retrieval|grid|separate|recommended
(as configs/ft.py; recommended: the loss keys config_blocks.RECOMMENDED_LOSS over this recipe's,
which already have the score KL, so it adds pair weights 1/n: a tie with SRL on SciFact, 3 seeds,
experiments/ablations.md);
beir_dir=D (beir: local BEIR folders instead of the Hub).
"""

import os

from starbucks_jax import config_lib, paper
from starbucks_jax.config_blocks import RECOMMENDED_LOSS
from starbucks_jax.data import fetch, sources
from starbucks_jax.schedule import STARBUCKS

# the CPU recipes' data: $STARBUCKS_DATA, else `python -m starbucks_jax.data.fetch`'s cache
SHARED = fetch.data_root()

MSMARCO_CORPUS = "hf:Tevatron/msmarco-passage-corpus/corpus.jsonl.gz"
MSMARCO_QRELS = {
    "dev": "hf:BeIR/msmarco-qrels@dev",  # MS MARCO dev small: 6,980 queries
    "dl19": "https://trec.nist.gov/data/deep/2019qrels-pass.txt",
    "dl20": "https://trec.nist.gov/data/deep/2020qrels-pass.txt"
}


def msmarco_source(split: str) -> str:
  """The eval.retrieval source of an MS MARCO split in Tevatron's layout (corpus+queries+qrels)."""
  return f"tevatron:{MSMARCO_CORPUS}+hf:Tevatron/msmarco-passage/{split}.jsonl.gz+{MSMARCO_QRELS[split]}"


def beir_source(name: str, beir_dir: str = "") -> str:
  """A BEIR set's eval.retrieval source: the Hub's BeIR/NAME, or the folder beir_dir/NAME."""
  return os.path.join(beir_dir, name) if beir_dir else f"hf:BeIR/{name}"


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, demo=False, scifact=False, beir=False, beir_scifact=False,
                             beir_dir="", method="starbucks", layer=0, dim=0)
  here = os.path.dirname(os.path.abspath(__file__))
  base = f"method={arg.method},layer={arg.layer},dim={arg.dim}"
  c = config_lib.load_config(os.path.join(here, "ft.py") + ":" + base)
  c.unlock()
  c.model.pooling = "cls"
  # the repo's file (its loading script no longer runs)
  c.data.train = "hf:Tevatron/msmarco-passage/train.jsonl.gz"
  c.data.format = "groups"
  c.data.group_size = 8
  c.data.query_max_length = 32
  c.data.passage_max_length = 196
  c.data.batch_size = 128
  c.loss.task = "contrastive"
  c.loss.similarity = "dot"
  c.loss.temperature = 1.0
  c.loss.kl = "scores"
  c.loss.kl_detach = True  # the teacher's scores are a constant, as in the authors' retrieval code
  c.loss.kl_temperature = 1.0
  c.loss.reduction = "sum"
  if arg.method == "recommended":
    c.loss.update(RECOMMENDED_LOSS)
  c.train.epochs = 3
  c.train.lr = 1e-4
  c.eval.sts = ""
  c.eval.retrieval = ",".join(f"msmarco/{split}={msmarco_source(split)}" for split in MSMARCO_QRELS)
  c.eval.retrieval_similarity = "dot"
  c.eval.query_max_length = 32
  c.eval.passage_max_length = 196
  if arg.scifact or arg.demo:  # all-MiniLM-L6-v2 as it is: its pooling, cosine x 20, short passages
    c.model.init_from = "all-MiniLM-L6-v2"
    c.model.dtype = "float32"
    c.model.pooling = "mean"
    c.schedule.pairs = STARBUCKS["minilm-l6-h384"]
    c.data.group_size = 4
    c.data.batch_size = 16
    c.data.passage_max_length = 128
    c.data.length_buckets = "linear"
    c.train.epochs = 1
    c.loss.similarity = "cosine"
    c.loss.scale = 20.0
    c.train.lr = 5e-5
    c.eval.retrieval_similarity = "cosine"
    c.eval.query_max_length = 64
    c.eval.passage_max_length = 128
  if arg.scifact:
    # shortlists with small sizes, the last 10 by the full one; every size's and funnel's cost per query
    c.eval.retrieval_funnels = ("1x16:100,6x384:10", "2x32:100,6x384:10", "2x32:1000,6x384:10",
                                "2x32:200,4x128:50,6x384:10", "3x64:100,4x128:10")
    c.eval.retrieval_costs = True
    c.data.train = f"beir:{SHARED}/beir_scifact@train"
    c.train.log_every = 10
    c.eval.retrieval = f"scifact/test={SHARED}/beir_scifact"
  if arg.demo:
    demo = os.path.join(sources.DEMO_DIR, "retrieval")
    c.data.train = f"beir:{demo}@train"
    c.data.query_max_length = 16
    c.train.log_every = 5
    c.eval.retrieval = f"pydocs/test={demo}"
    c.eval.query_max_length = 16
    c.eval.before_training = True  # the table shows what training changed
  if arg.beir or arg.beir_scifact:  # Table A2: evaluation only, lengths as the docstring says
    c.mode = "eval"
    c.eval.query_max_length = 512
    c.eval.passage_max_length = 512
    c.eval.retrieval_skip_self = True
    c.eval.retrieval = ",".join(f"{name}/test={beir_source(name, arg.beir_dir)}"
                                for name in paper.BEIR)
  if arg.beir_scifact:
    c.model.init_from = "all-MiniLM-L6-v2"
    c.model.pooling = "mean"
    c.model.dtype = "float32"
    c.schedule.pairs = STARBUCKS["minilm-l6-h384"]
    c.eval.retrieval_similarity = "cosine"
    c.eval.retrieval = f"scifact/test={SHARED}/beir_scifact"
  c.lock()
  return c
