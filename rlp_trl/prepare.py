"""What `RLPTrainer` does before `GRPOTrainer.__init__`, as one function that returns values: the tokenizer's pad token,
the think markers (single tokens, added to the vocabulary, or plain text), the policy loaded here when its embeddings
must grow, the context window, and the documents turned into positions (Sec. 2: a prompt is a context plus `<think>`)."""

from dataclasses import dataclass

from transformers import AutoTokenizer

from .data import to_position_dataset
from .loading import load_policy
from .markers import markers_missing, think_markers
from .surprise import make_position_scorer
from .tokens import ensure_pad_token
from .window import fit_context_window


@dataclass
class Prepared:
    """The model (a name/path, or loaded here), the tokenizer, the marker ids and the position datasets."""

    model: object
    tokenizer: object
    open_ids: list[int]  # the think-open marker's ids, appended to every context
    close_ids: list[int]  # the close marker's ids, written after every thought
    close_id: int | None  # the close marker as one token (generation stops on it), None for text markers
    as_text: bool  # markers used as plain multi-token text (`think_markers_as_text`)
    markers_added: bool  # markers added to the vocabulary (the embeddings grew)
    loaded_here: bool  # the model was loaded here: TRL must not load it again
    train_dataset: object
    eval_dataset: object
    position_stats: object  # what building the positions kept and skipped (for the summary and the model card)


def prepare(model, args, tokenizer=None, train_dataset=None, eval_dataset=None, quantization_config=None) -> Prepared:
    """Markers, model, window and positions for `RLPTrainer` (see the module docstring)."""
    model_id = model if isinstance(model, str) else model.config._name_or_path
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model_id, padding_side="left", trust_remote_code=args.trust_remote_code)
    ensure_pad_token(tokenizer)  # pad = EOS when missing; a clear error without EOS
    missing = markers_missing(tokenizer, args.think_open, args.think_close)
    as_text = missing and args.think_markers_as_text
    grow = missing and args.add_think_tokens and not as_text
    loaded_here = isinstance(model, str) and (grow or args.position_strategy == "surprising")
    if loaded_here:  # the embeddings grow before GRPOTrainer wraps the model (PEFT, DeepSpeed); `surprising` scores
        model = load_policy(model, args, quantization_config)  # the corpus with the initial model (= the teacher)
    open_ids, close_ids, close_id, model = think_markers(tokenizer, model, args, as_text=as_text)
    # the default context shrinks to the model's window; an impossible explicit one fails before tokenizing
    fit_context_window(model, args, len(open_ids), len(close_ids))
    scorer = None
    if args.position_strategy == "surprising":  # one pass over the corpus with the initial model (rlp_trl.surprise)
        scorer = make_position_scorer(model, args.max_context_tokens, tokenizer.pad_token_id)
    (train, train_stats), (evaluation, eval_stats) = (
        (None, None) if d is None else to_position_dataset(d, tokenizer, args, open_ids, scorer)
        for d in (train_dataset, eval_dataset))
    return Prepared(model, tokenizer, open_ids, close_ids, close_id, as_text, grow, loaded_here, train, evaluation,
                    train_stats or eval_stats)
