"""Paged KV-cache bookkeeping: a free list of fixed-size blocks, reference counts, and copy-on-write forks.

Vocabulary: a sequence's ``block_table`` lists its blocks in order; token position p lives in block
``block_table[p // block_size]`` at offset ``p % block_size``, i.e. slot ``block * block_size + offset`` of the
flattened cache. The n samples of one prompt ``fork`` the prompt's table (blocks shared, ref counts up); the
first write into a shared block copies it (``reserve`` returns the (src, dst) block copies the KV tensors must
perform before that step's writes). Nothing here touches tensors.

Placement keeps each sequence's blocks consecutive when it can: a growing table takes the block right after its
last one if that is free, and a new run starts in the middle of the largest free gap (at the pool's start when
the gap begins there), so sequences admitted together leave one another room to grow. Consecutive pages let the
attention read a sequence's keys in place instead of gathering them (ops/paged_attention.py); any free block is
still used when the pool is fragmented, so placement never causes an OutOfBlocks.
"""

from __future__ import annotations

import numpy as np


class OutOfBlocks(RuntimeError):
    """Not enough free blocks for a reservation; nothing was changed. The scheduler preempts and retries."""


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"num_blocks and block_size must be positive, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_counts = [0] * num_blocks
        self._is_free = np.ones(num_blocks, dtype=bool)
        self._num_free = num_blocks

    @property
    def num_free(self) -> int:
        return self._num_free

    def blocks_needed(self, block_table: list[int], num_written: int, new_total: int) -> int:
        """Fresh blocks a ``reserve(block_table, num_written, new_total)`` would take (new ones plus CoW copies)."""
        have = len(block_table)
        want = -(-new_total // self.block_size)
        first_written = num_written // self.block_size
        shared = sum(1 for b in block_table[first_written:want] if self.ref_counts[b] > 1)
        return max(0, want - have) + shared

    def reserve(self, block_table: list[int], num_written: int, new_total: int) -> list[tuple[int, int]]:
        """Make ``block_table`` cover ``new_total`` tokens with every block from position ``num_written`` on owned
        by this sequence alone. Mutates ``block_table``; returns the (src_block, dst_block) copies to apply.

        Raises OutOfBlocks (changing nothing) when the free list is too short.
        """
        need = self.blocks_needed(block_table, num_written, new_total)
        if need > self._num_free:
            raise OutOfBlocks(f"need {need} free KV blocks, have {self._num_free}")
        copies = []
        want = -(-new_total // self.block_size)
        for i in range(num_written // self.block_size, min(len(block_table), want)):
            old = block_table[i]
            if self.ref_counts[old] > 1:  # shared with a fork: copy before writing
                new = self._take(block_table[i - 1] if i else None)
                self.ref_counts[old] -= 1
                block_table[i] = new
                copies.append((old, new))
        while len(block_table) < want:
            block_table.append(self._take(block_table[-1] if block_table else None))
        return copies

    def fork(self, block_table: list[int]) -> list[int]:
        """A new table sharing every block of ``block_table`` (ref counts incremented)."""
        for b in block_table:
            self.ref_counts[b] += 1
        return list(block_table)

    def free(self, block_table: list[int]) -> None:
        """Release a sequence's blocks (a block returns to the free list when no table holds it)."""
        for b in block_table:
            self.ref_counts[b] -= 1
            if self.ref_counts[b] == 0:
                self._is_free[b] = True
                self._num_free += 1
            elif self.ref_counts[b] < 0:
                raise RuntimeError(f"block {b} freed more often than it was held")
        block_table.clear()

    def slots(self, block_table: list[int], start: int, end: int) -> list[int]:
        """Slot of every position in [start, end) (the positions must be covered by the table)."""
        bs = self.block_size
        return [block_table[p // bs] * bs + p % bs for p in range(start, end)]

    def _take(self, after: int | None) -> int:
        b = after + 1 if after is not None and after + 1 < self.num_blocks and self._is_free[after + 1] else None
        if b is None:
            b = self._run_start()
        self._is_free[b] = False
        self._num_free -= 1
        self.ref_counts[b] = 1
        return b

    def _run_start(self) -> int:
        """Where a new run of blocks goes: the middle of the largest free gap (its start at the pool's start)."""
        edges = np.diff(np.concatenate(([0], self._is_free.view(np.int8), [0])))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        i = int(np.argmax(ends - starts))
        return int(starts[i]) if starts[i] == 0 else int(starts[i] + (ends[i] - starts[i]) // 2)
