"""The engine's key/value store: one fixed slot per sequence, allocated once at start-up.

Why slots, and why fixed:

* **No left padding.** Every sequence's token ``t`` lives at column ``t`` of its own slot, so
  a sequence joining the batch copies nothing and moves nothing else; a decode step writes
  each row's new key/value at that row's own position (``index_copy_`` per layer, or, with
  the variable-length attention, inside the attention kernel itself where it can).
* **Static addresses.** CUDA graphs replay kernels on the addresses they were captured
  with. The store is allocated once (``[slots, max_model_len + 1, kv_heads, head_dim]`` per
  layer) and never reallocated, so a decode step captured at start-up stays valid for the
  life of the process. The last column of every slot is a *trash column*: writes for the
  rows that only pad a batch up to its captured size land there and are never read.
* **Reads bounded by the batch's longest row, not by the capacity.** A decode step reads
  the first ``W`` columns of the first ``B`` slots as a view (no copy), where ``W`` is the
  longest live row rounded up to a width bucket; columns past each row's own length are
  masked. So a batch pays for its longest row (rounded), not for ``max_model_len``; within
  one batch a short row still reads as far as the longest one. That last cost goes with the
  variable-length attention (:mod:`inference.engine.slot_attention`, on CUDA): each row
  reads its own columns in place, and the views and masks below are not used.
* **Contiguous decode rows.** Decoding sequences occupy slots ``0 … n-1`` (a finished row's
  slot is filled by the last row, one row copy), so the step's reads are plain views;
  sequences still being prefilled hold slots above ``n``.

The layout ``[slot, column, head, dim]`` is what the attention kernels read natively (the
``[batch, heads, seq, dim]`` view handed to the model is a transpose, no copy). The paged
decode kernels read the same memory through :attr:`SlotKVCache.page_table` (a slot's pages
start every ``PAGE`` rows from its first row; pages may straddle slots, and the store keeps
``PAGE`` spare rows at its end for the last one): no copy and no paged layout.

An 8-bit store (``store_dtype`` ``float8_e4m3fn``, ``--kv-cache-dtype fp8``) holds keys and
values in one byte each: half the memory and half the reads of a bf16 store, at e4m3's
precision (3 mantissa bits; values beyond ±448 are clamped to it). Writes cast to it; the
attention kernels that read it (Triton's, and the CPU reference) widen as they load. Its
writes and row moves go through ``uint8`` views of the same memory (PyTorch has no
``index_copy_`` for 8-bit floats on every device).

Memory is zero at allocation: a masked key must still be finite, since attention adds the
mask to ``q·k`` and a NaN would survive it. On the CPU the zeroed memory comes from
``calloc`` (numpy), so untouched slots cost no resident memory.
"""
from __future__ import annotations

import numpy as np
import torch

from inference.engine.host_copy import upload
from inference.engine.slot_attention import PAGE, SlotAttention

try:  # transformers' base class, so model code that checks for a Cache accepts ours
    from transformers.cache_utils import Cache as _CacheBase
except ImportError:  # pragma: no cover - transformers is a dependency of this package
    _CacheBase = object


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    n = int(np.prod(shape)) * torch.tensor([], dtype=dtype).element_size()
    return torch.from_numpy(np.zeros(n, dtype=np.uint8)).view(dtype).view(shape)


def kv_geometry(config) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)`` of a transformers config (grouped-query heads respected)."""
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers, kv_heads, head_dim


#: ``--kv-cache-dtype`` names and the store dtypes they stand for (``auto``: the model's dtype).
STORE_DTYPES = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn}

#: Largest finite ``float8_e4m3fn`` value: writes are clamped to it (a cast beyond it is not
#: guaranteed to saturate, and the format has no infinity).
FP8_MAX = 448.0


def _eight_bit(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point and dtype.itemsize == 1


def _raw(t: torch.Tensor) -> torch.Tensor:
    """``t`` as bytes when it is an 8-bit float (for ``index_copy_`` and row moves)."""
    return t.view(torch.uint8) if _eight_bit(t.dtype) else t


def bytes_per_token(config, dtype: torch.dtype) -> int:
    """Key and value bytes one token takes across all layers."""
    layers, kv_heads, head_dim = kv_geometry(config)
    return 2 * layers * kv_heads * head_dim * torch.tensor([], dtype=dtype).element_size()


class SlotKVCache:
    """Per-layer key/value storage: ``slots`` rows of ``max_len`` columns (+1 trash column)."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, slots: int, max_len: int, store_dtype: torch.dtype | None = None):
        self.num_layers, self.kv_heads, self.head_dim = num_layers, kv_heads, head_dim
        #: ``dtype``: the model's (masks, what a read returns); ``store_dtype``: what is kept.
        self.dtype, self.device = dtype, device
        self.store_dtype = store_dtype or dtype
        self.eight_bit = _eight_bit(self.store_dtype)
        self.slots, self.max_len = slots, max_len
        self.stride = max_len + 1          # columns per slot, the trash column included
        self.trash = max_len               # column index of the trash column
        shape = (slots, self.stride, kv_heads, head_dim)
        # Each layer's store has PAGE spare rows after its last slot: the paged decode kernels
        # read a sequence's last page in full (see slot_attention.paged_view).
        rows = slots * self.stride

        def layer() -> torch.Tensor:
            return _zeros((rows + PAGE, kv_heads, head_dim), self.store_dtype, device)[:rows].view(shape)

        self.keys = [layer() for _ in range(num_layers)]
        self.values = [layer() for _ in range(num_layers)]
        self._raw = [_raw(t) for t in self.keys + self.values]  # what row moves copy
        self.columns = torch.arange(max_len, device=device)
        self.slot_base = torch.arange(slots, device=device) * self.stride
        # For the variable-length attention: the store as [slots × columns, heads, dim] (views),
        # each slot's first flat row (int32, one more entry for the end) and 0, 1, 2, …
        flat = (-1, kv_heads, head_dim)
        self.flat_keys = [t.view(flat) for t in self.keys]
        self.flat_values = [t.view(flat) for t in self.values]
        self.slot_starts = (torch.arange(slots + 1, device=device) * self.stride).to(torch.int32)
        self.row_starts = torch.arange(slots + 1, device=device, dtype=torch.int32)
        # Slot i's j-th page of PAGE tokens starts at flat row i × stride + j × PAGE (for the
        # paged decode kernels; fixed for the life of the store).
        pages = -(-max_len // PAGE)
        self.page_table = self.slot_starts[:slots, None] + torch.arange(pages, device=device, dtype=torch.int32) * PAGE
        self.mask_min = torch.finfo(dtype).min

    @classmethod
    def for_model(cls, config, dtype: torch.dtype, device: torch.device, slots: int, max_len: int,
                  store_dtype: torch.dtype | None = None) -> "SlotKVCache":
        return cls(*kv_geometry(config), dtype, device, slots, max_len, store_dtype)

    @property
    def tokens(self) -> int:
        """Tokens the store holds (every slot full)."""
        return self.slots * self.max_len

    # -- row moves (eager, engine thread) ------------------------------------------------
    def move(self, src: list[int], dst: list[int], width: int) -> None:
        """Copy slots ``src`` over slots ``dst`` (first ``width`` columns). Sources are read
        before anything is written, so ``src`` and ``dst`` may overlap (a swap)."""
        if not src or width <= 0:
            return
        if len(src) == 1:  # plain slices: no index tensor to copy to the device (that would wait for it)
            for t in self._raw:
                t[dst[0], :width].copy_(t[src[0], :width])
            return
        s, d = upload(src, torch.long, self.device), upload(dst, torch.long, self.device)
        for t in self._raw:
            t[d, :width] = t[s, :width]

    # -- views for one forward pass --------------------------------------------------------
    def write_index(self, slots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Flat ``slot × column`` index of each token (``slots`` ``[b]``, ``positions``
        ``[b, q]``); a negative position (a padding token) goes to its slot's trash column."""
        cols = torch.where(positions >= 0, positions, torch.full_like(positions, self.trash))
        return self.slot_base.index_select(0, slots).unsqueeze(1) + cols

    def mask(self, positions: torch.Tensor, width: int) -> torch.Tensor:
        """Additive attention mask ``[rows, 1, q, width]``: a query at position ``p`` sees the
        columns ``0 … p`` of its own slot; a padding query (``p < 0``) sees none (its uniform
        attention over finite values is discarded)."""
        visible = self.columns[:width] <= positions.unsqueeze(-1)
        zero = torch.zeros((), dtype=self.dtype, device=self.device)
        low = torch.full((), self.mask_min, dtype=self.dtype, device=self.device)
        return torch.where(visible, zero, low).unsqueeze(1)

    def decode_cache(self, rows: int, write_index: torch.Tensor, width: int, reads: bool = True,
                     writes: bool = True) -> "SlotCache":
        """The cache for a step over slots ``0 … rows-1`` (one query token each); with
        ``reads=False`` it does not read (the variable-length attention reads the store), with
        ``writes=False`` it does not write either (the attention writes the step's keys and
        values: :meth:`decode_attention` with ``write``)."""
        return SlotCache(self, write_index, width, rows=rows, reads=reads, writes=writes)

    def decode_attention(self, kernel, rows: int, positions: torch.Tensor, width: int,
                         write: torch.Tensor | None = None, order: torch.Tensor | None = None):
        """The variable-length description of a decode step over slots ``0 … rows-1``: row
        ``i`` reads columns ``0 … position`` of slot ``i`` (a padding row, position < 0, one
        column). With ``write`` (:meth:`write_index` of the step) the attention also writes
        the step's keys and values there, in the kernel itself where it can (a store of the
        model's dtype only: an 8-bit store is written by the cache). ``order``: a permutation
        of the rows, the order kernels that take one launch them in (see ``SlotAttention``).
        Built from device tensors only, so a CUDA graph captures it."""
        if write is not None and self.eight_bit:
            raise ValueError("an 8-bit store is written by the cache (decode_cache writes=True)")
        pos = positions.reshape(-1)
        used = torch.where(pos >= 0, pos + 1, torch.ones_like(pos)).to(torch.int32)
        return SlotAttention(kernel, self.flat_keys, self.flat_values, self.row_starts[:rows + 1],
                             self.slot_starts[:rows + 1], used, 1, width, causal=False,
                             pages=self.page_table[:rows], write=None if write is None else write.reshape(-1),
                             order=order)

    #: Packed prefill rows are padded to a multiple of this many tokens, so the matrix
    #: shapes repeat from step to step (each new shape costs the GEMM libraries a lookup,
    #: and start-up warms every one of them).
    TOKEN_STEP = 64

    def packed(self, chunks: list[tuple[int, int, int]]) -> tuple["SlotCache", torch.Tensor, torch.Tensor]:
        """Cache, attention mask and positions for prompt chunks packed into one row.

        ``chunks`` are ``(slot, first position, tokens)``. Their tokens are concatenated
        (no padding: a step costs the tokens it prefills); each token's key/value goes to
        its own slot, and the keys read are, per chunk, columns ``0 … end`` of its slot,
        concatenated too. The mask ``[1, 1, tokens, keys]`` lets a token see only its own
        sequence's keys up to its own position. The row is padded to a multiple of
        ``TOKEN_STEP`` tokens that see nothing. Returns ``(cache, mask, positions [1, T])``.
        """
        q_seq, q_pos, k_seq, k_col, write, read = [], [], [], [], [], []
        for i, (slot, start, n) in enumerate(chunks):
            end = start + n
            base = slot * self.stride
            q_seq += [i] * n
            q_pos += range(start, end)
            write += range(base + start, base + end)
            k_seq += [i] * end
            k_col += range(end)
            read += range(base, base + end)
        pad = -len(q_seq) % self.TOKEN_STEP  # padding tokens: see nothing, write to slot 0's trash column
        q_seq += [-2] * pad
        q_pos += [0] * pad
        write += [self.trash] * pad
        pad = -len(read) % 16  # keys padded to a multiple of 16: the aligned attention kernels
        k_seq += [-1] * pad
        k_col += [0] * pad
        read += [self.trash] * pad  # slot 0's trash column, never visible
        host = upload([q_seq, q_pos, write], torch.long, self.device)
        keys = upload([k_seq, k_col, read], torch.long, self.device)
        visible = (host[0].unsqueeze(1) == keys[0].unsqueeze(0)) & (keys[1].unsqueeze(0) <= host[1].unsqueeze(1))
        zero = torch.zeros((), dtype=self.dtype, device=self.device)
        low = torch.full((), self.mask_min, dtype=self.dtype, device=self.device)
        mask = torch.where(visible, zero, low)[None, None]
        return SlotCache(self, host[2], keys.shape[1], read_index=keys[2]), mask, host[1].unsqueeze(0)


    def packed_varlen(self, kernel, chunks: list[tuple[int, int, int]]):
        """Like :meth:`packed`, for the variable-length attention: no mask and no gathered keys.
        Chunk ``i``'s queries are its own tokens; its keys are columns ``0 … end`` of its slot,
        read in place. The row is padded to a multiple of ``TOKEN_STEP`` as :meth:`packed`
        does (:meth:`packed_layout` with one padding sequence). Returns ``(cache, attention,
        positions [1, T])``."""
        tokens = sum(n for _, _, n in chunks)
        padded = tokens + -tokens % self.TOKEN_STEP
        b = len(chunks) + (padded > tokens)  # a padding sequence only where there is padding
        positions, write, meta, _ = self.packed_layout(chunks, padded, b)
        cu_q, used = meta[:b + 1], meta[2 * b + 2:]
        host = upload([positions, write], torch.long, self.device)
        dev = upload(meta, torch.int32, self.device)
        attention = SlotAttention(kernel, self.flat_keys, self.flat_values, dev[:b + 1], dev[b + 1:2 * b + 2],
                                  dev[2 * b + 2:], max(y - x for x, y in zip(cu_q, cu_q[1:])), max(used),
                                  causal=True)
        return SlotCache(self, host[1], max(used), reads=False), attention, host[0].unsqueeze(0)

    def packed_layout(self, chunks: list[tuple[int, int, int]], tokens: int, seqs: int):
        """The layout of :meth:`packed_varlen` padded to exactly ``tokens`` tokens and ``seqs``
        sequences: the static shapes of a captured prefill step. Returns host lists
        ``(positions, write index, meta, ends)``: ``meta`` is ``cu_q [seqs+1] + cu_k
        [seqs+1] + used [seqs]`` (int32), ``ends`` each chunk's last token (then 0). After
        the chunks come the padding tokens as one sequence reading the store's first rows
        (finite values; its outputs are discarded), then empty sequences. With no padding
        ``seqs`` may equal the number of chunks."""
        positions, write, cu_q, cu_k, used = [], [], [0], [], []
        for slot, start, n in chunks:
            base = slot * self.stride
            positions += range(start, start + n)
            write += range(base + start, base + start + n)
            cu_q.append(cu_q[-1] + n)
            cu_k.append(base)
            used.append(start + n)
        pad = tokens - len(positions)
        if pad < 0 or len(chunks) > seqs or (pad and len(chunks) == seqs):
            raise ValueError(f"{len(positions)} tokens in {len(chunks)} chunks do not fit {tokens} tokens, {seqs} sequences")
        positions += [0] * pad
        write += [self.trash] * pad
        ends = [c - 1 for c in cu_q[1:]] + [0] * (seqs - len(chunks))
        while len(used) < seqs:  # the padding sequence (maybe empty), then empty ones
            cu_q.append(tokens)
            cu_k.append(0)
            used.append(min(pad, self.slots * self.stride) if len(used) == len(chunks) else 0)
        cu_k.append(self.slots * self.stride)
        return positions, write, cu_q + cu_k + used, ends


class SlotCache(_CacheBase):
    """What the model sees for one forward pass: ``update`` writes the new keys/values into
    the store at the precomputed flat indices and returns, for a decode step, the first
    ``width`` columns of the first ``rows`` slots as ``[rows, heads, width, dim]`` (a view);
    for a packed prefill, the listed tokens as ``[1, heads, keys, dim]`` (a gather)."""

    is_compileable = False

    def __init__(self, store: SlotKVCache, write_index: torch.Tensor, width: int, *,
                 rows: int | None = None, read_index: torch.Tensor | None = None, reads: bool = True,
                 writes: bool = True):
        # Cache.__init__ differs between transformers releases and allocates layers we do not use.
        self.store = store
        self.write_index = write_index.reshape(-1)
        self.width = width
        self.rows = rows
        self.read_index = read_index
        self.reads = reads  # False: the variable-length attention reads the store itself
        self.writes = writes  # False: ... and writes the step's keys/values itself
        self.layers = []

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if not self.writes:
            return key_states, value_states
        s = self.store
        k, v = s.keys[layer_idx], s.values[layer_idx]
        flat = (-1, s.kv_heads, s.head_dim)
        for store, new in ((k, key_states), (v, value_states)):
            new = new.transpose(1, 2).reshape(flat)
            if s.eight_bit:
                new = new.clamp(-FP8_MAX, FP8_MAX)
            _raw(store.view(flat)).index_copy_(0, self.write_index, _raw(new.to(s.store_dtype)))
        if not self.reads:
            return key_states, value_states
        if self.read_index is None:  # decode: the first `rows` slots, as a view
            keys, values = k[:self.rows, :self.width], v[:self.rows, :self.width]
        else:  # packed prefill: the listed tokens, gathered into one row
            keys = k.view(flat).index_select(0, self.read_index).unsqueeze(0)
            values = v.view(flat).index_select(0, self.read_index).unsqueeze(0)
        return keys.transpose(1, 2).to(s.dtype), values.transpose(1, 2).to(s.dtype)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.width

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.store.max_len

    def get_mask_sizes(self, *args, **kwargs):
        return self.width, 0

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * self.store.num_layers

    def __len__(self) -> int:
        return self.store.num_layers
