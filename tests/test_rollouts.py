"""The pure functions of one RLP step (rlp_trl/rollouts.py), on hand-made values: where thoughts end and what the
loss sees, the padded layout, and the vLLM importance weights (vLLM is not installed here, so this is the only place
their arithmetic runs)."""

import math

import pytest
import torch

from rlp_trl.markers import LENGTH_LIMIT, OTHER_STOP, SAMPLED_CLOSE
from rlp_trl.rollouts import ThoughtCutter, cut_thoughts, pack_for_trl, tensorize, vllm_is_ratio

EOS, CLOSE = 0, 9


def test_cut_thoughts_single_token_markers():
    cutter = ThoughtCutter(frozenset({EOS, CLOSE}), (CLOSE,))
    sampled = [[5, 6, CLOSE], [5, EOS], [5, 6, 7]]
    thoughts = cut_thoughts(sampled, [[3], [3], [4]], cutter, 1, close_in_loss=True, mask_truncated=False)
    assert thoughts.ids == [[5, 6], [5], [5, 6, 7]]
    assert thoughts.ends == [SAMPLED_CLOSE, OTHER_STOP, LENGTH_LIMIT]
    assert thoughts.completions == [[5, 6, CLOSE, 3], [5, CLOSE, 3], [5, 6, 7, CLOSE, 4]]
    assert thoughts.action_masks == [[1, 1, 1, 0], [1, 0, 0], [1, 1, 1, 0, 0]]
    masked = cut_thoughts(sampled, [[3], [3], [4]], cutter, 1, close_in_loss=False, mask_truncated=True)
    assert masked.action_masks == [[1, 1, 0, 0], [1, 0, 0], [0, 0, 0, 0, 0]]


def test_cut_thoughts_text_markers_cut_at_any_spelling():
    # tokens spell letters; the close marker "</t>" is canonically [1, 2] but also spelled by the single token 7
    spelling = {1: "</", 2: "t>", 3: "a", 4: "b", 7: "</t>", EOS: ""}
    decode = lambda ids: "".join(spelling[i] for i in ids)  # noqa: E731
    cutter = ThoughtCutter(frozenset({EOS}), (1, 2), close_text="</t>", decode=decode)
    sampled = [[3, 1, 2, 4], [3, 7, 4], [3, 4, 4]]
    thoughts = cut_thoughts(sampled, [[4]] * 3, cutter, 1, close_in_loss=True, mask_truncated=False)
    assert thoughts.ids == [[3], [3], [3, 4, 4]]
    # the canonical spelling is the sampled close; another spelling is a stop the trainer rewrites canonically
    assert thoughts.ends == [SAMPLED_CLOSE, OTHER_STOP, LENGTH_LIMIT]
    assert thoughts.completions[1] == [3, 1, 2, 4]
    assert thoughts.action_masks[0] == [1, 1, 1, 0] and thoughts.action_masks[1] == [1, 0, 0, 0]


def test_tensorize_and_pack_use_trls_layout():
    cutter = ThoughtCutter(frozenset({CLOSE}), (CLOSE,))
    thoughts = cut_thoughts([[5, CLOSE], [5, 6, 7]], [[3], [4]], cutter, 1, close_in_loss=True, mask_truncated=False)
    batch = tensorize([[1, 2, 3], [2, 3]], thoughts, pad_id=-1, device="cpu")
    assert batch.prompt_ids.tolist() == [[1, 2, 3], [-1, 2, 3]]  # prompts left-padded
    assert batch.completion_ids.tolist() == [[5, CLOSE, 3, -1, -1], [5, 6, 7, CLOSE, 4]]  # completions right-padded
    assert batch.loss_mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]]
    assert batch.input_ids.shape == (2, 8) and batch.attention_mask.sum().item() == 5 + 8
    out = pack_for_trl(batch, torch.tensor([1.0, -1.0]), torch.tensor(5))
    assert out["tool_mask"] is batch.action_mask and "old_per_token_logps" not in out
    assert set(pack_for_trl(batch, torch.zeros(2), torch.tensor(5), old_per_token_logps=torch.zeros(2, 5))) >= {
        "old_per_token_logps", "tool_mask", "advantages", "num_items_in_batch"}


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
def test_vllm_is_ratio_matches_trls_definition(mode):
    old = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-0.2, -3.0, 0.0, 0.0]])
    sampling = [[-1.5, None, -0.1], [-0.2, -1.0]]  # vLLM log-probs of the sampled tokens; None = unavailable
    action = [[1, 1, 1, 0], [1, 1, 0, 0]]
    loss_mask = torch.tensor(action, dtype=torch.float32)
    ratio = vllm_is_ratio(old, sampling, action, loss_mask, mode, 0.5, 2.0)
    # TRL: diff = (old - sampling) on the mask, NaN -> 0 (weight 1), summed per row for sequence modes
    diff = torch.tensor([[0.5, 0.0, -0.4, 0.0], [0.0, -2.0, 0.0, 0.0]])
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)
    raw = diff.exp()
    expected = raw.clamp(0.5, 2.0) if mode.endswith("truncate") else raw.masked_fill((raw < 0.5) | (raw > 2.0), 0.0)
    torch.testing.assert_close(ratio, expected)
    if mode == "token_truncate":
        assert ratio[1, 1].item() == 0.5 and ratio[0, 1].item() == 1.0  # clipped; unavailable log-prob
    if mode == "sequence_mask":
        assert ratio[1, 0].item() == 0.0 and math.isclose(ratio[0, 0].item(), math.exp(0.1), rel_tol=1e-6)
