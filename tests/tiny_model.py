"""A tiny randomly initialised Llama model and a tiny corpus for fast, offline tests.

`build_tiny_model` trains a byte-level BPE tokenizer on built-in text and saves it with a 2-layer Llama model
(0.14M parameters, under 1 MB) in well under a second, with no downloads.
"""

import random

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


EOS, PAD, THINK_OPEN, THINK_CLOSE = "<|endoftext|>", "<pad>", "<think>", "</think>"

_TEXT = """\
Mathematics is the study of numbers, shapes, patterns and the rules that connect them. A prime number is a whole
number greater than one whose only divisors are one and itself. The first primes are 2, 3, 5, 7, 11 and 13. Every
whole number greater than one can be written as a product of primes in exactly one way, up to the order of the factors.

To solve the equation 3x + 5 = 20, subtract 5 from both sides to get 3x = 15, then divide both sides by 3, so x = 5.
The area of a circle with radius r is pi times r squared, and its circumference is two times pi times r. In a right
triangle with legs a and b and hypotenuse c, the theorem of Pythagoras says that a^2 + b^2 = c^2.

Physics describes how matter and energy behave. Newton's second law states that force equals mass times acceleration.
Light travels at about 300,000 kilometres per second, and the energy of an object at rest is E = mc^2. Water boils at
100 degrees Celsius at sea level and freezes at 0 degrees. An atom has a small, dense nucleus made of protons and
neutrons, surrounded by electrons.

Chemistry studies the elements and how they combine. Hydrogen is the lightest element and the most common one in the
universe. Two hydrogen atoms and one oxygen atom form a molecule of water. The periodic table arranges the elements by
atomic number, so that elements with similar properties fall into the same column.

The capital of France is Paris, and the capital of Japan is Tokyo. The river flows past the old town before it reaches
the sea. She read the book slowly, thinking about each question before writing down her answer. Let us think step by
step: first find what is given, then decide what is asked, and finally check that the answer makes sense.
"""

_SUBJECTS = ["The student", "A teacher", "The model", "My friend", "The scientist", "Every child", "The old clock"]
_VERBS = ["counts", "measures", "writes", "reads", "explains", "checks", "draws", "finds"]
_OBJECTS = ["the answer", "a long proof", "the angle", "each number", "the small star", "a new idea", "the river"]
_ENDINGS = ["before lunch.", "with great care.", "in the morning.", "one step at a time.", "near the window.", "again."]


def _sentence(rng: random.Random) -> str:
    """One random English or arithmetic sentence."""
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    kind = rng.randrange(5)
    if kind == 0:
        return f"The sum of {a} and {b} is {a + b}."
    if kind == 1:
        return f"If x + {a} = {a + b}, then x = {b}."
    if kind == 2:
        return f"{a} times {b} equals {a * b}, and {a * b} divided by {a} is {b}."
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_ENDINGS)}"


def tiny_corpus(n_docs: int = 40, seed: int = 0) -> list[str]:
    """Deterministic plain-text documents of 20 to 200 words mixing arithmetic and simple English."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        target, words = rng.randint(20, 200), []
        while len(words) < target:
            words.extend(_sentence(rng).split())
        docs.append(" ".join(words))
    return docs


def _train_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the built-in text; every special token is a single id."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TEXT, *tiny_corpus(200, seed=1234)], trainer=trainer)
    # Like Qwen3's think tags: atomic, but not "special", so decoding with skip_special_tokens=True keeps them.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in (THINK_OPEN, THINK_CLOSE)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, model_max_length=1024)


def build_tiny_model(out_dir: str, seed: int = 0) -> str:
    """Save a tiny random 2-layer Llama model and its tokenizer to `out_dir` and return `out_dir`."""
    tokenizer = _train_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_gpt2(out_dir: str, dropout: float = 0.0, seed: int = 0) -> str:
    """A tiny random GPT-2 (absolute learned positions, dropout `dropout` in its config) with the same tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _train_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=256, n_embd=64, n_layer=2, n_head=4,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
