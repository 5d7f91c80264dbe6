"""`RLPConfig`: GRPOConfig with the paper's defaults and the RLP-specific fields."""

import math
from dataclasses import dataclass, field

from trl import GRPOConfig

from .markers import THINK_TOKEN_INITS
from .usage import UsageError
from .window import DefaultContextTokens

POSITION_STRATEGIES = ("random", "stride", "surprising")
REWARD_TYPES = ("information_gain", "rpt_prefix_match")
NO_THINK_BASELINES = ("ema", "live")
TRUNCATED_THOUGHT_MODES = ("close", "mask")
TEACHER_DEVICES = ("auto", "cpu")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Predicates for the field checks below (also used by `rlp_trl.RunConfig`)
def int_at_least(low):
    return lambda v: _is_int(v) and v >= low


def number_in(low, high, low_open=False, high_open=False):
    return lambda v: _is_number(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)


def one_of(choices):
    return lambda v: v in choices


# Each field's check, once: (field, predicate, what it must be). Run before `GRPOConfig.__post_init__`, which does
# arithmetic with several of them, so a bad value is reported by name instead of as a TypeError deep inside.
FIELD_CHECKS = [
    # GRPO and Trainer fields RLP relies on
    ("num_generations", int_at_least(2), "an integer >= 2 (G, eq. 7)"),
    ("per_device_train_batch_size", int_at_least(1), "an integer >= 1"),
    ("gradient_accumulation_steps", int_at_least(1), "an integer >= 1"),
    ("steps_per_generation", lambda v: v is None or int_at_least(1)(v), "None or an integer >= 1"),
    ("generation_batch_size", lambda v: v is None or int_at_least(1)(v), "None or an integer >= 1"),
    ("num_iterations", int_at_least(1), "an integer >= 1"),
    ("max_completion_length", int_at_least(1), "an integer >= 1 (the thought length)"),
    ("learning_rate", number_in(0, math.inf), "a finite number >= 0"),
    ("temperature", number_in(0, math.inf, low_open=True), "a finite number > 0"),
    ("top_p", number_in(0, 1, low_open=True), "in (0, 1]"),
    ("epsilon", number_in(0, math.inf, low_open=True), "a finite number > 0"),
    ("epsilon_high", lambda v: v is None or number_in(0, math.inf, low_open=True)(v), "None or a finite number > 0"),
    # RLP's fields
    ("ema_decay", number_in(0, 1, low_open=True, high_open=True), "in (0, 1) (tau of the EMA teacher)"),
    ("teacher_dtype", one_of(("float32", "auto")), "'float32' or 'auto'"),
    ("teacher_device", one_of(TEACHER_DEVICES), f"one of {TEACHER_DEVICES}"),
    ("think_token_init", one_of(THINK_TOKEN_INITS), f"one of {THINK_TOKEN_INITS}"),
    ("truncated_thoughts", one_of(TRUNCATED_THOUGHT_MODES), f"one of {TRUNCATED_THOUGHT_MODES}"),
    ("min_thought_tokens", int_at_least(1), "an integer >= 1"),
    ("max_context_tokens", int_at_least(1), "an integer >= 1"),
    ("min_context_tokens", int_at_least(0), "an integer >= 0"),
    ("positions_per_document", int_at_least(1), "an integer >= 1"),
    ("position_strategy", one_of(POSITION_STRATEGIES), f"one of {POSITION_STRATEGIES}"),
    ("reward_horizon", int_at_least(1), "an integer >= 1"),
    ("reward_discount", number_in(0, 1, low_open=True), "in (0, 1]"),
    ("reward_type", one_of(REWARD_TYPES), f"one of {REWARD_TYPES}"),
    ("no_think_baseline", one_of(NO_THINK_BASELINES), f"one of {NO_THINK_BASELINES}"),
    ("reader_nll_coef", number_in(0, math.inf), "a finite number >= 0"),
    ("nothink_nll_coef", number_in(0, math.inf), "a finite number >= 0"),
    ("think_marker_lr_multiplier", number_in(0, math.inf, low_open=True), "a finite number > 0"),
    ("max_document_chars", int_at_least(0), "an integer >= 0 (0 disables the cap)"),
]


def check_fields(obj, checks, owner: str) -> None:
    """`checks` as (field, predicate, what it must be): the first field of `obj` that fails is a `UsageError`."""
    for name, ok, expected in checks:
        if not ok(getattr(obj, name)):
            raise UsageError(f"{owner}: {name} must be {expected}, got {getattr(obj, name)!r}")


def _check_across_fields(cfg) -> None:
    """The checks that relate two fields."""
    checks = [
        (cfg.min_thought_tokens <= cfg.max_completion_length,
         f"min_thought_tokens must be in [1, max_completion_length={cfg.max_completion_length}], got {cfg.min_thought_tokens}"),
        (cfg.min_context_tokens <= cfg.max_context_tokens,
         f"min_context_tokens must be in [0, max_context_tokens={cfg.max_context_tokens}], got {cfg.min_context_tokens}"),
        (bool(cfg.think_open) and bool(cfg.think_close) and cfg.think_open != cfg.think_close,
         "think_open and think_close must be two different non-empty strings"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(f"RLPConfig: {message}")


def _name_the_batch_fix(cfg, error: ValueError) -> ValueError:
    """GRPOConfig's "must be divisible by num_generations" errors, restated with the values and a fix."""
    if "divisible by num_generations" in str(error):
        g, per_device, steps = cfg.num_generations, cfg.per_device_train_batch_size, cfg.steps_per_generation
        kind, field_name = "train", "per_device_train_batch_size"
    elif "divisible by the number of generations" in str(error):
        g, per_device, steps = cfg.num_generations_eval or cfg.num_generations, cfg.per_device_eval_batch_size, 1
        kind, field_name = "eval", "per_device_eval_batch_size"
    else:
        return error
    processes = cfg.world_size
    total = per_device * processes * steps
    better = next(b for b in range(per_device + 1, per_device + g + 1) if b * processes * steps % g == 0)
    divisors = [d for d in range(2, total + 1) if total % d == 0]
    return UsageError(
        f"RLPConfig: every {kind} generation batch must hold whole groups of G = {g} rollouts of one context (eq. 7 "
        f"normalises within a group, and a group may span processes), but {field_name} ({per_device}) x processes "
        f"({processes}) x steps_per_generation ({steps}) = {total} is not a multiple of {g}. Fix: set "
        f"--{field_name} {better}, or num_generations to a divisor of {total} ({', '.join(map(str, divisors)) or 'none >= 2'}), "
        f"or change the number of processes."
    )


@dataclass
class RLPConfig(GRPOConfig):
    r"""
    Configuration class for [`RLPTrainer`] (RLP, arXiv 2510.01265).

    Inherits every [`~trl.GRPOConfig`] field. The GRPO fields below get the paper's values (Sec. 9) as defaults:
    `num_generations=16` (G), `temperature=0.7`, `learning_rate=1e-6` with a constant schedule,
    `max_completion_length=2048` (thought length), `beta=0.0` (no KL), `disable_dropout=True` (TRL: False; the
    reward is a log-likelihood of the policy, and sampler, S_pred, theta_old and loss pass must agree),
    `loss_type="grpo"` (mean over each thought,
    then over thoughts, eq. 8), `scale_rewards="none"` (eq. 7 has no std scaling). `epsilon` / `epsilon_high` are the
    clipping range (epsilon_l, epsilon_h) of eq. 8; the paper does not state them, TRL's 0.2 is kept.

    Parameters:
        > RLP: the EMA teacher

        ema_decay (`float`, *optional*, defaults to `0.999`):
            tau in phi <- tau * phi + (1 - tau) * theta, applied after every optimizer step (Alg. 1, line 15).
        teacher_dtype (`str`, *optional*, defaults to `"float32"`):
            dtype of the EMA teacher weights: `"float32"` (default; a bf16 teacher cannot resolve 1e-3 updates) or
            `"auto"` (same as the model).
        teacher_device (`str`, *optional*, defaults to `"auto"`):
            Where the EMA teacher lives (docs/scaling.md). `"auto"`: next to the policy's weights, partitioned like
            them: a full replica on each device (single process, DDP, DeepSpeed ZeRO-1/2), ZeRO-3 shards (offloaded if
            the policy's parameters are), or, with PEFT, a second adapter `"rlp_ema"` on the shared frozen base
            (adapter-sized). `"cpu"`: in CPU memory: a CPU replica scored on the CPU (no ZeRO-3), or ZeRO-3 shards with
            parameter offload. Not available with PEFT (the adapter teacher must sit on the base weights).

        > RLP: thoughts

        think_open (`str`, *optional*, defaults to `"<think>"`):
            Marker appended to the context to start a thought.
        think_close (`str`, *optional*, defaults to `"</think>"`):
            Marker that ends a thought; generation stops on it. The true next token(s) follow it.
        add_think_tokens (`bool`, *optional*, defaults to `True`):
            If a marker is not a single token of the vocabulary, add it as a special token and resize the
            embeddings. With `False`, such markers raise an error.
        min_thought_tokens (`int`, *optional*, defaults to `1`):
            Minimum thought length; the close marker and EOS are suppressed before it (Alg. 1 line 7: |c| >= 1).
        think_close_in_loss (`bool`, *optional*, defaults to `True`):
            A close marker the policy sampled is part of the action: it gets the policy gradient and counts in the
            per-thought mean of eq. 8 (|c| + 1 tokens). A close the trainer wrote (thought at the length limit, or in
            place of a sampled EOS) gets none. `False`: thought tokens only, a biased gradient that cannot learn when
            to stop (ablation). docs/algorithm.md.
        think_token_init (`str`, *optional*, defaults to `"text"`):
            How the embedding rows of markers added to the vocabulary start: `"text"`, the mean of the rows of the
            tokens of `think_open_init` / `think_close_init`; `"mean"`, transformers' `mean_resizing` (random around
            the mean of all rows; thoughts of SmolLM2 then never close). Measured in docs/markers.md.
        think_open_init (`str`, *optional*, defaults to `"<"`):
            Text whose token rows initialise an added open marker (`think_token_init="text"`; empty: the marker's own
            text).
        think_close_init (`str`, *optional*, defaults to `">"`):
            The same for an added close marker.
        truncated_thoughts (`str`, *optional*, defaults to `"close"`):
            A thought that reaches `max_completion_length` without closing is either closed and scored like any
            other (`"close"`) or scored but excluded from the loss (`"mask"`). Counted either way
            (`rlp/thought_truncated_frac`).

        > RLP: positions and reward

        max_context_tokens (`int`, *optional*, defaults to `2048`):
            Context x_<t is left-truncated to this many tokens. Left at its default, it is shortened to fit the model's
            context window (`max_position_embeddings`) together with the markers, `max_completion_length` and
            `reward_horizon`, with one log line; a value set explicitly that cannot fit is an error before any data is
            tokenized, proposing values that fit (`rlp_trl.window`).
        min_context_tokens (`int`, *optional*, defaults to `16`):
            Positions with fewer context tokens are not sampled; documents too short for one position are skipped
            and counted.
        positions_per_document (`int`, *optional*, defaults to `1`):
            Number of positions t sampled from each document (each becomes one prompt with G rollouts).
        position_strategy (`str`, *optional*, defaults to `"random"`):
            `"random"` (uniform over valid positions, seeded), `"stride"` (evenly spaced) or `"surprising"` (the
            positions whose true token has the lowest no-think log-prob under the teacher, from one forward pass over
            each document when the dataset is built; at that time the teacher is the initial model. `rlp_trl.surprise`).
        reward_horizon (`int`, *optional*, defaults to `1`):
            Number of true future tokens H scored after the thought. 1 is the paper; H > 1 sums discounted
            per-token information gains (as in Quiet-STaR's multi-token horizon).
        reward_discount (`float`, *optional*, defaults to `1.0`):
            Weight `discount**j` of the j-th scored token when `reward_horizon > 1`.
        reward_type (`str`, *optional*, defaults to `"information_gain"`):
            Reward of a thought, for ablations. `"information_gain"`: the paper's r = S_pred - S_ema (eq. 5).
            `"rpt_prefix_match"`: RPT's binary reward (arXiv 2506.08007) in RLP's format: the thought's last line
            (after its last newline, whitespace-stripped) is its predicted continuation, and r = 1 iff it equals the
            whitespace-stripped text of the first j true tokens x_t..x_{t+j-1} for some 1 <= j <= `reward_horizon`
            (a byte prefix of the true text ending on a token boundary), else 0 (`rlp_trl.rewards.prefix_match_reward`).
            Advantages (eq. 7), loss and logging are unchanged; `rlp/info_gain_*` is still logged.
        no_think_baseline (`str`, *optional*, defaults to `"ema"`):
            Model that computes S_ema (eq. 4): `"ema"`, the paper's EMA teacher, or `"live"`, the current policy
            itself without a thought (no lag; the paper argues this lets the reward collapse). With `"live"` no
            teacher copy is kept.
        dataset_text_field (`str`, *optional*, defaults to `"text"`):
            Column of the training dataset holding the raw documents.

        > RLP: likelihood terms (off in the paper; docs/algorithm.md, docs/learning_curve.md)

        reader_nll_coef (`float`, *optional*, defaults to `0.0`):
            Weight of the reader term added to eq. 8's loss: the NLL of the true token(s) x_t.. after the thought and
            `</think>` under the policy at temperature 1, per thought (tokens weighted `reward_discount**j`, averaged),
            averaged over thoughts as eq. 8 is. Its gradient is the pathwise part of the gradient of RLP's objective
            E_c[log p_theta(x_t | x_<t, c)], which eq. 8 leaves out: it trains the model to read its thought
            (Quiet-STaR trains it; the paper's runs do not). Read from the loss pass: no extra forward.
        nothink_nll_coef (`float`, *optional*, defaults to `0.0`):
            Weight of the ordinary next-token NLL of the same true token(s) without a thought, log p_theta(x_t | x_<t)
            at temperature 1, averaged like the reader term, so both ways of predicting x_t get likelihood training
            and a positive held-out gain means the thought helps. Read from the loss pass for `reward_horizon=1`; one
            extra forward per distinct context for `reward_horizon > 1`.
        think_marker_lr_multiplier (`float`, *optional*, defaults to `1.0`):
            The optimizer's update of the single-token markers' embedding rows is scaled by this factor (with Adam:
            their learning rate times it), as Quiet-STaR trains its thought markers at 100x (`rlp_trl.marker_lr`).
            Tied embeddings are scaled once; under LoRA only trainable embeddings (`modules_to_save`). Not with text
            markers, ZeRO-3 or FSDP.

        > RLP: robustness (docs/reliability.md; the run's own options are `rlp_trl.RunConfig`)

        max_document_chars (`int`, *optional*, defaults to `1000000`):
            Caps the tokenization cost of a document: a longer one is replaced by a window of this many characters at
            a seeded random offset (counted as `windowed`). `0` disables the cap.
        think_markers_as_text (`bool`, *optional*, defaults to `False`):
            Markers that are not single tokens are used as plain text (several tokens, vocabulary unchanged) instead of
            being added as special tokens; a thought then ends at the first occurrence of the close marker in its
            text, however it was tokenized (generation itself stops only at EOS or the length limit).

        > RLP: speed

        prefix_sharing (`bool`, *optional*, defaults to `True`):
            `True`: the G rollouts of a context share its prompt computation. Sampling (non-vLLM path): each
            distinct context is prefilled once and its KV cache copied to its G rows, and S_pred (eq. 3) is read
            from the same cache by feeding `</think>` and the true token(s) after each thought, so there is no
            separate scoring pass (`rlp_trl.fast.generation`). Loss pass (eq. 8) and theta_old log-probs: each distinct
            prompt runs forward once and the rows run only their completions on its cache; gradients are summed
            into it by autograd (`rlp_trl.fast.shared_prefix`; not under DeepSpeed, FSDP or gradient checkpointing).
            Same samples under the same seed, same log-probs and gradients up to float rounding. `False`: TRL's
            default generation (`model.generate` on every row), TRL's loss pass and one extra forward for S_pred.
            vLLM keeps its own prefix caching either way. See docs/performance.md.
    """

    # Paper defaults for GRPO fields (Sec. 9).
    learning_rate: float = field(default=1e-6, metadata={"help": "Constant learning rate (paper: 1e-6)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Paper: constant learning rate."})
    num_generations: int | None = field(default=16, metadata={"help": "Rollouts G per context (paper: 16)."})
    per_device_train_batch_size: int = field(
        default=16, metadata={"help": "Rollouts per device per step; a multiple of G divides the batch into whole groups."}
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of thoughts (paper: 0.7)."})
    max_completion_length: int | None = field(default=2048, metadata={"help": "Maximum thought length (paper: 2048)."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient; the paper uses none (0.0)."})
    loss_type: str = field(default="grpo", metadata={"help": "'grpo' = per-thought mean then batch mean (eq. 8)."})
    scale_rewards: str = field(default="none", metadata={"help": "'none': eq. 7 does not divide by the std."})
    disable_dropout: bool = field(
        default=True,
        metadata={"help": "No dropout when sampling and scoring thoughts (the reward is a log-likelihood: no noise). "
                          "False: the model's own dropout in sampling, S_pred, theta_old and the loss pass."},
    )

    # EMA teacher
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay tau of the no-think teacher."})
    teacher_dtype: str = field(default="float32", metadata={"help": "Teacher weight dtype: 'float32' or 'auto'."})
    teacher_device: str = field(
        default="auto", metadata={"help": "EMA teacher placement: 'auto' (next to the policy weights) or 'cpu'."}
    )

    # Thoughts
    think_open: str = field(default="<think>", metadata={"help": "Marker that opens a thought."})
    think_close: str = field(default="</think>", metadata={"help": "Marker that closes a thought (stop token)."})
    add_think_tokens: bool = field(
        default=True, metadata={"help": "Add markers missing from the vocabulary as special tokens."}
    )
    min_thought_tokens: int = field(default=1, metadata={"help": "Minimum number of thought tokens."})
    think_close_in_loss: bool = field(
        default=True, metadata={"help": "The sampled close marker gets the policy gradient (unbiased; False: ablation)."}
    )
    think_token_init: str = field(
        default="text", metadata={"help": "Rows of added markers: 'text' (from the init texts' tokens) or 'mean'."}
    )
    think_open_init: str = field(default="<", metadata={"help": "Text whose token rows initialise an added open marker."})
    think_close_init: str = field(default=">", metadata={"help": "Text whose token rows initialise an added close marker."})
    truncated_thoughts: str = field(
        default="close", metadata={"help": "Thoughts hitting the length limit: 'close' (score) or 'mask' (no loss)."}
    )

    # Positions and reward
    max_context_tokens: int = field(
        default=DefaultContextTokens(2048),
        metadata={"help": "Left-truncate the context to this many tokens. Default: 2048, shortened to fit the model's "
                          "context window with the markers, the thought and the horizon (a value you set is checked)."},
    )
    min_context_tokens: int = field(default=16, metadata={"help": "Minimum context tokens before a position."})
    positions_per_document: int = field(default=1, metadata={"help": "Positions sampled per document."})
    position_strategy: str = field(default="random", metadata={"help": "'random', 'stride' or 'surprising'."})
    reward_horizon: int = field(default=1, metadata={"help": "Number of true next tokens scored (H)."})
    reward_discount: float = field(default=1.0, metadata={"help": "Discount of the j-th scored token."})
    reward_type: str = field(
        default="information_gain", metadata={"help": "'information_gain' (paper, eq. 5) or 'rpt_prefix_match' (RPT)."}
    )
    no_think_baseline: str = field(default="ema", metadata={"help": "S_ema from the 'ema' teacher or the 'live' policy."})
    dataset_text_field: str = field(default="text", metadata={"help": "Dataset column with the documents."})

    # Likelihood terms
    reader_nll_coef: float = field(
        default=0.0, metadata={"help": "Weight of the NLL of x_t after the thought (the reader term; paper: 0)."}
    )
    nothink_nll_coef: float = field(
        default=0.0, metadata={"help": "Weight of the no-thought NLL of x_t (ordinary next-token loss; paper: 0)."}
    )
    think_marker_lr_multiplier: float = field(
        default=1.0, metadata={"help": "Scale of the marker embedding rows' updates (Quiet-STaR: 100; paper: 1)."}
    )

    # Robustness
    max_document_chars: int = field(
        default=1_000_000, metadata={"help": "Longer documents are cut to a seeded window of this many characters (0: off)."}
    )
    think_markers_as_text: bool = field(
        default=False, metadata={"help": "Use multi-token markers as plain text instead of adding them as tokens."}
    )

    # Speed
    prefix_sharing: bool = field(
        default=True,
        metadata={"help": "G rollouts share their context's prefill (S_pred read from that cache) and prompt forward."},
    )

    def __post_init__(self):
        check_fields(self, FIELD_CHECKS, "RLPConfig")  # each field once, before GRPOConfig computes with them (FIELD_CHECKS)
        if self.bf16 is None and not self.fp16:
            # GRPOConfig turns bf16 on unconditionally, which TrainingArguments rejects on CPU-only machines; use it
            # wherever a bf16-capable accelerator is present, as the paper does, and fp32 elsewhere.
            import torch

            self.bf16 = not self.use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        try:
            super().__post_init__()
        except ValueError as error:
            raise _name_the_batch_fix(self, error) from error
        _check_across_fields(self)
