"""A compiled program's optimized HLO text, parsed: its computations, instructions, result types
and loop trip counts, and the tiled byte size of an HLO type. What hlo_costs.py costs."""

from __future__ import annotations

import dataclasses
import math
import re

BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
    "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
    "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "s4": 0.5, "u4": 0.5, "token": 0
}
ARRAY = re.compile(r"\b(pred|bf16|c64|c128|f8e\w+|token|[suf]\d+)\[([0-9,]*)\](?:\{([^}]*)\})?")
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$")
_HEADER = re.compile(r"(ENTRY )?%?([\w.\-]+) ")


def array_bytes(type_text: str) -> list[tuple[float, int]]:
  """(bytes, memory space) of every array in an HLO type, each dimension padded to its layout's
  first tile (T(8,128): the two most-minor dimensions to multiples of 8 and 128), as XLA sizes them."""
  out = []
  for dtype, dims_text, layout in ARRAY.findall(type_text):
    dims = [int(d) for d in dims_text.split(",") if d]
    space = 0
    if layout:
      m = re.search(r"S\((\d+)\)", layout)
      space = int(m.group(1)) if m else 0
      order = [int(x) for x in layout.split(":")[0].split(",") if x.strip().isdigit()]
      tile = re.search(r"T\(([0-9,]+)\)", layout)
      if tile and dims and len(order) == len(dims):
        # the tile's last entry pads the most-minor dimension, the one before it the next, ...
        sizes = [int(x) for x in tile.group(1).split(",")][::-1]
        for axis, size in zip(order, sizes):
          dims[axis] = -(-dims[axis] // size) * size
    out.append((math.prod(dims) * BYTES.get(dtype, 4), space))
  return out


def elements(type_text: str) -> int:
  """Elements of every array in an HLO type (untiled)."""
  return sum(
      math.prod(int(d) for d in dims.split(",") if d) for _, dims, _ in ARRAY.findall(type_text))


def dims_of(type_text: str) -> list[int]:
  """The dimensions of the first array in an HLO type."""
  m = ARRAY.search(type_text)
  return [int(d) for d in m.group(2).split(",") if d] if m else []


def _joined_lines(text: str) -> list[str]:
  """The HLO text's lines, an instruction whose attributes span several lines (a Pallas kernel's
  metadata: a line may even start with '}}, metadata=') joined into one: only a computation's
  header or its closing '}' starts a line at column 0."""
  out: list[str] = []
  for line in text.splitlines():
    header = _HEADER.match(line) and line.rstrip().endswith("{")
    if out and out[-1].startswith(" ") and not line.startswith(" ") and line.rstrip() != "}" \
        and not header:
      out[-1] += line
    else:
      out.append(line)
  return out


def _split_call(rest: str) -> tuple[str, str]:
  """'a, b), attr=..' -> ('a, b', ', attr=..'): the operand list up to its closing parenthesis."""
  depth = 0
  for i, ch in enumerate(rest):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      if depth == 0:
        return rest[:i], rest[i + 1:]
      depth -= 1
  return rest, ""


@dataclasses.dataclass
class Instruction:
  name: str
  type: str  # result type text (with layouts)
  opcode: str
  operands: list[str]  # operand instruction names
  attrs: str  # everything after the operand list
  literal: str = ""  # the text inside the parentheses (a constant's value, a parameter's index)

  @property
  def op_name(self) -> str:
    m = re.search(r'op_name="([^"]*)"', self.attrs)
    return m.group(1) if m else ""

  def attr(self, key: str) -> str | None:
    """An attribute's value: a name (without %), or a braced value with its nested braces."""
    m = re.search(rf"\b{key}=", self.attrs)
    if not m:
      return None
    rest = self.attrs[m.end():]
    if not rest.startswith("{"):
      m = re.match(r"%?([\w.\-]+)", rest)
      return m.group(1) if m else None
    depth = 0
    for i, ch in enumerate(rest):
      depth += {"{": 1, "}": -1}.get(ch, 0)
      if depth == 0:
        return rest[:i + 1]
    return rest


@dataclasses.dataclass
class Module:
  computations: dict[str, list[Instruction]]
  entry: str
  types: dict[str, str]  # instruction name -> result type
  devices: int = 1  # the devices a collective without replica groups spans

  @classmethod
  def parse(cls, text: str) -> "Module":
    comps, current, entry = {}, None, None
    for line in _joined_lines(text):
      if not line.startswith(" "):
        m = _HEADER.match(line)
        if m and line.rstrip().endswith("{"):
          current = comps.setdefault(m.group(2), [])
          entry = m.group(2) if m.group(1) else entry
        elif line.startswith("}"):
          current = None
        continue
      m = _INSTRUCTION.match(line)
      if m and current is not None:
        operands, attrs = _split_call(m.group(4))
        current.append(
            Instruction(m.group(1), m.group(2), m.group(3), re.findall(r"%([\w.\-]+)", operands),
                        attrs, operands.strip()))
    if entry is None:
      raise ValueError("no ENTRY computation in the HLO text")
    return cls(comps, entry, {i.name: i.type for c in comps.values() for i in c})

  def trip_count(self, loop: Instruction) -> int | None:
    """A while loop's trips: the backend's known_trip_count, else the bound of its condition's
    `counter < constant` (jax's scan and fori_loop count up from 0 in steps of 1)."""
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"', loop.attrs)
    if m:
      return int(m.group(1))
    condition = self.computations.get(loop.attr("condition") or "", [])
    by_name = {i.name: i for i in condition}
    root = condition[-1] if condition else None
    if root is None or root.opcode != "compare" or "direction=LT" not in root.attrs:
      return None
    bound = by_name.get(root.operands[1]) if len(root.operands) == 2 else None
    if bound is None or bound.opcode != "constant" or not re.fullmatch(r"\d+", bound.literal):
      return None
    return int(bound.literal)
