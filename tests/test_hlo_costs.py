"""hlo_costs on hand-written HLO, each figure worked out by hand: tiled sizes and memory spaces, a loop
body counted once per trip, a fusion that reads only a slice, the costlier branch of a conditional,
collectives' bytes per device, matmul FLOPs of dots and convolutions, categories. (A TPU compile of
a real loop is in test_compile.py.)"""

import pytest

from starbucks_jax import hlo
from starbucks_jax import hlo_costs as H

MODULE = """HloModule m

%slice_it (p0: f32[4,8,128], p1: s32[]) -> f32[8,128] {
  %p0 = f32[4,8,128]{2,1,0:T(8,128)} parameter(0)
  %p1 = s32[]{:T(128)} parameter(1)
  %z = s32[]{:T(128)} constant(0)
  %ds = f32[1,8,128]{2,1,0:T(8,128)} dynamic-slice(%p0, %p1, %z, %z), dynamic_slice_sizes={1,8,128}
  ROOT %b = f32[8,128]{1,0:T(8,128)} bitcast(%ds)
}

%matmul (q0: f32[8,128], q1: f32[128,256]) -> f32[8,256] {
  %q0 = f32[8,128]{1,0:T(8,128)} parameter(0)
  %q1 = f32[128,256]{1,0:T(8,128)} parameter(1)
  ROOT %d = f32[8,256]{1,0:T(8,128)} dot(%q0, %q1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(step)/encoder/layer_0/output/dense/dot_general"}
}

%body (t: (s32[], f32[4,8,128], f32[128,256])) -> (s32[], f32[4,8,128], f32[128,256]) {
  %t = (s32[]{:T(128)}, f32[4,8,128]{2,1,0:T(8,128)}, f32[128,256]{1,0:T(8,128)}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%t), index=0
  %x = f32[4,8,128]{2,1,0:T(8,128)} get-tuple-element(%t), index=1
  %w = f32[128,256]{1,0:T(8,128)} get-tuple-element(%t), index=2
  %row = f32[8,128]{1,0:T(8,128)S(1)} fusion(%x, %i), kind=kLoop, calls=%slice_it
  %y = f32[8,256]{1,0:T(8,128)} fusion(%row, %w), kind=kOutput, calls=%matmul, metadata={op_name="jit(step)/encoder/layer_0/output/dense/dot_general"}
  %one = s32[]{:T(128)} constant(1)
  %next = s32[]{:T(128)} add(%i, %one)
  ROOT %r = (s32[]{:T(128)}, f32[4,8,128]{2,1,0:T(8,128)}, f32[128,256]{1,0:T(8,128)}) tuple(%next, %x, %w)
}

%cond (c: (s32[], f32[4,8,128], f32[128,256])) -> pred[] {
  %c = (s32[]{:T(128)}, f32[4,8,128]{2,1,0:T(8,128)}, f32[128,256]{1,0:T(8,128)}) parameter(0)
  %ci = s32[]{:T(128)} get-tuple-element(%c), index=0
  %four = s32[]{:T(128)} constant(4)
  ROOT %lt = pred[]{:T(512)} compare(%ci, %four), direction=LT
}

%cheap (a: f32[128,256]) -> f32[128,256] {
  ROOT %a = f32[128,256]{1,0:T(8,128)} parameter(0)
}

%costly (e: f32[128,256]) -> f32[128,256] {
  %e = f32[128,256]{1,0:T(8,128)} parameter(0)
  %m = f32[128,256]{1,0:T(8,128)} multiply(%e, %e), metadata={op_name="jit(step)/optimizer/cond/branch_1_fun/mul"}
  ROOT %s = f32[128,256]{1,0:T(8,128)} add(%m, %e), metadata={op_name="jit(step)/optimizer/cond/branch_1_fun/add"}
}

ENTRY %main (x: f32[4,8,128], w: f32[128,256], ok: pred[]) -> f32[128,256] {
  %x = f32[4,8,128]{2,1,0:T(8,128)} parameter(0)
  %w = f32[128,256]{1,0:T(8,128)} parameter(1)
  %ok = pred[] parameter(2)
  %zero = s32[]{:T(128)} constant(0)
  %init = (s32[]{:T(128)}, f32[4,8,128]{2,1,0:T(8,128)}, f32[128,256]{1,0:T(8,128)}) tuple(%zero, %x, %w)
  %loop = (s32[]{:T(128)}, f32[4,8,128]{2,1,0:T(8,128)}, f32[128,256]{1,0:T(8,128)}) while(%init), condition=%cond, body=%body
  %g = f32[128,256]{1,0:T(8,128)} all-reduce(%w), channel_id=1, replica_groups={{0,1,2,3}}, to_apply=%cheap
  %h = f32[5,5]{1,0:T(8,128)} all-gather(%w), channel_id=2, replica_groups=[2,4]<=[8], dimensions={0}
  ROOT %u = f32[128,256]{1,0:T(8,128)} conditional(%ok, %g, %g), true_computation=%costly, false_computation=%cheap
}
"""


def test_tiled_sizes_and_memory_spaces():
  # 32 columns padded to 128
  assert hlo.array_bytes("f32[8,32]{1,0:T(8,128)}") == [(8 * 128 * 4, 0)]
  assert hlo.array_bytes("bf16[3]{0}") == [(6, 0)]  # no tiling: as is
  assert hlo.array_bytes("f32[5,5]{1,0:T(8,128)S(1)}") == [(8 * 128 * 4, 1)]
  assert hlo.array_bytes("(f32[2]{0}, s32[]{:T(128)})") == [(8, 0), (4, 0)]
  assert hlo.array_bytes("f32[4,3]{0,1:T(8,128)}") == [(128 * 8 * 4, 0)]  # minor dim is dim 0 here


def test_loop_trips_slices_branches_and_collectives_by_hand():
  module = hlo.Module.parse(MODULE)
  assert module.trip_count(next(i for i in module.computations["main"] if i.opcode == "while")) == 4
  costs = H.costs(MODULE, devices=8)
  by_name = {c.name: c for c in costs}
  tile = 8 * 128 * 4  # one f32 [8, 128] tile: 4 KiB
  # the slicing fusion reads one [8, 128] row of x (not all four) and the index, and writes the row on-chip
  row = by_name["row"]
  assert row.bytes == tile + 4 + tile and row.hbm_bytes == tile + 4 and row.trips == 4 and row.in_loop
  # the matmul reads the row and w, writes [8, 256]; 2 x 8 x 256 x 128 FLOPs per trip
  y = by_name["y"]
  assert y.bytes == tile + 128 * 256 * 4 + 2 * tile and y.flops == 2 * 8 * 256 * 128 and y.trips == 4
  body = [by_name[n] for n in ("row", "y", "next", "lt")]  # the loop's counter and condition too
  assert [c.name for c in costs if c.in_loop] == ["row", "y", "next", "lt"]
  for field in ("flops", "bytes"):  # XLA's count has each once; three more trips here
    assert costs.total(field) - costs.xla_like(field) == 3 * sum(getattr(c, field) for c in body)
  # the conditional counts its costlier branch only: the multiply and the add
  assert {"m", "s"} <= by_name.keys() and "a" not in by_name
  assert H.category(by_name["m"]) == "optimizer" and H.category(y) == "matmuls"
  # all-reduce over groups of 4: 2 x 3/4 of the array; all-gather over groups of 4 of an array gathered to 128x256
  assert by_name["g"].ici_bytes == pytest.approx(2 * 0.75 * 128 * 256 * 4)
  assert by_name["h"].ici_bytes == pytest.approx(0.75 * 128 * 256 * 4 * 4)
  assert costs.unread_loops == ()
  cats = costs.by_category()
  assert set(cats) <= set(H.CATEGORIES)
  assert cats["matmuls"]["flops"] == 4 * y.flops and cats["collectives"][
      "ici_bytes"] == pytest.approx(by_name["g"].ici_bytes + by_name["h"].ici_bytes)


def test_a_loop_whose_bound_is_not_a_constant_is_flagged():
  text = MODULE.replace("%four = s32[]{:T(128)} constant(4)",
                        "%four = s32[]{:T(128)} get-tuple-element(%c), index=0")
  costs = H.costs(text)
  assert costs.unread_loops == ("loop",)
  assert all(c.trips == 1 for c in costs)


def test_convolution_flops_count_only_real_input_positions():
  """A [B, T, D] x [D, F] matmul written as a 1-wide convolution, and the same with a padded window
  (XLA's rewrite of a batched matmul on TPU): padding positions add no FLOPs."""
  text = """HloModule c
ENTRY %e (a: bf16[48,32,256], b: bf16[256,1024,1], c: bf16[48,32,256,1], d: bf16[256,8,32,1]) -> bf16[48,32,1024] {
  %a = bf16[48,32,256]{2,1,0} parameter(0)
  %b = bf16[256,1024,1]{2,1,0} parameter(1)
  %c = bf16[48,32,256,1]{3,2,1,0} parameter(2)
  %d = bf16[256,8,32,1]{3,2,1,0} parameter(3)
  %q = bf16[48,32,8,32]{3,2,1,0} convolution(%c, %d), window={size=1x8 pad=0_0x7_7 rhs_reversal=0x1}, dim_labels=0bf1_i1o0->0b1f
  ROOT %o = bf16[48,32,1024]{2,1,0} convolution(%a, %b), window={size=1}, dim_labels=0bf_io0->0bf
}
"""
  by_name = {c.name: c for c in H.costs(text)}
  assert by_name["o"].flops == 2 * 48 * 32 * 256 * 1024
  # the Q projection: [1536, 256] x [256, 8 x 32]
  assert by_name["q"].flops == 2 * 48 * 32 * 256 * 8 * 32


def test_a_pallas_kernel_counts_the_flops_it_states():
  text = """HloModule k
ENTRY %e (q: bf16[2,4,256,64]) -> bf16[2,4,256,64] {
  %q = bf16[2,4,256,64]{3,2,1,0:T(8,128)(2,1)} parameter(0)
  ROOT %f = bf16[2,4,256,64]{3,2,1,0:T(8,128)(2,1)} custom-call(%q, %q, %q), custom_call_target="tpu_custom_call", metadata={op_name="jit(f)/encoder/layer_0/attention/self/jit(flash_attention)/pallas_call"}, backend_config={"custom_call_config": {"cost_estimate":{"flops":"136314880","transcendentals":"524288","bytes_accessed":"3424256"}}}
}
"""
  (kernel,) = H.costs(text)
  # three operands and the output, each head of 64 padded to the tile's 128 lanes
  assert kernel.flops == 136314880 and kernel.bytes == 4 * 2 * 4 * 256 * 128 * 2 and H.category(
      kernel) == "attention"


def test_a_splash_kernel_counts_the_blocks_its_mask_visits():
  """jax's splash kernels state no cost: their FLOPs are the visited (q, kv) blocks of the mask's
  next-block table (a local layer's band: 8 x 3 of 8 x 8 blocks of 128; dkv's table shrinks the
  other axis, 3 x 8) times
  2 * 128^2 * head_dim per matmul, for each of B x H; the forward has two matmuls, dq three, dkv
  four; and the report adds them to XLA's count, which has none of them. The kernels' metadata
  spans lines, one starting with '}}': the instructions after it still count."""
  text = """HloModule s
ENTRY %e (q: bf16[16,4,1024,16], t: s8[1,8,3], g: s8[1,8,8], u: s8[1,3,8]) -> bf16[1] {
  %q = bf16[16,4,1024,16]{3,2,1,0} parameter(0)
  %t = s8[1,8,3]{2,1,0} parameter(1)
  %g = s8[1,8,8]{2,1,0} parameter(2)
  %u = s8[1,3,8]{2,1,0} parameter(3)
  %splash_mha_fwd_x.1 = bf16[16,4,1024,16] custom-call(%t, %t, %q, %q, %q), metadata={"a": "{
"xprof_metadata":"{\\"block_q\\": 128}"
}}, metadata={op_name="splash"}
  %splash_mha_dq_x.1 = bf16[16,4,1024,16] custom-call(%g, %g, %q, %q, %q)
  ROOT %splash_mha_dkv_x.1 = bf16[16,4,1024,16] custom-call(%u, %u, %q, %q, %q)
}
"""
  costs = H.costs(text)
  by_name = {c.name.split(".")[0]: c for c in costs}
  per_block = 2 * 16 * 4 * 128 * 128 * 16  # one matmul over one block pair, every (batch, head)
  assert by_name["splash_mha_fwd_x"].flops == 2 * 8 * 3 * per_block
  assert by_name["splash_mha_dq_x"].flops == 3 * 8 * 8 * per_block
  assert by_name["splash_mha_dkv_x"].flops == 4 * 8 * 3 * per_block
  assert costs.uncosted_flops() == (2 * 24 + 3 * 64 + 4 * 24) * per_block
