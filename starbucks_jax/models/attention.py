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
The fused cores have no dropout on the attention probabilities: a run with any of them trains without
it (hidden-state dropout stays). Otherwise they compute the same function: for every real token the
same context vector (padding positions, which no real token reads and pooling skips, may differ).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import flash_attention as fa

ATTENTIONS = ("standard", "dot_product", "flash", "cudnn")
# jax.nn.dot_product_attention's implementation for the 'cudnn' core ('xla' runs the same call on a CPU: tests).
CUDNN_IMPLEMENTATION = "cudnn"


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


def flash(q, k, v, segment_ids, block: int = 128):
  """`flash_kernel` per device under a mesh (a Pallas kernel is not partitioned by the compiler: it
  runs in a shard_map over the batch and head axes, as the logical rules shard them)."""
  mesh = jax.sharding.get_abstract_mesh()
  qkv = nn.logical_to_mesh_axes(("batch", "length", "heads", "kv"))
  segments = nn.logical_to_mesh_axes(("batch", "length"))
  size = lambda entry: 1 if entry is None else mesh.shape[entry] if isinstance(
      entry, str) else math.prod(mesh.shape[a] for a in entry)
  # one device, or shapes only (init)
  if mesh.empty or any(d % size(e) for d, e in zip(q.shape, qkv)):
    return flash_kernel(q, k, v, segment_ids, block)
  return jax.shard_map(lambda *a: flash_kernel(*a, block), mesh=mesh,
                       in_specs=(qkv, qkv, qkv, segments), out_specs=qkv,
                       check_vma=False)(q, k, v, segment_ids)


def flash_kernel(q, k, v, segment_ids, block: int = 128):
  """q, k, v [B, T, heads, head_dim]; segment_ids [B, T] (a token attends to the tokens of its own
  segment: the padding mask as 1 / 0, or packed rows' text numbers) -> [B, T, heads, head_dim]. The
  kernel tiles the sequence in blocks of 128 (a TPU vector's lanes): a length that is not a multiple
  is padded with a segment of its own, which no real token sees, and cut off again."""
  T = q.shape[1]
  pad = -T % block
  if pad:
    q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
    segment_ids = jnp.pad(segment_ids, ((0, 0), (0, pad)), constant_values=-2)
  sizes = fa.BlockSizes(block_q=block, block_k_major=block, block_k=block, block_b=1,
                        block_q_major_dkv=block, block_k_major_dkv=block, block_k_dkv=block,
                        block_q_dkv=block, block_k_major_dq=block, block_k_dq=block,
                        block_q_dq=block)
  heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # [B, heads, T, head_dim]
  segment_ids = segment_ids.astype(jnp.int32)
  out = fa.flash_attention(heads_first(q), heads_first(k), heads_first(v),
                           segment_ids=fa.SegmentIds(segment_ids, segment_ids),
                           sm_scale=1.0 / math.sqrt(q.shape[-1]), block_sizes=sizes)
  return heads_first(out)[:, :T]
