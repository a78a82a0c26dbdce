"""Writes the demo data shipped with the package (run from the repo root to regenerate).

    python -m starbucks_jax.data.demo.make_demo_data

Sentences are composed from hand-written templates: a subject, an activity and a place, each with
paraphrases. Graded STS pairs score 5 for a paraphrase of the whole scene, less as parts change,
0 for unrelated scenes; NLI-style triplets pair a scene with its paraphrase (positive) and the
same subject doing something else (hard negative). Deterministic (seeded).
"""

import json
import os
import random

SUBJECTS = [("a man", "a guy"), ("a woman", "a lady"), ("a child", "a kid"), ("an old man", "an elderly man"),
            ("a girl", "a young girl"), ("a boy", "a young boy"), ("a couple", "a pair of friends"),
            ("a chef", "a cook"), ("a student", "a pupil"), ("a dog", "a puppy")]
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
PLACES = [("in the park", "at the park"), ("at home", "in the house"), ("on the street", "on the road"),
          ("in the kitchen", "in a kitchen"), ("near the beach", "by the sea"), ("in a garden", "in the yard")]


def scene(rng, s, a, p, variant):
  subject = SUBJECTS[s][variant % 2]
  return f"{subject[0].upper()}{subject[1:]} {ACTIVITIES[a][variant % 3]} {PLACES[p][variant % 2]}."


def sts_pairs(rng, n):
  out = []
  kinds = [(5.0, "same"), (3.8, "place"), (3.0, "subject"), (1.6, "activity"), (0.4, "all")]
  for i in range(n):
    score, kind = kinds[i % len(kinds)]
    s, a, p = rng.randrange(len(SUBJECTS)), rng.randrange(len(ACTIVITIES)), rng.randrange(len(PLACES))
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
    out.append({"sentence1": scene(rng, s, a, p, v1), "sentence2": scene(rng, s2, a2, p2, v2),
                "score": min(5.0, max(0.0, round(score + rng.uniform(-0.4, 0.4), 2)))})  # on the 0..5 scale
  return out


def triplets(rng, n):
  out = []
  for _ in range(n):
    s, a, p = rng.randrange(len(SUBJECTS)), rng.randrange(len(ACTIVITIES)), rng.randrange(len(PLACES))
    a_neg = (a + rng.randrange(1, len(ACTIVITIES))) % len(ACTIVITIES)
    v = rng.randrange(6)
    out.append({"anchor": scene(rng, s, a, p, v), "positive": scene(rng, s, a, p, v + 1),
                "negative": scene(rng, s, a_neg, p, v)})
  return out


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


if __name__ == "__main__":
  main()
