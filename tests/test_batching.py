import torch

from qwen_embed.batching import pack, plan_batches


def test_pack_positions_restart_and_cu_seqlens() -> None:
    b = pack([[5, 6, 7], [8], [9, 10]])
    assert b.input_ids.tolist() == [5, 6, 7, 8, 9, 10]
    assert b.position_ids.tolist() == [0, 1, 2, 0, 0, 1]
    assert b.cu_seqlens.tolist() == [0, 3, 4, 6] and b.cu_seqlens.dtype == torch.int32
    assert b.max_seqlen == 3 and b.num_seqs == 3 and b.num_tokens == 6
    assert b.last_indices.tolist() == [2, 3, 5]


def test_plan_batches_budget_order_and_coverage() -> None:
    lengths = [5, 100, 30, 30, 1, 64, 200, 7]
    plan = plan_batches(lengths, max_tokens=128)
    flat = [i for b in plan for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every input once
    for b in plan:  # under budget, or a single over-long sequence alone
        assert sum(lengths[i] for i in b) <= 128 or len(b) == 1
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first


def test_plan_batches_max_seqs() -> None:
    plan = plan_batches([1] * 10, max_tokens=1000, max_seqs=4)
    assert [len(b) for b in plan] == [4, 4, 2]
