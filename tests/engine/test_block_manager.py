"""Block manager: allocation, slots, prefix sharing across forks, copy-on-write, exhaustion without damage."""

from __future__ import annotations

import pytest

from echo.engine.block_manager import BlockManager, OutOfBlocks


@pytest.mark.parametrize("tokens,blocks", [(1, 1), (15, 1), (16, 1), (17, 2), (48, 3)])
def test_allocation_covers_tokens(tokens, blocks):
    bm = BlockManager(8, 16)
    table: list[int] = []
    assert bm.reserve(table, 0, tokens) == []
    assert len(table) == blocks and bm.num_free == 8 - blocks
    slots = bm.slots(table, 0, tokens)
    assert len(set(slots)) == tokens
    assert all(s // 16 == table[p // 16] and s % 16 == p % 16 for p, s in enumerate(slots))


def test_growth_one_token_at_a_time():
    bm = BlockManager(4, 4)
    table: list[int] = []
    for n in range(1, 17):
        bm.reserve(table, n - 1, n)
        assert len(table) == -(-n // 4)
    with pytest.raises(OutOfBlocks):
        bm.reserve(table, 16, 17)
    assert len(table) == 4 and bm.num_free == 0  # the failed reservation changed nothing


def test_group_of_eight_shares_the_prompt_then_copies_on_write():
    bm = BlockManager(64, 16)
    prompt: list[int] = []
    bm.reserve(prompt, 0, 40)  # 2 full blocks + 8 tokens in a third
    assert bm.num_free == 61
    samples = [bm.fork(prompt) for _ in range(8)]
    bm.free(prompt)  # the parent is done; its blocks live on in the samples
    assert bm.num_free == 61  # n=8 samples hold the prompt's blocks once
    assert all(bm.ref_counts[b] == 8 for b in samples[0])
    copies_seen = []
    for i, table in enumerate(samples):
        copies = bm.reserve(table, 40, 41)  # first sampled token goes into the shared partial block
        copies_seen.append(copies)
        assert table[:2] == samples[0][:2]  # full prompt blocks stay shared
    # the first 7 writers copy the partial block; the last one owns the original and writes in place
    assert all(len(c) == 1 for c in copies_seen[:7]) and copies_seen[7] == []
    partials = {t[2] for t in samples}
    assert len(partials) == 8
    assert all(src == samples[7][2] for c in copies_seen[:7] for src, _ in c)
    for t in samples:
        bm.free(t)
    assert bm.num_free == 64 and all(r == 0 for r in bm.ref_counts)


def test_fork_on_block_boundary_needs_no_copy():
    bm = BlockManager(8, 4)
    prompt: list[int] = []
    bm.reserve(prompt, 0, 8)
    a, b = bm.fork(prompt), bm.fork(prompt)
    assert bm.reserve(a, 8, 9) == [] and bm.reserve(b, 8, 9) == []
    assert a[:2] == b[:2] and a[2] != b[2]


def test_splice_spanning_blocks_with_shared_tail():
    """A re-listen inserts many tokens at once into a sequence whose last block is shared."""
    bm = BlockManager(16, 4)
    prompt: list[int] = []
    bm.reserve(prompt, 0, 6)
    child = bm.fork(prompt)
    need = bm.blocks_needed(child, 6, 6 + 9)
    copies = bm.reserve(child, 6, 15)
    assert need == 3 and len(copies) == 1 and len(child) == 4
    assert copies[0][0] == prompt[1]


def test_exhaustion_leaves_state_intact():
    bm = BlockManager(3, 4)
    a: list[int] = []
    bm.reserve(a, 0, 8)
    b = bm.fork(a)
    with pytest.raises(OutOfBlocks, match="need 3 free KV blocks, have 1"):
        bm.reserve(b, 4, 13)  # CoW of block 1 + 2 new
    assert b == a and bm.ref_counts[a[0]] == 2 and bm.num_free == 1


def test_double_free_is_caught():
    bm = BlockManager(2, 4)
    t: list[int] = []
    bm.reserve(t, 0, 4)
    alias = list(t)
    bm.free(t)
    with pytest.raises(RuntimeError, match="freed more often"):
        bm.free(alias)


def _runs(table: list[int]) -> int:
    return 1 + sum(1 for a, b in zip(table, table[1:]) if b != a + 1)


def test_sequences_growing_together_keep_their_blocks_consecutive():
    bm = BlockManager(256, 4)
    tables: list[list[int]] = [[] for _ in range(8)]
    for t in tables:  # prompts admitted one after another
        bm.reserve(t, 0, 10)
    for n in range(10, 120):  # then all decode together, a token each per step
        for t in tables:
            bm.reserve(t, n, n + 1)
    assert all(_runs(t) == 1 for t in tables), [t[:4] for t in tables]
    assert len({b for t in tables for b in t}) == sum(map(len, tables))  # no block in two tables


def test_a_fragmented_pool_still_hands_out_every_free_block():
    bm = BlockManager(16, 1)
    held = [[] for _ in range(16)]
    for t in held:
        bm.reserve(t, 0, 1)
    freed = sorted(t[0] for t in held if t[0] % 2 == 0)
    for t in held:  # free every other block: no two free blocks are neighbours
        if t[0] % 2 == 0:
            bm.free(t)
    big: list[int] = []
    bm.reserve(big, 0, 8)
    assert sorted(big) == freed == list(range(0, 16, 2)) and bm.num_free == 0
    with pytest.raises(OutOfBlocks):
        bm.reserve(big, 8, 9)
