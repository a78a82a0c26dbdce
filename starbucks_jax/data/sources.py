"""Row sources named in configs: local files, Hugging Face datasets, TensorFlow Datasets.

A source spec is a string:
- a path (`data/train.jsonl`), optionally with a format prefix (`jsonl:`, `tsv:`, `csv:`,
  `parquet:`, `txt:`); TSV/CSV need a header row; a text file (`.txt`) is one document per line
  (blank lines skipped) in a column named `text`; a `.gz` ending is read through gzip
  (`corpus.jsonl.gz`);
- `demo:NAME`: the small data set that ships inside the package (starbucks_jax/data/demo, written
  for the project);
- `hf:NAME[:CONFIG][@SPLIT]`: `datasets.load_dataset(NAME, CONFIG, split=SPLIT)` (default split
  train), e.g. `hf:sentence-transformers/all-nli:triplet`; NAME may be a local dataset folder;
  `read_rows(..., streaming=True)` streams it instead (`hf:HuggingFaceFW/fineweb:sample-100BT`);
- `hf:OWNER/NAME/PATH`: one data file of a Hub dataset repo (`.jsonl`/`.json`/`.csv`/`.parquet`, each
  optionally `.gz`), read by datasets' builder for its format, e.g.
  `hf:Tevatron/msmarco-passage/dl19.jsonl.gz`: the way to read a repo whose loading script
  datasets >= 4 no longer runs;
- `tfds:NAME[/CONFIG][@SPLIT]`: `tfds.data_source(...)`, e.g. `tfds:glue/stsb@validation`. Rows come back as dicts with the columns the caller asks
for, renamed through `columns` ({wanted name: name in the file}); a malformed row or a missing
column is an error naming the file and line.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import math
import os
from typing import Any, Iterator, Mapping

import numpy as np

from starbucks_jax.config_lib import ConfigError, InputError
from starbucks_jax.data import fetch

FORMATS = ("jsonl", "tsv", "csv", "parquet", "txt")
DEMO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo")


class DataError(InputError):
  """A problem with input data, naming where it is."""


def _extension(path: str) -> str:
  """'corpus.jsonl.gz' -> 'jsonl': the format's extension, under a .gz."""
  return os.path.splitext(path[:-3] if path.lower().endswith(".gz") else path)[1].lstrip(
      ".").lower()


def open_text(path: str, newline: str | None = None):
  """A text file for reading, gunzipped when its name ends in .gz."""
  if path.lower().endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf8", newline=newline)
  return open(path, encoding="utf8", newline=newline)


def text_lines(path: str) -> Iterator[tuple[int, str]]:
  """(line number, line) of a UTF-8 text file (gunzipped when .gz), each line decoded alone, so a
  byte that is not UTF-8 is a DataError naming the file and its exact line."""
  with (gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")) as f:
    for line_no, raw in enumerate(f, 1):
      try:
        yield line_no, raw.decode("utf8").replace("\r\n", "\n")
      except UnicodeDecodeError as e:
        raise DataError(f"{path}:{line_no}: byte 0x{raw[e.start]:02x} at column {e.start + 1} is "
                        "not UTF-8 (save the file as UTF-8)") from None


def _format_of(spec: str) -> tuple[str, str]:
  head, sep, rest = spec.partition(":")
  if sep and head in FORMATS:
    return head, rest
  ext = _extension(spec)
  fmt = {
      "json": "jsonl", "jsonl": "jsonl", "tsv": "tsv", "csv": "csv", "parquet": "parquet",
      "txt": "txt"
  }.get(ext)
  if fmt is None:
    raise DataError(
        f"{spec}: cannot tell the format; use a .jsonl/.tsv/.csv/.parquet/.txt file (or .gz of "
        f"one) or a prefix such as jsonl:{spec}")
  return fmt, spec


def parse_remote(spec: str) -> tuple[str, str, str | None, str]:
  """'hf:name:config@split' -> ('hf', name, config, split); 'tfds:name/config@split' likewise."""
  kind, _, rest = spec.partition(":")
  rest, _, split = rest.partition("@")
  if kind == "hf":
    name, _, config = rest.partition(":")
  else:
    name, config = rest, None
  if not name:
    raise DataError(f"{spec}: expected {kind}:NAME[...][@SPLIT]")
  return kind, name, config or None, split or "train"


HUB_FILES = "hf://datasets/"  # where an hf:OWNER/NAME/PATH spec's file is read from
_HUB_BUILDERS = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}


def load_args(spec: str) -> tuple[tuple, dict]:
  """datasets.load_dataset's (args, kwargs) for an hf: spec: a dataset (NAME[:CONFIG][@SPLIT]) or one
  file of a Hub dataset repo (OWNER/NAME/PATH), read by the builder of its format."""
  _, name, config, split = parse_remote(spec)
  if name.count("/") < 2 or os.path.exists(os.path.expanduser(name)):
    return (name, config), {"split": split}
  builder = _HUB_BUILDERS.get(_extension(name))
  if builder is None:
    raise DataError(
        f"{spec}: a file of a Hub repo must be .jsonl, .json, .csv or .parquet (or .gz of one)")
  if config or split != "train":
    raise DataError(f"{spec}: a file of a Hub repo is one table; drop the :CONFIG and @SPLIT")
  return (builder,), {"data_files": HUB_FILES + name, "split": "train"}


def resolve_spec(spec: str) -> tuple[str, str]:
  """(format, path) of a local-file spec (the file must exist); ('hf'|'tfds', spec) for the others."""
  if spec.startswith("hf:"):
    load_args(spec)
    return "hf", spec
  if spec.startswith("tfds:"):
    parse_remote(spec)
    return "tfds", spec
  if spec.startswith("demo:"):
    spec = os.path.join(DEMO_DIR, spec[len("demo:"):])
  fmt, path = _format_of(spec)
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such file{fetch.missing_hint(path)}")
  return fmt, path


def check_spec(key: str, spec: str) -> None:
  """A ConfigError naming `key` when `spec` does not resolve (a missing file, a malformed hf:/tfds: spec)."""
  try:
    resolve_spec(spec)
  except ValueError as e:
    raise ConfigError(f"{key}: {e}") from None


def jsonl_rows(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line number, object) of each non-blank line of a JSON-lines file (gzipped if .gz)."""
  for line_no, line in text_lines(path):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
    if not isinstance(row, dict):
      raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
    yield line_no, row


def _raw_rows(fmt: str, path: str) -> Iterator[tuple[int, dict[str, Any]]]:
  if fmt == "txt":
    for line_no, line in text_lines(path):
      if line.strip():
        yield line_no, {"text": line.rstrip("\n")}
  elif fmt == "jsonl":
    yield from jsonl_rows(path)
  elif fmt in ("tsv", "csv"):
    lines = (line for _, line in text_lines(path))  # decoded one by one: a bad byte names its line
    reader = csv.DictReader(lines, delimiter="\t" if fmt == "tsv" else ",",
                            quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)
    for row in reader:
      if None in row or any(v is None for v in row.values()):
        raise DataError(f"{path}:{reader.line_num}: expected {len(reader.fieldnames)} fields "
                        f"({', '.join(reader.fieldnames)})")
      yield reader.line_num, row
  elif fmt == "parquet":
    try:
      import pyarrow.parquet as pq
    except ImportError:
      raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
      yield i, row


def _remote_rows(spec: str, streaming: bool = False,
                 skip: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
  kind, name, config, split = parse_remote(spec)
  if streaming and kind != "hf":
    raise DataError(f"{spec}: streaming is for hf: sources")
  if kind == "hf":
    try:
      import datasets
    except ImportError:
      raise DataError(f"{spec}: Hugging Face datasets need `pip install datasets`") from None
    args, kwargs = load_args(spec)
    try:
      ds = datasets.load_dataset(*args, **kwargs, streaming=streaming)
      if skip:  # a streamed source resumes by skipping what was read
        ds = ds.skip(skip)
    except Exception as e:  # offline, unknown name or split
      raise DataError(
          f"{spec}: could not load ({type(e).__name__}: {str(e).splitlines()[0]}); offline, "
          "save the dataset to a local folder or file and point the spec there") from None
    for i, row in enumerate(ds, 1 + skip):
      yield i, row
    return
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise DataError(f"{spec}: TensorFlow Datasets need `pip install tensorflow-datasets`") from None
  try:
    source = tfds.data_source(name if config is None else f"{name}/{config}", split=split)
  except Exception as e:
    raise DataError(
        f"{spec}: could not load ({type(e).__name__}: {str(e).splitlines()[0]})") from None
  for i in range(skip, len(source)):
    row = source[i]
    yield i + 1, {k: v.decode("utf8") if isinstance(v, bytes) else v for k, v in row.items()}


# counted stream lengths
ROW_COUNTS = os.path.join("~", ".cache", "starbucks_jax", "row_counts.json")


def stream_length(spec: str, *, count: bool = False, cache: str | None = None) -> int | None:
  """Rows of a streamed (hf:) source without reading it whole: the dataset card's split size
  (dataset_info), else an earlier count in `cache`, else (`count`) one pass that counts every row,
  remembered in `cache`; None when none of these says."""
  kind, _, _, split = parse_remote(spec)
  if kind != "hf":
    raise DataError(f"{spec}: streaming is for hf: sources")
  args, kwargs = load_args(spec)
  try:
    import datasets
    splits = datasets.load_dataset_builder(
        *args, **{k: v for k, v in kwargs.items() if k != "split"}).info.splits or {}
    if split in splits and splits[split].num_examples:
      return int(splits[split].num_examples)
  except Exception:  # offline or no card: the cache or a count may still say
    pass
  path = os.path.expanduser(cache or ROW_COUNTS)
  counts = json.load(open(path)) if os.path.isfile(path) else {}
  if spec in counts:
    return int(counts[spec])
  if not count:
    return None
  counts[spec] = sum(1 for _ in _remote_rows(spec, streaming=True))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(counts, f, indent=1, sort_keys=True)
  os.replace(path + ".tmp", path)
  return counts[spec]


def read_rows(spec: str, fields: Mapping[str, type], columns: Mapping[str, str] | None = None, *,
              streaming: bool = False, skip: int = 0,
              optional: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
  """Rows of a source with `fields` ({name: type}), columns renamed by `columns`. `streaming` (hf:
  only) reads lazily; `skip` rows are passed over first (how a streamed source resumes); a field
  named in `optional` may be missing (its type then sees None)."""
  fmt, path = resolve_spec(spec)
  columns = dict(columns or {})
  if fmt in ("hf", "tfds"):
    rows = _remote_rows(spec, streaming, skip)
  else:
    if streaming:
      raise DataError(f"{spec}: streaming is for hf: sources; a local file is read whole")
    rows = itertools.islice(_raw_rows(fmt, path), skip, None)
  for line_no, row in rows:
    out = {}
    for name, kind in fields.items():
      col = columns.get(name, name)
      if col not in row and name not in optional:
        raise DataError(f"{path}:{line_no}: no column {col!r} (have {sorted(row)}); map it with "
                        f"columns.{name}=<column>")
      value = row.get(col)
      try:
        out[name] = typed(value, kind)
      except (TypeError, ValueError) as e:
        raise DataError(f"{path}:{line_no}: column {col!r} = {_short(value)} {e}" +
                        ("; remove the row or fill it" if kind is str else "")) from None
    yield out


def typed(value: Any, kind) -> Any:
  """`value` as a field of `kind`: str (a non-empty text, never a number or null made into one),
  float (finite; a CSV's text is parsed), list (a list, never a string split into characters), or a
  callable that returns the value or raises ValueError / TypeError saying what is wrong."""
  if kind is str:
    if not isinstance(value, str):
      raise TypeError(f"is {_kind_name(value)}, not a text")
    if not value.strip():
      raise ValueError("is an empty text")
    return value
  if kind is float:
    if isinstance(value, np.ndarray) and value.ndim == 0:  # TensorFlow Datasets' scalars
      value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, str, np.number)):
      raise TypeError(f"is {_kind_name(value)}, not a number")
    try:
      number = float(value)
    except ValueError:
      raise ValueError("is not a number") from None
    if not math.isfinite(number):
      raise ValueError("is not a finite number")
    return number
  if kind is list:
    if not isinstance(value, (list, tuple, np.ndarray)):
      raise TypeError(f"is {_kind_name(value)}, not a list")
    return list(value)
  return kind(value)


def _kind_name(value: Any) -> str:
  return "null" if value is None else f"a {type(value).__name__}"


def _short(value: Any, limit: int = 60) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."
