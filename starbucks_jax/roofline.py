"""The roofline of a compiled step: what each chip offers, and the least time a program can take on it.

A step needs at least max(FLOPs / peak, HBM bytes / HBM bandwidth, ICI bytes / ICI bandwidth): the
three terms are lower bounds, each assuming its unit runs flat out and the others overlap with it.
The counts come from the compiled program (hlo_costs: every loop body once per trip). MFU divides
the model's FLOPs (forward + backward of the trained layers, no recomputation) by peak x time; HFU
divides the FLOPs the program executes (recomputed forwards of remat, the gradient cache and the
SMAE heads included). Both are bounds: a real step is slower than its roofline.

Two memory terms are reported. XLA's cost analysis counts the bytes every instruction reads and
writes in any memory; on a TPU the compiler keeps many of those arrays in on-chip memory (layout
memory space S(1): VMEM), which HBM bandwidth does not limit. The bound uses the HBM bytes (arrays in
the default memory space, and every copy between it and on-chip memory); `*_all_memories` reads
all of XLA's bytes as HBM traffic, the pessimistic reading earlier tables used.
"""

from __future__ import annotations

import dataclasses
from typing import Any

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip, as its vendor publishes it (`source`); per chip, not per core."""
  hbm_bytes: float  # HBM capacity
  peak_flops: float  # dense bf16 FLOP/s
  hbm_bandwidth: float  # bytes/s
  # bytes/s the chip can send at once over all its interconnect links (one direction)
  ici_bandwidth: float
  source: str


# Keyed by jax's device_kind. ICI: the vendor's per-chip figure in one direction (Cloud TPU pages give
# v5e 1,600 Gbps and v6e 3,200 Gbps one way, i.e. 400 / 800 GB/s bidirectional; v5p 4,800 Gbps).
CHIPS = {
    "TPU v4": Chip(
        32 * GiB, 275e12, 1228e9, 6 * 50e9,
        "cloud.google.com/tpu/docs/v4; ICI: 6 links x 50 GB/s (Jouppi et al., ISCA 2023)"),
    "TPU v5 lite": Chip(16 * GiB, 197e12, 819e9, 1600e9 / 8, "cloud.google.com/tpu/docs/v5e"),
    "TPU v5": Chip(95 * GiB, 459e12, 2765e9, 4800e9 / 8, "cloud.google.com/tpu/docs/v5p"),
    "TPU v6 lite": Chip(32 * GiB, 918e12, 1640e9, 3200e9 / 8, "cloud.google.com/tpu/docs/v6e"),
    # NVIDIA's SXM parts: dense bf16 (half the datasheet's with-sparsity figure); NVLink per GPU one way
    # (half the both-ways figure NVIDIA quotes); memory size as the driver reports it (gpu_targets)
    "NVIDIA A100-SXM4-80GB": Chip(
        85100068864, 312e12, 2.039e12, 300e9,
        "nvidia.com A100 datasheet (SXM4 80GB; NVLink 3: 600 GB/s both ways)"),
    "NVIDIA H100 80GB HBM3": Chip(84942979072, 989e12, 3.35e12, 450e9,
                                  "nvidia.com H100 datasheet (SXM5)"),
    "NVIDIA H200 141GB HBM3e": Chip(151397597184, 989e12, 4.8e12, 450e9,
                                    "nvidia.com H200 datasheet (SXM)"),
    "NVIDIA B200": Chip(
        191514411008, 2.25e15, 7.67e12, 900e9,
        "nvidia.com HGX B200 (4.5 PFLOP/s bf16 with sparsity; NVLink 5: 1.8 TB/s both ways)"),
}


def roofline(r: dict[str, Any], peak_flops: float, hbm_bandwidth: float,
             ici_bandwidth: float) -> dict[str, Any]:
  """Adds the bound to a report with `flops` (executed, loops counted), `model_flops`, `hbm_bytes`,
  `bytes_accessed` (XLA's count, loops counted) and `ici_bytes`, all per device; bandwidths and peak
  per device."""
  compute = r["flops"] / peak_flops
  hbm = r["hbm_bytes"] / hbm_bandwidth
  ici = r["ici_bytes"] / ici_bandwidth if r["ici_bytes"] else 0.0
  terms = {"compute": compute, "hbm": hbm, "ici": ici}
  bound_by = max(terms, key=terms.get)
  seconds = terms[bound_by]
  pessimistic = max(compute, r["bytes_accessed"] / hbm_bandwidth, ici)
  util = lambda flops, s: flops / (s * peak_flops) if s else None
  return {
      **r, "compute_seconds": compute, "hbm_seconds": hbm, "ici_seconds": ici,
      "roofline_seconds": seconds, "bound": bound_by, "mfu_bound": util(r["model_flops"], seconds),
      "hfu_bound": util(r["flops"], seconds), "roofline_seconds_all_memories": pessimistic,
      "mfu_bound_all_memories": util(r["model_flops"], pessimistic)
  }
