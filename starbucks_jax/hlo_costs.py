"""Bytes and FLOPs of a compiled program, instruction by instruction, read from its optimized HLO
(parsed by hlo.py).

XLA's cost analysis (`compiled.cost_analysis()`) gives one total per program and counts the body
of a while loop once, whatever its trip count (a scan over microbatches or gradient-cache chunks).
Here every executed instruction is costed the way that analysis costs it -- the bytes of its
operands and outputs at their tiled (padded) sizes, a fusion's operands read once (only the slice
of an operand it only slices), the matmul FLOPs of each dot and convolution, one FLOP per element
of each elementwise or reduced value -- and multiplied by the trips of the loops around it (read
from each loop's condition). A conditional counts its costliest branch, as XLA's analysis does.
`Costs.xla_like()` (loop bodies once) lets a caller check the reading against XLA's own totals;
`Costs.by_category()` is the per-step breakdown (matmuls, attention, layer norm, optimizer, ...).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

from starbucks_jax.hlo import ARRAY, BYTES, Instruction, Module, array_bytes, dims_of, elements

# Instructions that move no data of their own (or whose callees are costed instead).
_FREE = {
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "opt-barrier",
    "partition-id", "replica-id", "while", "conditional", "call", "domain", "add-dependency"
}
_ASYNC_DONE = re.compile(r"-done$")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all",
               "collective-broadcast", "ragged-all-to-all")
_TRANSCENDENTAL = {
    "exponential", "exponential-minus-one", "log", "log-plus-one", "tanh", "logistic", "sqrt",
    "rsqrt", "cbrt", "power", "sine", "cosine", "tan", "atan2", "erf", "erf-inv"
}
_NO_FLOPS = {
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "broadcast", "reshape",
    "transpose", "copy", "slice", "dynamic-slice", "dynamic-update-slice", "concatenate", "pad",
    "iota", "convert", "bitcast-convert", "gather", "scatter", "reverse", "select", "clamp",
    "compare", "and", "or", "xor", "not", "shift-left", "shift-right-logical",
    "shift-right-arithmetic", "copy-start", "copy-done", "custom-call", "fusion",
    "rng-bit-generator", "rng-get-and-update-state", "sort", "while", "conditional", "call",
    "after-all", "partition-id", "replica-id", "opt-barrier", "infeed", "outfeed"
}


@dataclasses.dataclass(frozen=True)
class Cost:
  """One executed instruction: its bytes and FLOPs per execution, and how often it runs per step."""
  name: str
  opcode: str
  op_name: str
  bytes: float  # operands + outputs, tiled sizes
  hbm_bytes: float  # of those, arrays in the default memory space (HBM); the rest are on-chip
  flops: float
  ici_bytes: float  # what this device sends to others (collectives), logical sizes
  trips: int  # executions per step (product of the trip counts of the loops around it)
  in_loop: bool


class Costs(list):
  """Cost per executed instruction (a list of Cost) with totals and the per-category breakdown."""
  def total(self, field: str = "bytes") -> float:
    return sum(getattr(c, field) * c.trips for c in self)

  def xla_like(self, field: str = "bytes") -> float:
    """The total with every loop body counted once, as XLA's cost analysis counts it."""
    return sum(getattr(c, field) for c in self)

  def uncosted_flops(self) -> float:
    """The FLOPs of the kernels XLA's cost analysis counts as none (splash attention: no cost
    estimate), loop bodies once, as XLA counts."""
    return sum(c.flops for c in self if c.name.startswith(SPLASH))

  def by_category(self) -> dict[str, dict[str, float]]:
    out = collections.defaultdict(
        lambda: {"bytes": 0.0, "hbm_bytes": 0.0, "flops": 0.0, "ici_bytes": 0.0, "instructions": 0})
    for c in self:
      row = out[category(c)]
      for field in ("bytes", "hbm_bytes", "flops", "ici_bytes"):
        row[field] += getattr(c, field) * c.trips
      row["instructions"] += 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["bytes"]))

  unread_loops: tuple[str, ...] = ()  # while loops whose trip count was not found (counted once)

  @property
  def loops(self) -> dict[int, int]:
    """{trips: instructions} of the instructions inside loops."""
    return dict(collections.Counter(c.trips for c in self if c.in_loop))


def costs(text: str, devices: int = 1) -> Costs:
  """Every instruction the program executes per step, with its bytes, FLOPs and trip multiplicity;
  `devices`: the program's device count (a collective without replica groups spans them all)."""
  module = Module.parse(text)
  module.devices = devices
  out = Costs()
  unknown = []
  _walk(module, module.entry, 1, False, out, unknown)
  out.unread_loops = tuple(unknown)
  return out


def _walk(module: Module, computation: str, trips: int, in_loop: bool, out: list,
          unknown: list) -> None:
  for ins in module.computations[computation]:
    if ins.opcode == "while":
      n = module.trip_count(ins)
      if n is None:
        unknown.append(ins.name)
        n = 1
      for key in ("body", "condition"):
        _walk(module, ins.attr(key), trips * n, True, out, unknown)
      continue
    if ins.opcode == "conditional":
      branches = _branches(ins)
      costed = []
      for b in branches:
        part = Costs()
        _walk(module, b, trips, in_loop, part, unknown)
        costed.append(part)
      if costed:
        out.extend(max(costed, key=lambda p: (p.xla_like("flops") + p.xla_like("bytes"))))
      continue
    if ins.opcode == "call":
      _walk(module, ins.attr("to_apply"), trips, in_loop, out, unknown)
      continue
    if ins.opcode == "async-start" and ins.attr("calls") in module.computations:
      _walk(module, ins.attr("calls"), trips, in_loop, out, unknown)
      continue
    if ins.opcode in _FREE or _ASYNC_DONE.search(ins.opcode):
      continue
    total, hbm = _bytes(module, ins)
    out.append(
        Cost(ins.name, ins.opcode, ins.op_name, total, hbm, _flops(module, ins),
             _ici_bytes(module, ins), trips, in_loop))


def _branches(ins: Instruction) -> list[str]:
  listed = ins.attr("branch_computations")
  if listed:
    return [b.strip().lstrip("%") for b in listed.strip("{}").split(",")]
  return [b for b in (ins.attr("true_computation"), ins.attr("false_computation")) if b]


def _bytes(module: Module, ins: Instruction) -> tuple[float, float]:
  """Operands + outputs of one instruction, tiled; async starts count their source and one destination."""
  outputs = array_bytes(ins.type)
  # (destination, source, context): the copy reads and writes its size
  if ins.opcode == "copy-start":
    (size, dst), (_, src) = outputs[:2]
    return 2 * size, size * ((dst == 0) + (src == 0))
  # ((operand), slice, context): the slice read from the operand, written out
  if ins.opcode == "slice-start":
    (_, src), (size, dst) = outputs[:2]
    return 2 * size, size * ((dst == 0) + (src == 0))
  if ins.opcode.endswith("-start"):
    outputs = outputs[len(ins.operands):][:len(ins.operands)]
  # an output that aliases an operand is that operand's buffer passed through or updated in place
  # (async collective fusions, in-place updates): neither is read or written whole
  aliased = re.findall(r"\{(\d*)\}: \((\d+), \{\}\)", ins.attr("output_to_operand_aliasing") or "")
  skip_out = {int(o) if o else 0 for o, _ in aliased}
  skip_in = {int(i) for _, i in aliased}
  outputs = [x for k, x in enumerate(outputs) if k not in skip_out]
  operands = []
  fused = ins.attr("calls") if ins.opcode == "fusion" else None
  for i, name in enumerate(ins.operands):
    if i in skip_in:
      continue
    sizes = array_bytes(module.types.get(name, ""))
    read = _parameter_read(module, fused, i) if fused else None
    if read is not None and sizes:
      sizes = [(read, sizes[0][1])]
    operands += sizes
  fused = module.computations.get(fused or "", [])
  if fused and fused[-1].opcode == "dynamic-update-slice" and len(fused[-1].operands) > 1:
    update = array_bytes(module.types.get(fused[-1].operands[1], ""))
    outputs = [(b, outputs[0][1] if outputs else 0) for b, _ in update]
  arrays = operands + outputs
  return sum(b for b, _ in arrays), sum(b for b, s in arrays if s == 0)


def _parameter_read(module: Module, computation: str, index: int) -> float | None:
  """Bytes a fusion reads of its operand `index` when it reads only slices of it (sliced, dynamically
  sliced, or updated in place, also through nested fusions); None when it reads the whole operand."""
  body = module.computations.get(computation, [])
  param = next((p for p in body if p.opcode == "parameter" and p.literal == str(index)), None)
  if param is None:
    return None
  total = 0.0
  users = [(u, j) for u in body for j, o in enumerate(u.operands) if o == param.name]
  if not users:
    return 0.0
  for user, j in users:
    if user.opcode in ("slice", "dynamic-slice") and j == 0:
      total += sum(b for b, _ in array_bytes(user.type))
    elif user.opcode == "dynamic-update-slice" and j == 0:
      continue  # updated in place: the update is counted as the fusion's output
    elif user.opcode == "fusion":
      nested = _parameter_read(module, user.attr("calls") or "", j)
      if nested is None:
        return None
      total += nested
    else:
      return None
  return total


def _flops(module: Module, ins: Instruction) -> float:
  if ins.opcode == "fusion":
    return sum(_flops(module, f) for f in module.computations.get(ins.attr("calls") or "", []))
  if ins.opcode == "dot":
    contracting = ins.attr("lhs_contracting_dims") or "{}"
    lhs = dims_of(module.types.get(ins.operands[0], ""))
    k = math.prod(lhs[int(d)] for d in contracting.strip("{}").split(",") if d)
    return 2.0 * elements(ins.type) * k
  if ins.opcode == "convolution":
    return _convolution_flops(module, ins)
  if ins.opcode == "custom-call":
    if 'custom_call_target="__cudnn$fmha' in ins.attrs:
      return _cudnn_attention_flops(module, ins)
    if ins.name.startswith(SPLASH):
      return _splash_attention_flops(module, ins)
    # a Pallas kernel states its cost (pl.CostEstimate), as XLA reads it
    m = re.search(r'"cost_estimate":\{"flops":"(\d+)"', ins.attrs)
    return float(m.group(1)) if m else 0.0
  if ins.opcode == "reduce" or ins.opcode == "reduce-window":
    return float(
        sum(
            elements(module.types.get(o, ""))
            for o in ins.operands[:max(len(ins.operands) // 2, 1)]))
  if ins.opcode in _NO_FLOPS or ins.opcode in _TRANSCENDENTAL:
    return 0.0
  return float(elements(ins.type))


def _cudnn_attention_flops(module: Module, ins: Instruction) -> float:
  """cuDNN's fused attention, a custom call without a cost estimate: the forward's two matmuls (scores
  and context: 2 x 2*B*H*Tq*Tk*head_dim), the backward's five (a flash backward recomputes the scores)."""
  m = re.search(
      r'"intermediate_tensor_shape":\s*\{"element_type":\s*"\w+",\s*"dimensions":\s*'
      r'\["(\d+)",\s*"(\d+)",\s*"(\d+)",\s*"(\d+)"\]', ins.attrs)
  if not m:
    return 0.0
  head_dim = dims_of(module.types.get(ins.operands[0], ""))[-1]
  matmuls = 5 if re.search(r'custom_call_target="__cudnn\$fmha\w*Backward"', ins.attrs) else 2
  return matmuls * 2.0 * math.prod(int(x) for x in m.groups()) * head_dim


# matmuls per visited block of jax's splash-attention kernels: forward q k^T and p v; dq recomputes
# the scores, then dp = do v^T, dq = ds k; dkv recomputes them, then dv = p^T do, dp, dk = ds^T q
_SPLASH_MATMULS = {"fwd": 2, "dq": 3, "dkv": 4}
SPLASH = "splash_mha_"  # the start of a splash kernel's instruction names


def _splash_attention_flops(module: Module, ins: Instruction) -> float:
  """jax's splash attention, a Pallas kernel without a cost estimate: its grid of visited (q, kv)
  blocks is the shape of its first operand (the block-sparse mask's next-block table: [1, q blocks,
  kv blocks visited] forward and dq, [1, q blocks visited, kv blocks] dkv), each block T / (the
  unshrunk axis) square; per block 2 * block^2 * head_dim FLOPs a matmul, for every (batch, head) of
  its q operand [B, H, T, head_dim]. Without the table: one block of T."""
  kind = ins.name.removeprefix(SPLASH).split("_")[0]
  q = dims_of(module.types.get(ins.operands[2], "")) if len(ins.operands) > 2 else []
  table = dims_of(module.types.get(ins.operands[0], "")) if ins.operands else []
  if kind not in _SPLASH_MATMULS or len(q) != 4:
    return 0.0
  B, H, T, D = q
  pairs, blocks = (table[1] * table[2], max(table[1:])) if len(table) == 3 else (1, 1)
  block = T / blocks  # the table's unshrunk axis: every block of one side
  return _SPLASH_MATMULS[kind] * 2.0 * B * H * pairs * block * block * D


def _logical_bytes(type_text: str) -> float:
  return float(
      sum(
          math.prod(int(d) for d in dims.split(",") if d) * BYTES.get(dtype, 4)
          for dtype, dims, _ in ARRAY.findall(type_text)))


def group_size(ins: Instruction, devices: int) -> int:
  """Devices in each of a collective's groups: {{0,1},{2,3}}, the iota form [groups,size]<=[n], or
  the mesh form mesh['a'=4,'b'=2] {'a'}; no groups: every device."""
  text = ins.attrs
  m = re.search(r"replica_groups=\{\{([0-9,]*)\}", text)
  if m:
    return len(m.group(1).split(","))
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", text)
  if m:
    return int(m.group(2))
  m = re.search(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", text)
  if m:
    sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
    return math.prod(int(sizes[a]) for a in re.findall(r"'([^']+)'", m.group(2)) if a in sizes)
  m = re.search(r"source_target_pairs=", text)
  return 2 if m else devices


def _ici_bytes(module: Module, ins: Instruction) -> float:
  """Bytes one device sends in a collective (ring algorithms: an all-reduce of S bytes over n devices
  sends 2 (n-1)/n S, an all-gather or reduce-scatter (n-1)/n of the whole, a permute its operand);
  a fusion's collectives inside it included."""
  if ins.opcode == "fusion":
    return sum(_ici_bytes(module, f) for f in module.computations.get(ins.attr("calls") or "", []))
  kind = next((k for k in COLLECTIVES if ins.opcode.startswith(k)), None)
  if kind is None or ins.opcode.endswith("-done"):
    return 0.0
  operands = sum(_logical_bytes(module.types.get(o, "")) for o in ins.operands)
  if kind == "collective-permute":
    return operands
  n = group_size(ins, module.devices)
  share = (n - 1) / n if n > 1 else 0.0
  if kind == "all-reduce":
    return 2 * share * operands
  if kind == "all-gather":
    return share * operands * n  # the gathered whole
  return share * operands  # reduce-scatter, all-to-all: the input


def _convolution_flops(module: Module, ins: Instruction) -> float:
  """2 x the multiply-adds of a convolution, counting only kernel positions that land on real input
  elements (padding, strides and dilations as XLA's cost analysis counts them)."""
  m = re.search(r"dim_labels=([\w\-]+->\w+)", ins.attrs)
  labels = m.group(1) if m else None
  lhs_shape, rhs_shape = (dims_of(module.types.get(o, "")) for o in ins.operands[:2])
  out_shape = dims_of(ins.type)
  if not labels or not lhs_shape:
    return 0.0
  lhs_l, rest = labels.split("_", 1)
  rhs_l, out_l = rest.split("->")
  spatial = sorted(c for c in lhs_l if c.isdigit())  # window entries are in spatial-dimension order
  window = {}
  m = re.search(r"window=\{([^}]*)\}", ins.attrs)
  for part in (m.group(1).split() if m else []):
    key, value = part.split("=")
    window[key] = value.split("x")
  groups = int(ins.attr("feature_group_count") or 1)
  batch_groups = int(ins.attr("batch_group_count") or 1)
  valid = []
  for i, s in enumerate(spatial):
    size = int(window["size"][i]) if "size" in window else rhs_shape[rhs_l.index(s)]
    stride = int(window.get("stride", ["1"] * len(spatial))[i])
    dilate = int(window.get("rhs_dilate", ["1"] * len(spatial))[i])
    base = int(window.get("lhs_dilate", ["1"] * len(spatial))[i])
    pad_low = int(window["pad"][i].split("_")[0]) if "pad" in window else 0
    n_in, n_out = lhs_shape[lhs_l.index(s)], out_shape[out_l.index(s)]
    count = 0
    for k in range(size):
      for o in range(n_out):
        j = o * stride - pad_low + k * dilate
        if j % base == 0 and 0 <= j // base < n_in:
          count += 1
    valid.append(count)
  features_in = lhs_shape[lhs_l.index("f")]
  features_out = out_shape[out_l.index("f")]
  batch = lhs_shape[lhs_l.index("b")]
  return 2.0 * (features_in // groups) * features_out * (batch // batch_groups) * math.prod(valid)


# ---------------------------------------------------------------------------------------------
# Categories
# ---------------------------------------------------------------------------------------------
CATEGORIES = ("collectives", "optimizer", "attention", "matmuls", "layer norm", "dropout",
              "embeddings", "loss and heads", "copies", "other")


def category(c: Cost) -> str:
  """The part of the step an instruction belongs to, from its opcode and its JAX op_name (the
  modules' names and the step's named scopes: 'optimizer', 'loss')."""
  op, name = c.opcode, c.op_name
  if any(op.startswith(k) for k in COLLECTIVES):
    return "collectives"
  if "optimizer/" in name or "/cond/branch" in name:
    return "optimizer"
  if "/attention/self/" in name and not re.search(r"/self/(query|key|value)/", name):
    return "attention"
  if "Dropout" in name:
    return "dropout"
  if "LayerNorm" in name:
    return "layer norm"
  if "/embeddings/" in name:
    return "embeddings"
  if c.flops > 0 and op in ("fusion", "convolution", "dot") and re.search(
      r"dense|/query/|/key/|/value/|dot_general", name):
    return "matmuls"
  if "loss/" in name or "mlm_head" in name or "MlmHead" in name or "MaeDecoder" in name:
    return "loss and heads"
  if op in ("copy", "copy-start", "transpose", "slice-start"):
    # between HBM and on-chip memory (the compiler's prefetches and evictions), or layouts
    return "copies"
  return "other"
