"""Writes the demo data shipped with the package (run from the repo root to regenerate).

    python -m starbucks_jax.data.demo.make_demo_data

Sentences are composed from hand-written templates: a subject, an activity and a place, each with
paraphrases. Graded STS pairs score 5 for a paraphrase of the whole scene, less as parts change,
0 for unrelated scenes; NLI-style triplets pair a scene with its paraphrase (positive) and the
same subject doing something else (hard negative). Deterministic (seeded).

The retrieval demo (retrieval/, BEIR layout) is built from a public text instead: the Python
reference documentation's topics as the standard library ships them (`pydoc_data.topics`, Python
3.11; Copyright Python Software Foundation, PSF License Version 2; retrieval/LICENSE). Each section
heading is a query, its paragraphs (in chunks of about 80 words) are the passages relevant to it;
two of every three queries are `train`, the third `test`.
"""

import json
import os
import random
import re

SUBJECTS = [("a man", "a guy"), ("a woman", "a lady"), ("a child", "a kid"),
            ("an old man", "an elderly man"), ("a girl", "a young girl"), ("a boy", "a young boy"),
            ("a couple", "a pair of friends"), ("a chef", "a cook"), ("a student", "a pupil"),
            ("a dog", "a puppy")]
ACTIVITIES = [("is playing a guitar", "plays the guitar", "is strumming a guitar"),
              ("is riding a bicycle", "rides a bike", "is cycling"),
              ("is cooking dinner", "prepares a meal", "is making food"),
              ("is reading a book", "reads a novel", "is looking at a book"),
              ("is running", "jogs", "is going for a run"),
              ("is swimming", "swims", "is doing laps in the water"),
              ("is eating an apple", "eats an apple", "is biting into an apple"),
              ("is sleeping", "sleeps", "is taking a nap"),
              ("is painting a picture", "paints", "is drawing with a brush"),
              ("is talking on the phone", "makes a phone call", "is chatting on a phone"),
              ("is dancing", "dances", "is moving to music"),
              ("is washing the dishes", "cleans the plates", "is scrubbing dishes")]
PLACES = [("in the park", "at the park"), ("at home", "in the house"),
          ("on the street", "on the road"), ("in the kitchen", "in a kitchen"),
          ("near the beach", "by the sea"), ("in a garden", "in the yard")]


def scene(rng, s, a, p, variant):
  subject = SUBJECTS[s][variant % 2]
  return f"{subject[0].upper()}{subject[1:]} {ACTIVITIES[a][variant % 3]} {PLACES[p][variant % 2]}."


def sts_pairs(rng, n):
  out = []
  kinds = [(5.0, "same"), (3.8, "place"), (3.0, "subject"), (1.6, "activity"), (0.4, "all")]
  for i in range(n):
    score, kind = kinds[i % len(kinds)]
    s, a, p = rng.randrange(len(SUBJECTS)), rng.randrange(len(ACTIVITIES)), rng.randrange(
        len(PLACES))
    s2, a2, p2 = s, a, p
    if kind in ("place", "all"):
      p2 = (p + rng.randrange(1, len(PLACES))) % len(PLACES)
    if kind in ("subject", "all"):
      s2 = (s + rng.randrange(1, len(SUBJECTS))) % len(SUBJECTS)
    if kind in ("activity", "all"):
      a2 = (a + rng.randrange(1, len(ACTIVITIES))) % len(ACTIVITIES)
    v1, v2 = rng.randrange(6), rng.randrange(6)
    if v1 == v2:
      v2 = (v2 + 1) % 6
    out.append({
        "sentence1": scene(rng, s, a, p, v1),
        "sentence2": scene(rng, s2, a2, p2, v2),
        # on the 0..5 scale
        "score": min(5.0, max(0.0, round(score + rng.uniform(-0.4, 0.4), 2)))
    })
  return out


def triplets(rng, n):
  out = []
  for _ in range(n):
    s, a, p = rng.randrange(len(SUBJECTS)), rng.randrange(len(ACTIVITIES)), rng.randrange(
        len(PLACES))
    a_neg = (a + rng.randrange(1, len(ACTIVITIES))) % len(ACTIVITIES)
    v = rng.randrange(6)
    out.append({
        "anchor": scene(rng, s, a, p, v), "positive": scene(rng, s, a, p, v + 1),
        "negative": scene(rng, s, a_neg, p, v)
    })
  return out


def doc_sections():
  """(heading, body) of every section of the documentation topics, each heading once (its first body)."""
  from pydoc_data import topics
  out = {}
  for name in sorted(topics.topics):
    lines = topics.topics[name].split("\n")
    heading, body = None, []
    for i, line in enumerate(lines):
      under = lines[i + 1].strip() if i + 1 < len(lines) else ""
      if line.strip() and re.fullmatch(r"[*=-]{3,}", under) and len(under) >= len(line.strip()) - 2:
        if heading and heading not in out:
          out[heading] = body
        heading, body = line.strip(), []
      elif heading and not re.fullmatch(r"[*=-]{3,}", line.strip()):
        body.append(line)
    if heading and heading not in out:
      out[heading] = body
  return out


def chunks(body, words=80):
  """Paragraphs (whitespace joined) merged in order into passages of about `words` words."""
  paragraphs = [" ".join(p.split()) for p in "\n".join(body).split("\n\n")]
  out, cur = [], []
  for p in filter(None, paragraphs):
    cur.append(p)
    if sum(len(x.split()) for x in cur) >= words:
      out.append(" ".join(cur))
      cur = []
  if cur:
    out.append(" ".join(cur))
  return out


def retrieval_set(folder):
  corpus, queries, qrels = [], [], {"train": [], "test": []}
  for heading, body in doc_sections().items():
    passages = [p for p in chunks(body) if len(p.split()) >= 12]
    if not passages or len(heading.split()) < 2:  # one-word headings ("Overview") are not queries
      continue
    q = f"q{len(queries)}"
    queries.append({"_id": q, "text": heading.replace('"', "")})
    split = "test" if len(queries) % 3 == 0 else "train"
    for text in passages:
      d = f"d{len(corpus)}"
      corpus.append({"_id": d, "title": "", "text": text})
      qrels[split].append((q, d))
  os.makedirs(os.path.join(folder, "qrels"), exist_ok=True)
  write(os.path.join(folder, "corpus.jsonl"), corpus)
  write(os.path.join(folder, "queries.jsonl"), queries)
  for split, rows in qrels.items():
    with open(os.path.join(folder, "qrels", f"{split}.tsv"), "w", encoding="utf8") as f:
      f.write("query-id\tcorpus-id\tscore\n")
      f.writelines(f"{q}\t{d}\t1\n" for q, d in rows)
  return len(corpus), len(queries)


def write(path, rows):
  with open(path, "w", encoding="utf8") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


def main():
  here = os.path.dirname(os.path.abspath(__file__))
  rng = random.Random(20241017)
  write(os.path.join(here, "sts_train.jsonl"), sts_pairs(rng, 320))
  write(os.path.join(here, "sts_test.jsonl"), sts_pairs(rng, 100))
  write(os.path.join(here, "triplets_train.jsonl"), triplets(rng, 320))
  print("retrieval: %d passages, %d queries" % retrieval_set(os.path.join(here, "retrieval")))


if __name__ == "__main__":
  main()
