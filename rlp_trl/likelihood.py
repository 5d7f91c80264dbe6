"""Likelihood terms beside eq. 8: train the reader of a thought, and the no-think prediction alike (off by default).

RLP maximises J(theta) = E_{c ~ pi_theta}[log p_theta(x_t | x_<t, c)] - log p_ema(x_t | x_<t). Its gradient has two
parts: the score-function part E[grad log pi_theta(c) * A] (eq. 8, the only one the paper trains: it treats the reward
as a constant) and the pathwise part E_c[grad log p_theta(x_t | x_<t, c)], which teaches the model to *read* a thought.
`RLPConfig.reader_nll_coef` adds the second as a loss, `coef * NLL(x_t.. | x_<t, <think> c </think>)`;
`RLPConfig.nothink_nll_coef` adds the ordinary next-token loss of the same tokens without a thought, so both ways of
predicting x_t get the same likelihood training (docs/algorithm.md, "Likelihood terms").

Both are temperature-1 log-probs, the temperature of the reward (S_pred, eq. 3): the quantity trained is the one the
reward measures, whatever temperature thoughts are sampled at. Both come from passes that already run:

* the reader term from the loss pass itself: its last hidden states at the positions that predict x_t.. go through the
  LM head once more at temperature 1 (`H` rows of the head per thought; the pass's own log-probs are at the sampling
  temperature);
* the no-think term, for `reward_horizon = 1`, from the same pass: the hidden state of the context's last token (the
  prompt is context + open marker) predicts x_t. With `reward_horizon > 1` the later tokens x_{t+1}.. have no
  thought-free prefix in that pass, so `nothink_logps` runs one extra forward per distinct context.

Per thought, the H scored tokens are weighted `reward_discount**j` as in the reward (eq. 5 with H > 1) and averaged;
thoughts are averaged as eq. 8 averages them.
"""

import contextlib
from dataclasses import dataclass

import torch

from .fast.scoring import mask_positions


@dataclass(frozen=True)
class LikelihoodRequest:
    """What the loss pass should also return: temperature-1 log-probs of the last `horizon` completion tokens (the
    true tokens after `</think>`), and (`nothink`) of x_t from the hidden state of the context's last token, which
    sits `open_len + 1` columns before the end of each prompt."""

    horizon: int
    open_len: int
    nothink: bool


@dataclass
class LikelihoodLogps:
    """`[N, H]` temperature-1 log-probs, with gradient: after the thought (`reader`) and, if requested, without it
    (`nothink`, `[N, 1]`: x_t only)."""

    reader: torch.Tensor
    nothink: torch.Tensor | None = None


def causal_lm(unwrapped):
    """The causal LM under a PEFT wrapper (or the model itself): the module whose backbone and head TRL's fused head
    uses."""
    return unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped


@contextlib.contextmanager
def last_hidden_states(lm):
    """Collects the backbone's last hidden state (`lm.base_model`, as TRL's fused head reads it) of every forward run
    inside the block, in call order, with their autograd history."""
    states: list[torch.Tensor] = []

    def hook(module, args, output):
        states.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    handle = lm.base_model.register_forward_hook(hook)
    try:
        yield states
    finally:
        handle.remove()


def head_logps(lm, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(labels | hidden) at temperature 1 through the model's own output head, with the logit post-processing
    its forward applies (soft-capping: Gemma 2/3; a logit scale: Cohere, Granite)."""
    logits = lm.get_output_embeddings()(hidden).float()
    config = lm.config.get_text_config()
    scale = getattr(config, "logit_scale", None)
    if scale is not None:
        logits = logits * scale
    if getattr(config, "logits_scaling", None):
        logits = logits / config.logits_scaling
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def scored_columns(completion_mask: torch.Tensor, horizon: int) -> torch.Tensor:
    """`[N, H]` columns of the true tokens x_t.. in right-padded completions (the last `horizon` real tokens)."""
    lengths = completion_mask.sum(1, keepdim=True)
    return lengths - horizon + torch.arange(horizon, device=completion_mask.device)


def pass_logps(lm, request: LikelihoodRequest, completion_ids, completion_mask, completion_hidden: torch.Tensor,
               context_hidden: torch.Tensor) -> LikelihoodLogps:
    """The likelihood terms' log-probs from one pass's hidden states, whatever its layout: `completion_hidden[:, j]`
    is the state that predicts completion token j (`[N, C + 1, d]`), `context_hidden` the state of each row's last
    context token (`[N, d]`), which predicts x_t without a thought."""
    cols = scored_columns(completion_mask, request.horizon)
    rows = torch.arange(cols.size(0), device=cols.device)[:, None]
    targets = completion_ids.gather(1, cols)
    reader = head_logps(lm, completion_hidden[rows, cols], targets)
    nothink = head_logps(lm, context_hidden, targets[:, 0])[:, None] if request.nothink else None
    return LikelihoodLogps(reader, nothink)


def likelihood_nll(logps: torch.Tensor, discount: float) -> torch.Tensor:
    """`[N]` NLL per thought: the H tokens weighted `discount**j` as the reward weights them, averaged."""
    weights = discount ** torch.arange(logps.size(1), device=logps.device, dtype=logps.dtype)
    return -(logps * weights).sum(1) / weights.sum()


def nothink_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, open_len: int, horizon: int):
    """`[N, H]` log p(x_{t+j} | x_<t+j) at temperature 1 with gradient, one forward per distinct context: the context
    (prompt minus the open marker) followed by x_t..x_{t+H-2}. Used when `reward_horizon > 1` (for H = 1 the loss
    pass has this log-prob already)."""
    cols = scored_columns(completion_mask, horizon)
    targets = completion_ids.gather(1, cols)
    ids = torch.cat([prompt_ids[:, :-open_len], targets[:, :-1]], 1)
    mask = torch.cat([prompt_mask[:, :-open_len], torch.ones_like(targets[:, :-1])], 1)
    unique, rows = torch.unique(torch.cat([ids, mask], 1), dim=0, return_inverse=True)
    ids, mask = unique[:, : ids.size(1)], unique[:, ids.size(1) :]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=mask_positions(mask), logits_to_keep=horizon).logits
    logps = torch.log_softmax(logits.float(), -1)
    return logps[rows].gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def likelihood_loss(logps: LikelihoodLogps, inputs: dict, args, model, open_len: int, autocast):
    """`reader_nll_coef` x the reader NLL + `nothink_nll_coef` x the no-think NLL for one micro-batch, and the NLLs
    to log (`rlp/reader_nll`, `rlp/nothink_nll`, detached). The no-think log-probs come with `logps` for H = 1; for
    H > 1 they take `nothink_logps`' extra forward (only when their coefficient is set)."""
    nothink = logps.nothink
    if args.nothink_nll_coef and nothink is None:
        with autocast():
            nothink = nothink_logps(model, inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"],
                                    inputs["completion_mask"], open_len, args.reward_horizon)
    loss, logged = 0.0, {}
    for name, term, coef in (("rlp/reader_nll", logps.reader, args.reader_nll_coef),
                             ("rlp/nothink_nll", nothink, args.nothink_nll_coef)):
        if term is not None:
            nll = likelihood_nll(term, args.reward_discount).mean()
            loss, logged[name] = loss + coef * nll, nll.detach()
    return loss, logged
