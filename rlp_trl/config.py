"""`RLPConfig`: GRPOConfig with the paper's defaults and the RLP-specific fields."""

from dataclasses import dataclass, field

from trl import GRPOConfig

POSITION_STRATEGIES = ("random", "stride")
TRUNCATED_THOUGHT_MODES = ("close", "mask")


@dataclass
class RLPConfig(GRPOConfig):
    r"""
    Configuration class for [`RLPTrainer`] (RLP, arXiv 2510.01265).

    Inherits every [`~trl.GRPOConfig`] field. The GRPO fields below get the paper's values (Sec. 9) as defaults:
    `num_generations=16` (G), `temperature=0.7`, `learning_rate=1e-6` with a constant schedule,
    `max_completion_length=2048` (thought length), `beta=0.0` (no KL), `loss_type="grpo"` (mean over each thought,
    then over thoughts, eq. 8), `scale_rewards="none"` (eq. 7 has no std scaling). `epsilon` / `epsilon_high` are the
    clipping range (epsilon_l, epsilon_h) of eq. 8; the paper does not state them, TRL's 0.2 is kept.

    Parameters:
        > RLP: the EMA teacher

        ema_decay (`float`, *optional*, defaults to `0.999`):
            tau in phi <- tau * phi + (1 - tau) * theta, applied after every optimizer step (Alg. 1, line 15).
        teacher_dtype (`str`, *optional*, defaults to `"float32"`):
            dtype of the EMA teacher weights: `"float32"` (default; a bf16 teacher cannot resolve 1e-3 updates) or
            `"auto"` (same as the model).

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
        truncated_thoughts (`str`, *optional*, defaults to `"close"`):
            A thought that reaches `max_completion_length` without closing is either closed and scored like any
            other (`"close"`) or scored but excluded from the loss (`"mask"`). Counted either way
            (`rlp/thought_truncated_frac`).

        > RLP: positions and reward

        max_context_tokens (`int`, *optional*, defaults to `2048`):
            Context x_<t is left-truncated to this many tokens.
        min_context_tokens (`int`, *optional*, defaults to `16`):
            Positions with fewer context tokens are not sampled; documents too short for one position are skipped
            and counted.
        positions_per_document (`int`, *optional*, defaults to `1`):
            Number of positions t sampled from each document (each becomes one prompt with G rollouts).
        position_strategy (`str`, *optional*, defaults to `"random"`):
            `"random"` (uniform over valid positions, seeded) or `"stride"` (evenly spaced).
        reward_horizon (`int`, *optional*, defaults to `1`):
            Number of true future tokens H scored after the thought. 1 is the paper; H > 1 sums discounted
            per-token information gains (as in Quiet-STaR's multi-token horizon).
        reward_discount (`float`, *optional*, defaults to `1.0`):
            Weight `discount**j` of the j-th scored token when `reward_horizon > 1`.
        dataset_text_field (`str`, *optional*, defaults to `"text"`):
            Column of the training dataset holding the raw documents.
    """

    # Paper defaults for GRPO fields (Sec. 9).
    learning_rate: float = field(default=1e-6, metadata={"help": "Constant learning rate (paper: 1e-6)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Paper: constant learning rate."})
    num_generations: int | None = field(default=16, metadata={"help": "Rollouts G per context (paper: 16)."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of thoughts (paper: 0.7)."})
    max_completion_length: int | None = field(default=2048, metadata={"help": "Maximum thought length (paper: 2048)."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient; the paper uses none (0.0)."})
    loss_type: str = field(default="grpo", metadata={"help": "'grpo' = per-thought mean then batch mean (eq. 8)."})
    scale_rewards: str = field(default="none", metadata={"help": "'none': eq. 7 does not divide by the std."})

    # EMA teacher
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay tau of the no-think teacher."})
    teacher_dtype: str = field(default="float32", metadata={"help": "Teacher weight dtype: 'float32' or 'auto'."})

    # Thoughts
    think_open: str = field(default="<think>", metadata={"help": "Marker that opens a thought."})
    think_close: str = field(default="</think>", metadata={"help": "Marker that closes a thought (stop token)."})
    add_think_tokens: bool = field(
        default=True, metadata={"help": "Add markers missing from the vocabulary as special tokens."}
    )
    min_thought_tokens: int = field(default=1, metadata={"help": "Minimum number of thought tokens."})
    truncated_thoughts: str = field(
        default="close", metadata={"help": "Thoughts hitting the length limit: 'close' (score) or 'mask' (no loss)."}
    )

    # Positions and reward
    max_context_tokens: int = field(default=2048, metadata={"help": "Left-truncate the context to this many tokens."})
    min_context_tokens: int = field(default=16, metadata={"help": "Minimum context tokens before a position."})
    positions_per_document: int = field(default=1, metadata={"help": "Positions sampled per document."})
    position_strategy: str = field(default="random", metadata={"help": "'random' or 'stride'."})
    reward_horizon: int = field(default=1, metadata={"help": "Number of true next tokens scored (H)."})
    reward_discount: float = field(default=1.0, metadata={"help": "Discount of the j-th scored token."})
    dataset_text_field: str = field(default="text", metadata={"help": "Dataset column with the documents."})

    def __post_init__(self):
        super().__post_init__()
        checks = [
            (0.0 < self.ema_decay < 1.0, f"ema_decay must be in (0, 1), got {self.ema_decay}"),
            (self.teacher_dtype in ("float32", "auto"), f"teacher_dtype must be 'float32' or 'auto', got {self.teacher_dtype!r}"),
            (self.num_generations >= 2, f"num_generations (G) must be >= 2 for eq. 7, got {self.num_generations}"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (self.epsilon > 0 and (self.epsilon_high is None or self.epsilon_high > 0), f"epsilon and epsilon_high must be > 0, got {self.epsilon}, {self.epsilon_high}"),
            (self.max_completion_length >= 1, f"max_completion_length must be >= 1, got {self.max_completion_length}"),
            (1 <= self.min_thought_tokens <= self.max_completion_length,
             f"min_thought_tokens must be in [1, max_completion_length={self.max_completion_length}], got {self.min_thought_tokens}"),
            (self.truncated_thoughts in TRUNCATED_THOUGHT_MODES, f"truncated_thoughts must be one of {TRUNCATED_THOUGHT_MODES}, got {self.truncated_thoughts!r}"),
            (self.max_context_tokens >= 1, f"max_context_tokens must be >= 1, got {self.max_context_tokens}"),
            (0 <= self.min_context_tokens <= self.max_context_tokens,
             f"min_context_tokens must be in [0, max_context_tokens={self.max_context_tokens}], got {self.min_context_tokens}"),
            (self.positions_per_document >= 1, f"positions_per_document must be >= 1, got {self.positions_per_document}"),
            (self.position_strategy in POSITION_STRATEGIES, f"position_strategy must be one of {POSITION_STRATEGIES}, got {self.position_strategy!r}"),
            (self.reward_horizon >= 1, f"reward_horizon must be >= 1, got {self.reward_horizon}"),
            (0.0 < self.reward_discount <= 1.0, f"reward_discount must be in (0, 1], got {self.reward_discount}"),
            (bool(self.think_open) and bool(self.think_close) and self.think_open != self.think_close,
             "think_open and think_close must be two different non-empty strings"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"RLPConfig: {message}")
