"""Held-out positions for `rlp-eval` (and the models and thoughts of `rlp-bench`): the held-out split of a corpus,
a checkpoint loaded with the think markers `RLPTrainer` would add, thoughts sampled as the trainer samples them, and
the log-probability of the true next token with and without a thought (rlp_trl/tools/eval.py describes the metrics)."""

import zlib

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, GenerationConfig

from ..loading import load_causal_lm
from ..fast.generation import prefix_shared_sample
from ..fast.scoring import pad_rows, score_last_tokens
from ..markers import LENGTH_LIMIT, OTHER_STOP, SAMPLED_CLOSE
from ..markers import prepare_think_markers, split_thought, split_thought_text, text_marker_ids
from .stats import position_metrics


# ---------------------------------------------------------------------------------------------------- data
def heldout_split(dataset, text_field: str = "text", fraction: float = 0.1):
    """Split a document dataset into (train, held-out) by a CRC32 hash of each text: stable under reordering."""
    cut = int(fraction * 1000)
    held = [zlib.crc32(str(t).encode("utf-8")) % 1000 < cut for t in dataset[text_field]]
    train = dataset.select([i for i, h in enumerate(held) if not h])
    heldout = dataset.select([i for i, h in enumerate(held) if h])
    return train, heldout


# ---------------------------------------------------------------------------------------------------- model side
def load_with_markers(path: str, think_open: str, think_close: str, seed: int = 0, dtype: str = "float32",
                      init: str = "text", init_texts: tuple[str, str] = ("<", ">")):
    """Model and tokenizer with single-token think markers, added exactly as `RLPTrainer` does when missing (same
    `think_token_init` and init texts, so an untrained model and a model trained from it start from the same rows).

    The seed fixes the noise of `init="mean"` rows, so two runs (and two checkpoints that both lack the markers)
    get the same rows.
    """
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_causal_lm(path, dtype=getattr(torch, dtype) if dtype != "auto" else "auto")  # LoRA folders too
    model.eval()
    torch.manual_seed(seed)
    open_ids, close_id, model = prepare_think_markers(
        tokenizer, model, think_open, think_close, add_tokens=True, init=init, init_texts=init_texts
    )
    return model, tokenizer, open_ids, close_id


def thought_generation_config(max_thought_tokens: int, temperature: float, stop_ids, pad_id: int, **kwargs):
    """Sampling settings of the trainer's thoughts: temperature, no top-p/top-k, >= 1 token, stop on the stop ids."""
    return GenerationConfig(
        max_new_tokens=max_thought_tokens, min_new_tokens=1, do_sample=True, temperature=temperature, top_p=1.0,
        top_k=0, eos_token_id=sorted(stop_ids), pad_token_id=pad_id, **kwargs,
    )


@torch.no_grad()
def sample_thoughts(model, prompts: list[list[int]], *, num_thoughts: int, max_thought_tokens: int, temperature: float,
                    stop_ids, pad_id: int, batch_size: int) -> list[list[list[int]]]:
    """K thoughts per prompt with `model.generate`, sampled as the trainer samples them.

    Returns, per prompt, K token lists as sampled (a stop token and padding may follow the thought: `split_thought`).
    """
    config = thought_generation_config(max_thought_tokens, temperature, stop_ids, pad_id, num_return_sequences=num_thoughts)
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = pad_rows(prompts[start : start + batch_size], pad_id, device)
        seqs = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, ids.size(1) :].tolist()
        out.extend(seqs[i : i + num_thoughts] for i in range(0, len(seqs), num_thoughts))
    return out


@torch.no_grad()
def reasoned_logps(model, prompts: list[list[int]], targets: list[list[int]], *, close_id: int, stop_ids: set[int],
                   num_thoughts: int, max_thought_tokens: int, temperature: float, pad_id: int,
                   batch_size: int) -> tuple[torch.Tensor, list[list[int]], list[str]]:
    """log p(x_t | prompt, c_k, </think>) for K sampled thoughts c_k per prompt: `[N, K]`, the thoughts, and how each
    ended (`split_thought`).

    Uses the trainer's prefix-shared sampler (`rlp_trl.fast.generation`: one prefill per prompt, x_t scored in the same
    KV cache; `tests/test_evaluation.py` checks it against a separate teacher-forced pass).
    """
    config = thought_generation_config(max_thought_tokens, temperature, stop_ids, pad_id)
    thoughts, ends, scores = [], [], []
    for start in tqdm(range(0, len(prompts), batch_size), desc="positions (K thoughts each)", unit="batch", leave=False):
        batch_prompts = prompts[start : start + batch_size]
        batch_targets = targets[start : start + batch_size]
        rows = [p for p in batch_prompts for _ in range(num_thoughts)]
        row_targets = [y for y in batch_targets for _ in range(num_thoughts)]
        sample = prefix_shared_sample(model, rows, config, [[close_id] + y for y in row_targets])
        split = [split_thought(s, stop_ids, close_id) for s in sample.completion_ids]
        logps = sample.suffix_logps[:, 1].cpu()
        thoughts.extend(t for t, _ in split)
        ends.extend(end for _, end in split)
        scores.append(logps.view(-1, num_thoughts))
    return torch.cat(scores), thoughts, ends


@torch.no_grad()
def reasoned_logps_text(model, tokenizer, prompts: list[list[int]], targets: list[list[int]], *, close: str,
                        num_thoughts: int, max_thought_tokens: int, temperature: float, batch_size: int
                        ) -> tuple[torch.Tensor, list[list[int]], list[str]]:
    """`reasoned_logps` for plain-text markers (`think_markers_as_text`), as the trainer does it: sample to EOS or
    the limit, cut at the first occurrence of the close marker's text, then score close ids + x_t in one pass."""
    close_ids = text_marker_ids(tokenizer, close, close)[1]
    pad_id, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    stop_ids = {eos} if eos is not None else set()
    config = thought_generation_config(max_thought_tokens, temperature, stop_ids, pad_id)
    decode = lambda ids: tokenizer.decode(ids, clean_up_tokenization_spaces=False)  # noqa: E731
    device = next(model.parameters()).device
    thoughts, ends, scores = [], [], []
    for start in tqdm(range(0, len(prompts), batch_size), desc="positions (K thoughts each)", unit="batch", leave=False):
        rows = [p for p in prompts[start : start + batch_size] for _ in range(num_thoughts)]
        row_targets = [y for y in targets[start : start + batch_size] for _ in range(num_thoughts)]
        sample = prefix_shared_sample(model, rows, config)
        batch_thoughts = []
        for s in sample.completion_ids:
            thought, cut = split_thought_text(s, stop_ids, close, close_ids, decode)
            batch_thoughts.append(thought)
            ends.append(LENGTH_LIMIT if cut else SAMPLED_CLOSE if close in decode(s) else OTHER_STOP)
        thoughts.extend(batch_thoughts)
        ids, mask = pad_rows([p + t + close_ids + y for p, t, y in zip(rows, batch_thoughts, row_targets)], pad_id, device)
        scores.append(score_last_tokens(model, ids, mask, 1, len(rows))[:, 0].cpu().view(-1, num_thoughts))
    return torch.cat(scores), thoughts, ends


@torch.no_grad()
def evaluate_positions(model, tokenizer, positions, *, open_ids: list[int], close_id: int | None, num_thoughts: int = 4,
                       max_thought_tokens: int = 32, temperature: float = 0.7, batch_size: int = 16,
                       seed: int = 0, close_text: str | None = None) -> dict:
    """No-think and reasoned log-probs of the true next token at each position (rows of `build_position_dataset`).

    `close_id` None: the markers are plain text and `close_text` is the close marker (`reasoned_logps_text`).
    Returns `per_position` metrics (`position_metrics`), the raw log-probs, the thought lengths and how thoughts
    ended (closed by a sampled close marker, truncated at the limit).
    """
    pad_id = tokenizer.pad_token_id
    device = next(model.parameters()).device
    contexts = [list(c) for c in positions["context_ids"]]
    targets = [list(t)[:1] for t in positions["target_ids"]]
    # no-think: log p(x_t | x_<t), one pass per position, only the last position through the LM head
    ids, mask = pad_rows([c + y for c, y in zip(contexts, targets)], pad_id, device)
    nothink = score_last_tokens(model, ids, mask, 1, batch_size)[:, 0].cpu()
    # reasoned: K thoughts after context + <think>, then </think> + x_t scored under teacher forcing
    torch.manual_seed(seed)
    prompts = [c + list(open_ids) for c in contexts]
    common = dict(num_thoughts=num_thoughts, max_thought_tokens=max_thought_tokens, temperature=temperature,
                  batch_size=batch_size)
    if close_id is None:
        reasoned, thoughts, ends = reasoned_logps_text(model, tokenizer, prompts, targets, close=close_text, **common)
    else:
        stop_ids = {close_id} | {t for t in [tokenizer.eos_token_id] if t is not None}
        reasoned, thoughts, ends = reasoned_logps(
            model, prompts, targets, close_id=close_id, stop_ids=stop_ids, pad_id=pad_id, **common
        )
    return {
        "per_position": position_metrics(nothink, reasoned),
        "nothink_logps": nothink,
        "reasoned_logps": reasoned,
        "thought_length_mean": sum(map(len, thoughts)) / len(thoughts),
        "thought_truncated_frac": sum(e == LENGTH_LIMIT for e in ends) / len(ends),
        "thought_closed_frac": sum(e == SAMPLED_CLOSE for e in ends) / len(ends),
        "example_thoughts": [tokenizer.decode(t) for t in thoughts[: 3 * num_thoughts : num_thoughts]],
    }
