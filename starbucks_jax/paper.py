"""The paper's appendix tables, and ours laid out beside them.

    python -m starbucks_jax.paper a1|a2 RUN_OR_SWEEP_DIR [...] [--label RUN=LABEL ...] [--out FILE]

TABLE_A1 (in-domain: STS Spearman, MS MARCO dev MRR@10, TREC DL nDCG@10) and TABLE_A2 (BEIR
nDCG@10) hold the numbers of the Starbucks paper's appendix for bert-base-uncased (method ->
column -> the six sizes Demi..Trenta), as the authors publish them in their repository's README.
`markdown` lays out result records (report.collect) in the same rows and columns: a row per size
and label of ours, followed by the paper's rows for the methods our labels stand for
(PAPER_METHOD), wherever the size is one of the paper's.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any, NamedTuple

from starbucks_jax import cli, report
from starbucks_jax.config_lib import InputError

SIZES = {(2, 32): "Demi", (4, 64): "Short", (6, 128): "Tall", (8, 256): "Grande",
         (10, 512): "Venti", (12, 768): "Trenta"}
# our run labels (report.collect: the method, or a sweep's label) -> the paper's row
PAPER_METHOD = {
    "starbucks": "BERT-SRL", "SMAE + SRL": "SMAE-SRL", "2dmse": "BERT-2DMSE",
    "2dmse_retrieval": "BERT-2DMSE", "separate": "BERT-Separate"
}
DEFAULT_PAPER = ("BERT-SRL", "SMAE-SRL")


class Column(NamedTuple):
  header: str
  dataset: str
  split: str | None  # None: any split
  metric: str
  paper: str  # the key in TABLE_A1 / TABLE_A2


STS = ("stsb", "sts12", "sts13", "sts14", "sts15", "sts16", "sickr")
A1 = tuple(
    Column(h, d, None, "spearman_cosine", d)
    for h, d in zip(("STS-B", "STS12", "STS13", "STS14", "STS15", "STS16", "SICK-R"), STS)) + (
        Column("MARCO dev", "msmarco", "dev", "RR@10",
               "msmarco/dev"), Column("DL19", "msmarco", "dl19", "nDCG@10", "msmarco/dl19"),
        Column("DL20", "msmarco", "dl20", "nDCG@10", "msmarco/dl20"))
# Table A2's columns, in its order (BEIR's names for the sets)
BEIR = ("dbpedia-entity", "quora", "scidocs", "scifact", "climate-fever", "arguana",
        "webis-touche2020", "fiqa", "trec-covid", "nfcorpus", "fever", "hotpotqa")
A2 = tuple(
    Column(h, d, "test", "nDCG@10", d)
    for h, d in zip(("Db.-Ent.", "Quora", "Scidocs", "Scifact", "Cli.-Fever", "Arguana", "Touche20",
                     "Fiqa", "Trec-Cvd", "Nfcorpus", "Fever", "Hpqa"), BEIR))
# each table's averaged columns (the paper's "Average" and "Avg." columns) and where it goes
LAYOUTS = {"a1": (A1, STS, "sts_average", 7), "a2": (A2, BEIR, "average", 12)}

TABLE_A1 = {
    "BERT": {
        "stsb": (0.5919, 0.6021, 0.6128, 0.6433, 0.7331, 0.8411),
        "sts12": (0.4700, 0.4478, 0.4689, 0.5121, 0.6748, 0.7413),
        "sts13": (0.6052, 0.5881, 0.6037, 0.6370, 0.6983, 0.8319),
        "sts14": (0.5424, 0.5230, 0.5464, 0.5712, 0.6488, 0.7902),
        "sts15": (0.6530, 0.6599, 0.6728, 0.7062, 0.7876, 0.8521),
        "sts16": (0.6397, 0.6455, 0.6624, 0.6737, 0.7047, 0.8151),
        "sickr": (0.5996, 0.6083, 0.6271, 0.6504, 0.7133, 0.7949),
        "sts_average": (0.5860, 0.5821, 0.5991, 0.6277, 0.7087, 0.8095),
        "msmarco/dev": (0.0001, 0.0000, 0.0000, 0.0009, 0.0000, 0.3341),
        "msmarco/dl19": (0.0000, 0.0000, 0.0000, 0.0000, 0.0100, 0.6404),
        "msmarco/dl20": (0.0000, 0.0000, 0.0000, 0.0000, 0.0047, 0.6410),
    },
    "BERT-Separate": {
        "stsb": (0.7134, 0.7399, 0.7853, 0.8174, 0.8259, 0.8411),
        "sts12": (0.6637, 0.6882, 0.7150, 0.7304, 0.7379, 0.7413),
        "sts13": (0.6770, 0.7387, 0.7794, 0.8097, 0.8088, 0.8319),
        "sts14": (0.6374, 0.6800, 0.7261, 0.7588, 0.7691, 0.7902),
        "sts15": (0.7451, 0.7819, 0.7959, 0.8289, 0.8412, 0.8521),
        "sts16": (0.7059, 0.7419, 0.7778, 0.7998, 0.7931, 0.8151),
        "sickr": (0.7210, 0.7579, 0.7802, 0.7807, 0.7866, 0.7949),
        "sts_average": (0.6948, 0.7326, 0.7657, 0.7894, 0.7946, 0.8095),
        "msmarco/dev": (0.2092, 0.2692, 0.2935, 0.3160, 0.3279, 0.3341),
        "msmarco/dl19": (0.4599, 0.5527, 0.5939, 0.6185, 0.6502, 0.6404),
        "msmarco/dl20": (0.4826, 0.5487, 0.6028, 0.6259, 0.6133, 0.6410),
    },
    "BERT-2DMSE": {
        "stsb": (0.7197, 0.7311, 0.7501, 0.7721, 0.7850, 0.8196),
        "sts12": (0.6204, 0.6364, 0.6434, 0.6635, 0.7097, 0.7414),
        "sts13": (0.6747, 0.6977, 0.7061, 0.7400, 0.7422, 0.8087),
        "sts14": (0.6278, 0.6551, 0.6630, 0.6756, 0.6927, 0.7616),
        "sts15": (0.7336, 0.7637, 0.7739, 0.7949, 0.8218, 0.8417),
        "sts16": (0.7058, 0.7312, 0.7421, 0.7570, 0.7626, 0.8017),
        "sickr": (0.7066, 0.7323, 0.7522, 0.7774, 0.7832, 0.7986),
        "sts_average": (0.6841, 0.7068, 0.7187, 0.7401, 0.7568, 0.7962),
        "msmarco/dev": (0.1589, 0.2266, 0.2532, 0.2770, 0.3022, 0.3185),
        "msmarco/dl19": (0.3459, 0.4988, 0.5464, 0.5604, 0.5769, 0.6021),
        "msmarco/dl20": (0.3828, 0.5179, 0.5503, 0.5856, 0.6082, 0.6001),
    },
    "BERT-SRL": {
        "stsb": (0.7413, 0.7621, 0.7838, 0.8112, 0.8196, 0.8258),
        "sts12": (0.6789, 0.7126, 0.7158, 0.7310, 0.7346, 0.7456),
        "sts13": (0.7190, 0.7400, 0.7685, 0.7925, 0.8070, 0.8185),
        "sts14": (0.6684, 0.6900, 0.7146, 0.7397, 0.7635, 0.7752),
        "sts15": (0.7655, 0.7924, 0.8066, 0.8246, 0.8391, 0.8474),
        "sts16": (0.7309, 0.7613, 0.7762, 0.7959, 0.8003, 0.8059),
        "sickr": (0.7455, 0.7678, 0.7792, 0.7879, 0.7903, 0.7889),
        "sts_average": (0.7214, 0.7466, 0.7635, 0.7833, 0.7935, 0.8010),
        "msmarco/dev": (0.2147, 0.2722, 0.2983, 0.3159, 0.3249, 0.3266),
        "msmarco/dl19": (0.5003, 0.5653, 0.6102, 0.6342, 0.6405, 0.6550),
        "msmarco/dl20": (0.5294, 0.5853, 0.6247, 0.6344, 0.6499, 0.6518),
    },
    "SMAE-SRL": {
        "stsb": (0.7455, 0.7933, 0.8202, 0.8278, 0.8292, 0.8274),
        "sts12": (0.6854, 0.7296, 0.7374, 0.7382, 0.7405, 0.7404),
        "sts13": (0.7368, 0.7824, 0.7998, 0.8033, 0.7989, 0.7998),
        "sts14": (0.6955, 0.7444, 0.7654, 0.7736, 0.7772, 0.7789),
        "sts15": (0.7972, 0.8308, 0.8426, 0.8469, 0.8503, 0.8497),
        "sts16": (0.7459, 0.7840, 0.8029, 0.8092, 0.8138, 0.8131),
        "sickr": (0.7473, 0.7700, 0.7831, 0.7874, 0.7860, 0.7844),
        "sts_average": (0.7362, 0.7764, 0.7931, 0.7981, 0.7994, 0.7991),
        "msmarco/dev": (0.2282, 0.2950, 0.3274, 0.3369, 0.3416, 0.3403),
        "msmarco/dl19": (0.5122, 0.5766, 0.6346, 0.6525, 0.6493, 0.6558),
        "msmarco/dl20": (0.5042, 0.5920, 0.6319, 0.6292, 0.6310, 0.6358),
    },
}
TABLE_A2 = {
    "BERT": {
        "dbpedia-entity": (0.0011, 0.0000, 0.0010, 0.0020, 0.0005, 0.3018),
        "quora": (0.0001, 0.0001, 0.0821, 0.3888, 0.1195, 0.8224),
        "scidocs": (0.0013, 0.0006, 0.0017, 0.0034, 0.0040, 0.1109),
        "scifact": (0.0079, 0.0000, 0.0087, 0.0494, 0.0250, 0.4597),
        "climate-fever": (0.0000, 0.0000, 0.0000, 0.0084, 0.0000, 0.1604),
        "arguana": (0.0005, 0.0012, 0.0048, 0.0461, 0.0085, 0.2707),
        "webis-touche2020": (0.0000, 0.0000, 0.0000, 0.0000, 0.0000, 0.2337),
        "fiqa": (0.0022, 0.0000, 0.0004, 0.0030, 0.0000, 0.2200),
        "trec-covid": (0.0000, 0.0014, 0.0126, 0.0520, 0.0138, 0.6041),
        "nfcorpus": (0.0135, 0.0100, 0.0142, 0.0419, 0.0247, 0.2585),
        "fever": (0.0000, 0.0000, 0.0000, 0.0006, 0.0000, 0.6601),
        "hotpotqa": (0.0000, 0.0001, 0.0000, 0.0015, 0.0000, 0.4548),
        "average": (0.0022, 0.0011, 0.0105, 0.0498, 0.0163, 0.3798),
    },
    "BERT-Separate": {
        "dbpedia-entity": (0.1657, 0.2205, 0.2498, 0.2820, 0.3109, 0.3018),
        "quora": (0.6900, 0.7769, 0.8054, 0.8260, 0.7687, 0.8224),
        "scidocs": (0.0480, 0.0741, 0.0929, 0.1020, 0.1087, 0.1109),
        "scifact": (0.2692, 0.3809, 0.4074, 0.4688, 0.4665, 0.4597),
        "climate-fever": (0.0657, 0.0912, 0.1122, 0.1289, 0.1376, 0.1604),
        "arguana": (0.1517, 0.2032, 0.2294, 0.2416, 0.2646, 0.2707),
        "webis-touche2020": (0.1707, 0.1890, 0.2306, 0.2137, 0.2299, 0.2337),
        "fiqa": (0.0832, 0.1524, 0.1649, 0.2077, 0.2277, 0.2200),
        "trec-covid": (0.3969, 0.5089, 0.5527, 0.5650, 0.5898, 0.6041),
        "nfcorpus": (0.1607, 0.2154, 0.2191, 0.2396, 0.2543, 0.2585),
        "fever": (0.3474, 0.5084, 0.5786, 0.6321, 0.6666, 0.6601),
        "hotpotqa": (0.1620, 0.3028, 0.3718, 0.4238, 0.4652, 0.4548),
        "average": (0.2259, 0.3020, 0.3346, 0.3609, 0.3742, 0.3798),
    },
    "BERT-2DMSE": {
        "dbpedia-entity": (0.1314, 0.1915, 0.2029, 0.2223, 0.2442, 0.2552),
        "quora": (0.5291, 0.7157, 0.7587, 0.5341, 0.1566, 0.8152),
        "scidocs": (0.0414, 0.0633, 0.0692, 0.0724, 0.0807, 0.0878),
        "scifact": (0.2158, 0.3122, 0.3492, 0.3605, 0.3560, 0.3863),
        "climate-fever": (0.0582, 0.0902, 0.1070, 0.1091, 0.1305, 0.1391),
        "arguana": (0.1094, 0.1851, 0.2102, 0.2237, 0.2301, 0.2363),
        "webis-touche2020": (0.1601, 0.1807, 0.2142, 0.2342, 0.2466, 0.1936),
        "fiqa": (0.0556, 0.1164, 0.1432, 0.1558, 0.1791, 0.1851),
        "trec-covid": (0.3262, 0.4445, 0.4644, 0.5109, 0.5437, 0.5673),
        "nfcorpus": (0.1371, 0.1811, 0.1918, 0.1993, 0.2030, 0.2105),
        "fever": (0.2111, 0.4155, 0.4638, 0.5088, 0.5687, 0.5848),
        "hotpotqa": (0.1001, 0.2241, 0.2669, 0.2954, 0.3267, 0.3532),
        "average": (0.1730, 0.2600, 0.2868, 0.2855, 0.2722, 0.3345),
    },
    "BERT-SRL": {
        "dbpedia-entity": (0.1717, 0.2227, 0.2443, 0.2729, 0.2856, 0.2925),
        "quora": (0.6865, 0.7709, 0.7997, 0.8220, 0.7751, 0.3419),
        "scidocs": (0.0539, 0.0758, 0.0899, 0.0992, 0.1070, 0.1072),
        "scifact": (0.2577, 0.3616, 0.4154, 0.4600, 0.4727, 0.4826),
        "climate-fever": (0.0703, 0.0990, 0.1214, 0.1329, 0.1485, 0.1569),
        "arguana": (0.1471, 0.2028, 0.2295, 0.2449, 0.2553, 0.2533),
        "webis-touche2020": (0.1895, 0.2074, 0.2210, 0.2202, 0.2486, 0.2628),
        "fiqa": (0.0806, 0.1325, 0.1687, 0.1971, 0.2206, 0.2217),
        "trec-covid": (0.3791, 0.4838, 0.5619, 0.6103, 0.6103, 0.6294),
        "nfcorpus": (0.1622, 0.2060, 0.2185, 0.2380, 0.2460, 0.2508),
        "fever": (0.3472, 0.5009, 0.5495, 0.6056, 0.6430, 0.6470),
        "hotpotqa": (0.1698, 0.2996, 0.3580, 0.4081, 0.4439, 0.4466),
        "average": (0.2263, 0.2969, 0.3315, 0.3593, 0.3714, 0.3411),
    },
    "SMAE-SRL": {
        "dbpedia-entity": (0.1680, 0.2353, 0.2740, 0.2920, 0.2968, 0.2997),
        "quora": (0.6912, 0.7829, 0.8150, 0.7808, 0.0178, 0.8477),
        "scidocs": (0.0602, 0.0858, 0.1054, 0.1168, 0.1175, 0.1206),
        "scifact": (0.2717, 0.3857, 0.4333, 0.4538, 0.4629, 0.4715),
        "climate-fever": (0.0977, 0.1093, 0.1304, 0.1430, 0.1538, 0.1618),
        "arguana": (0.1801, 0.2273, 0.2537, 0.2651, 0.2673, 0.2734),
        "webis-touche2020": (0.2336, 0.2220, 0.2402, 0.2451, 0.2545, 0.2022),
        "fiqa": (0.1140, 0.1859, 0.2202, 0.2379, 0.2486, 0.2508),
        "trec-covid": (0.5051, 0.6180, 0.6451, 0.6672, 0.6645, 0.6140),
        "nfcorpus": (0.1768, 0.2270, 0.2609, 0.2719, 0.2733, 0.2738),
        "fever": (0.3630, 0.5243, 0.5967, 0.6243, 0.6359, 0.6275),
        "hotpotqa": (0.1711, 0.3159, 0.4044, 0.4380, 0.4466, 0.4486),
        "average": (0.2527, 0.3266, 0.3649, 0.3780, 0.3200, 0.3826),
    },
}


def _mean(values: list[float]) -> float:
  return sum(values) / len(values)


def ours(records: list[dict[str, Any]], columns) -> dict[str, dict[tuple[int, int], dict]]:
  """{label: {(layer, dim): {paper key: value}}}, seeds (runs of one label) averaged."""
  found: dict = {}
  for r in records:
    for col in columns:
      if (r["dataset"],
          r["metric"]) == (col.dataset,
                           col.metric) and col.split in (None, r["split"]) and not r.get("funnel"):
        cell = found.setdefault(r["label"], {}).setdefault((r["layer"], r["dim"]), {})
        cell.setdefault(col.paper, []).append(r["value"])
  return {
      label: {pair: {k: _mean(v) for k, v in cells.items()} for pair, cells in pairs.items()}
      for label, pairs in found.items()
  }


def _with_average(cells: dict, averaged: tuple[str, ...], key: str) -> dict:
  if all(k in cells for k in averaged):
    return {**cells, key: _mean([cells[k] for k in averaged])}
  return cells


def markdown(records: list[dict[str, Any]], table: str = "a2") -> str:
  """The table's layout with our rows (one per size and label) and the paper's beside them."""
  columns, averaged, avg_key, avg_at = LAYOUTS[table]
  paper = TABLE_A1 if table == "a1" else TABLE_A2
  keys = [c.paper for c in columns]
  keys.insert(avg_at, avg_key)
  heads = [c.header for c in columns]
  heads.insert(avg_at, "Average")
  mine = ours(records, columns)
  methods = sorted({PAPER_METHOD[l] for l in mine if l in PAPER_METHOD}) or list(DEFAULT_PAPER)
  lines = [
      "| size | (n, d) | ours / paper | " + " | ".join(heads) + " |",
      "|---|---|---|" + "---:|" * len(heads)
  ]
  cell = lambda row, k: f"{row[k]:.4f}" if k in row else "–"
  summary = {}
  for pair in sorted({p for pairs in mine.values() for p in pairs}):
    name = SIZES.get(pair, "")
    for label in sorted(mine):
      if pair in mine[label]:
        row = _with_average(mine[label][pair], averaged, avg_key)
        summary.setdefault(label, []).append(row.get(avg_key))
        lines.append(f"| {name} | {pair} | {label} | " + " | ".join(cell(row, k)
                                                                    for k in keys) + " |")
    if pair in SIZES:
      i = list(SIZES).index(pair)
      for m in methods:
        row = {k: v[i] for k, v in paper[m].items()}
        lines.append(f"| {name} | {pair} | paper {m} | " + " | ".join(cell(row, k)
                                                                      for k in keys) + " |")
  lines.append("")
  for label, avgs in summary.items():
    if None not in avgs:
      lines.append(f"Mean of the Average over {len(avgs)} sizes, {label}: {_mean(avgs):.4f}")
  for m in methods:
    lines.append(f"Mean of the Average over the six sizes, paper {m}: "
                 f"{statistics.fmean(paper[m][avg_key]):.4f}")
  return "\n".join(lines) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("table", choices=sorted(LAYOUTS))
  p.add_argument("roots", nargs="+", help="workdirs or folders of workdirs")
  p.add_argument("--label", action="append", default=[], help="RUN_DIR=LABEL (repeatable)")
  p.add_argument("--out", help="also write the table to this file")
  args = p.parse_args(argv)
  labels = dict(item.split("=", 1) for item in args.label if "=" in item)
  records = report.collect(args.roots, labels)
  if not records:
    raise InputError(f"{', '.join(args.roots)}: no results/*.json under them (a finished run has)")
  text = markdown(records, args.table)
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf8") as f:
      f.write(text)


if __name__ == "__main__":
  cli.run(main)
