"""Tokenizer requirements of RLP."""

from .usage import UsageError


def ensure_pad_token(tokenizer) -> None:
    """Use EOS as the pad token when there is none; fail clearly when the tokenizer has neither.

    Padding positions are always masked (contexts are left-padded with an explicit attention mask), so reusing EOS is
    safe. An EOS token is required: TRL ends completions on it, and RLP adds the think-close marker to that set.
    """
    if tokenizer.eos_token is None:
        raise UsageError(
            "The tokenizer has no EOS token. RLP (through TRL) stops generation on EOS and the think-close marker; set "
            "one before building the trainer, e.g. tokenizer.add_special_tokens({'eos_token': '<|endoftext|>'}) "
            "(and resize the model's embeddings if the token is new)."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
