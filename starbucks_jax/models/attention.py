"""Fused self-attention cores: softmax(q k^T / sqrt(h)) v over the keys each query may see, in one
call (flash: without materialising the [batch, heads, T, T] scores in memory).

`model.attention` picks the core (BertConfig.attention):
- 'standard' (models/bert.py): HF BERT's, scores and softmax in float32, dropout on the attention
  probabilities (attention_probs_dropout_prob). The default.
- 'dot_product': jax.nn.dot_product_attention in its default implementation, XLA's.
- 'cudnn': the same call with implementation='cudnn': cuDNN's fused flash attention on NVIDIA GPUs
  (half precision only; the cuDNN library must load when the step is traced, also when compiling
  for a GPU on a CPU). Padded rows pass their lengths (rows are right-padded), so cuDNN skips the
  padding; packed rows pass their segments' mask, which cuDNN applies as a bias.
- 'flash': the Pallas flash-attention kernel for TPUs that ships with jax (compiled for any TPU
  topology by starbucks_jax.compile; on another backend it runs only in Pallas' interpreter).
  ModernBERT's layers run jax's splash-attention kernel instead (`splash`): the same tiling with a
  block-sparse mask, so a local layer computes only the key blocks its window reaches.
The fused cores have no dropout on the attention probabilities: a run with any of them trains without
it (hidden-state dropout stays). Otherwise they compute the same function: for every real token the
same context vector (padding positions, which no real token reads and pooling skips, may differ).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import flash_attention as fa
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

ATTENTIONS = ("standard", "dot_product", "flash", "cudnn")
# jax.nn.dot_product_attention's implementation for the 'cudnn' core ('xla' runs the same call on a CPU: tests).
CUDNN_IMPLEMENTATION = "cudnn"
SPLASH_INTERPRET = False  # run the splash kernel in Pallas' interpreter (tests on a CPU)


def dot_product(q, k, v, mask):
  """q, k, v [B, T, heads, head_dim]; mask [B, 1, Tq or 1, Tk] (True: may attend) -> [B, T, heads, head_dim]."""
  return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=1.0 / math.sqrt(q.shape[-1]))


def cudnn(q, k, v, segment_ids, packed: bool):
  """q, k, v [B, T, heads, head_dim] in half precision; segment_ids [B, T]: the right-padded rows'
  padding mask (1 / 0), or packed rows' text numbers (-1: padding, which sees only padding, as in
  `flash_kernel`) -> [B, T, heads, head_dim]."""
  scale = 1.0 / math.sqrt(q.shape[-1])
  if packed:
    mask = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale,
                                        implementation=CUDNN_IMPLEMENTATION)
  # an all-padding row reads its first token
  lengths = jnp.maximum(segment_ids.astype(jnp.int32).sum(-1), 1)
  return jax.nn.dot_product_attention(q, k, v, scale=scale, query_seq_lengths=lengths,
                                      key_value_seq_lengths=lengths,
                                      implementation=CUDNN_IMPLEMENTATION)


def flash(q, k, v, segment_ids, block: int = 128, window: int | None = None, splash: bool = False):
  """`flash_kernel` (or `splash_kernel` with `splash`, its `window`) per device under a mesh (a
  Pallas kernel is not partitioned by the compiler: it runs in a shard_map over the batch and head
  axes, as the logical rules shard them)."""
  kernel = functools.partial(splash_kernel, window=window) if splash else flash_kernel
  mesh = jax.sharding.get_abstract_mesh()
  qkv = nn.logical_to_mesh_axes(("batch", "length", "heads", "kv"))
  segments = nn.logical_to_mesh_axes(("batch", "length"))
  size = lambda entry: 1 if entry is None else mesh.shape[entry] if isinstance(
      entry, str) else math.prod(mesh.shape[a] for a in entry)
  # one device, or shapes only (init)
  if mesh.empty or any(d % size(e) for d, e in zip(q.shape, qkv)):
    return kernel(q, k, v, segment_ids, block)
  return jax.shard_map(lambda *a: kernel(*a, block), mesh=mesh, in_specs=(qkv, qkv, qkv, segments),
                       out_specs=qkv, check_vma=False)(q, k, v, segment_ids)


def flash_kernel(q, k, v, segment_ids, block: int = 128):
  """q, k, v [B, T, heads, head_dim]; segment_ids [B, T] (a token attends to the tokens of its own
  segment: the padding mask as 1 / 0, or packed rows' text numbers) -> [B, T, heads, head_dim]. The
  kernel tiles the sequence in blocks of 128 (a TPU vector's lanes): a length that is not a multiple
  is padded with a segment of its own, which no real token sees, and cut off again."""
  T = q.shape[1]
  q, k, v, segment_ids = _to_blocks(q, k, v, segment_ids, block)
  sizes = fa.BlockSizes(block_q=block, block_k_major=block, block_k=block, block_b=1,
                        block_q_major_dkv=block, block_k_major_dkv=block, block_k_dkv=block,
                        block_q_dkv=block, block_k_major_dq=block, block_k_dq=block,
                        block_q_dq=block)
  out = fa.flash_attention(heads_first(q), heads_first(k), heads_first(v),
                           segment_ids=fa.SegmentIds(segment_ids, segment_ids),
                           sm_scale=1.0 / math.sqrt(q.shape[-1]), block_sizes=sizes)
  return heads_first(out)[:, :T]


def splash_kernel(q, k, v, segment_ids, block: int = 128, window: int | None = None):
  """As `flash_kernel` (same arguments, padding and result), through jax's splash-attention kernel
  with a block-sparse mask: every key (window None), or the keys within `window` positions on
  either side (ModernBERT's local layers): blocks outside the band are skipped, not masked."""
  B, T, H, K = q.shape
  q, k, v, segment_ids = _to_blocks(q, k, v, segment_ids, block)
  L = q.shape[1]
  one = (mask_lib.FullMask((L, L)) if window is None else mask_lib.LocalMask((L, L),
                                                                             (window, window), 0))
  sizes = splash_lib.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                                block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                                block_q_dq=block, block_kv_dq=block)
  kernel = splash_lib.make_splash_mha_single_device(mask_lib.MultiHeadMask([one] * H),
                                                    block_sizes=sizes, interpret=SPLASH_INTERPRET)
  q = q * jnp.asarray(1.0 / math.sqrt(K), q.dtype)  # the kernel does not scale
  out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=splash_lib.SegmentIds(s, s)))(
      heads_first(q), heads_first(k), heads_first(v), segment_ids)
  return heads_first(out)[:, :T]


def heads_first(x):
  """[B, T, heads, head_dim] <-> [B, heads, T, head_dim] (the Pallas kernels' layout)."""
  return jnp.swapaxes(x, 1, 2)


def _to_blocks(q, k, v, segment_ids, block: int):
  """The kernels tile the sequence in blocks: a length that is not a multiple is padded with a
  segment of its own (-2), which no real token sees; segment ids as int32."""
  pad = -q.shape[1] % block
  if pad:
    q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
    segment_ids = jnp.pad(segment_ids, ((0, 0), (0, pad)), constant_values=-2)
  return q, k, v, segment_ids.astype(jnp.int32)
