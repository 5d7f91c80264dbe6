"""`RLPTrainer`: RLP (arXiv 2510.01265) on top of TRL's `GRPOTrainer`.

What GRPO already does and RLP keeps: sampling G completions per prompt through TRL's generation path (HF
`generate`, vLLM, continuous batching), the behaviour snapshot (`old_per_token_logps`), batching, accumulation,
logging and checkpointing. What this class changes:

* data: documents are turned into positions (`rlp_trl.data`); a prompt is a token-id context plus `<think>`;
* `_generate_and_score_completions`: a completion is the sampled thought, then `</think>` and the true next
  token(s) under teacher forcing; the reward is the information gain (eq. 5) against the EMA teacher, the
  advantage is eq. 7, and only the action (the thought and a `</think>` the policy sampled, `loss.action_mask`)
  enters the loss (through the per-token `tool_mask`);
* `_compute_loss`: the clipped surrogate of eq. 8 (`rlp_trl.loss.clipped_thought_loss`);
* the EMA teacher: lazily built, updated after every optimizer step, saved and restored with checkpoints.
"""

import contextlib
import os

import torch
from accelerate.utils import gather_object
from datasets import Dataset, IterableDataset
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.trainer.utils import pad, use_adapter

from ._trl_compat import check_trl_compat
from .config import RLPConfig
from .data import build_position_dataset
from .generation import PrefixSharedGenerationMixin
from .loss import LENGTH_LIMIT, OTHER_STOP, SAMPLED_CLOSE, action_mask, clipped_thought_loss
from .markers import markers_missing, prepare_think_markers, split_thought, split_thought_text, text_marker_ids
from .resilience import ResilienceMixin, ensure_pad_token, staged_checkpoint
from .rewards import group_advantages, information_gain, prefix_match_reward
from .scoring import pad_rows, score_last_tokens, score_sequence_ends
from .surprise import make_position_scorer
from .teacher import build_teacher
from .model_card import CITATION, write_card
from .window import fit_context_window


def disable_attention_dropout(model) -> None:
    """Zero the attention dropout that models keep as a float rather than an `nn.Dropout` (Llama, Qwen, Mistral:
    `self.attention_dropout`); TRL's `disable_dropout_in_model` only reaches `nn.Dropout` modules."""
    for module in model.modules():
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def info_gain(*args, **kwargs):
    """Placeholder reward source: GRPOTrainer requires one, but RLP's reward needs the policy and the teacher,
    so `RLPTrainer._generate_and_score_completions` computes it in-batch and this function is never called."""
    raise RuntimeError("the RLP information gain is computed inside RLPTrainer, not as a reward function")


class _EMAUpdateCallback(TrainerCallback):
    """phi <- tau * phi + (1 - tau) * theta after every optimizer step (Alg. 1, line 15)."""

    def __init__(self, trainer: "RLPTrainer"):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.nonfinite_guard.check_weights_after_step()  # a non-finite policy stops here: no EMA, no save
        teacher = self.trainer.teacher
        if teacher.initialized:
            teacher.update(self.trainer.accelerator.unwrap_model(self.trainer.model))


class RLPTrainer(ResilienceMixin, PrefixSharedGenerationMixin, GRPOTrainer):
    """Reinforcement Learning Pretraining (RLP) trainer: GRPO's machinery, RLP's reward, advantage and loss.

    Args:
        model: a model name/path or a `PreTrainedModel` (PEFT models as in `GRPOTrainer`).
        args: an [`RLPConfig`].
        train_dataset: plain documents (column `args.dataset_text_field`), or a dataset already produced by
            [`rlp_trl.data.build_position_dataset`] (columns `prompt`, `context_ids`, `target_ids`).
        eval_dataset, processing_class, callbacks, optimizers, peft_config: as in `GRPOTrainer`.
    """

    _tag_names = ["trl", "rlp"]
    _name = "RLP"
    _paper = {
        "title": "RLP: Reinforcement as a Pretraining Objective",
        "id": "2510.01265",
        # docstyle-ignore
        "citation": CITATION,
    }

    def __init__(
        self,
        model,
        args: RLPConfig | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        quantization_config=None,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = RLPConfig(f"{str(name).rstrip('/').split('/')[-1]}-RLP")
        if not isinstance(args, RLPConfig):
            raise TypeError(f"RLPTrainer needs an RLPConfig, got {type(args).__name__}")
        model_id = model if isinstance(model, str) else model.config._name_or_path
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model_id, padding_side="left", trust_remote_code=args.trust_remote_code)
        ensure_pad_token(processing_class)  # pad = EOS when missing; a clear error without EOS (rlp_trl.resilience)
        text_markers = args.think_markers_as_text and markers_missing(processing_class, args.think_open, args.think_close)
        grow = markers_missing(processing_class, args.think_open, args.think_close) and args.add_think_tokens and not text_markers
        loaded_here = False
        if isinstance(model, str) and (grow or args.position_strategy == "surprising"):
            # The embeddings must grow before GRPOTrainer wraps the model (PEFT, DeepSpeed), so load it here; the
            # `surprising` positions need it too (one pass over the corpus with the initial model = the teacher).
            init_kwargs = dict(args.model_init_kwargs or {})
            if quantization_config is not None:
                init_kwargs["quantization_config"] = quantization_config
            init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(model, **init_kwargs)
            loaded_here = True  # model_init_kwargs applied: GRPOTrainer must not warn that they are ignored
        self.think_markers_text = text_markers
        self.rlp_base_model, self.rlp_markers_added, self.corpus_name = model_id, grow, None  # for the model card
        if text_markers:  # plain multi-token markers, vocabulary unchanged; thoughts are cut post hoc (rlp_trl.markers)
            self.think_open_ids, self.think_close_ids = text_marker_ids(processing_class, args.think_open, args.think_close)
            self.think_close_id = None
        else:
            self.think_open_ids, self.think_close_id, model = prepare_think_markers(
                processing_class, model, args.think_open, args.think_close, args.add_think_tokens,
                init=args.think_token_init, init_texts=(args.think_open_init, args.think_close_init),
            )
            self.think_close_ids = [self.think_close_id]
        if args.use_vllm:  # vLLM SamplingParams: stop on the close marker, at least min_thought_tokens (Alg. 1, l. 7)
            stop = {"stop_token_ids": [self.think_close_id]} if self.think_close_id is not None else {}
            args.generation_kwargs = {**(args.generation_kwargs or {}), **stop, "min_tokens": args.min_thought_tokens}

        self.position_stats = None
        # the default context shrinks to the model's window; an impossible explicit one fails before tokenizing
        fit_context_window(model, args, len(self.think_open_ids), len(self.think_close_ids))
        scorer = None
        if args.position_strategy == "surprising":
            scorer = make_position_scorer(model, args.max_context_tokens, processing_class.pad_token_id)
        if train_dataset is not None:
            train_dataset = self._to_positions(train_dataset, processing_class, args, scorer)
        if eval_dataset is not None:
            eval_dataset = self._to_positions(eval_dataset, processing_class, args, scorer)

        model_init_kwargs, args.model_init_kwargs = args.model_init_kwargs, None if loaded_here else args.model_init_kwargs
        super().__init__(
            model=model,
            reward_funcs=[info_gain],
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
            quantization_config=quantization_config if isinstance(model, str) else None,
        )
        args.model_init_kwargs = model_init_kwargs
        check_trl_compat(self)  # the private GRPOTrainer attributes RLP relies on exist (rlp_trl/_trl_compat.py)
        if args.disable_dropout:  # TRL zeroed the nn.Dropout modules; the reward is a log-likelihood: no noise in it
            disable_attention_dropout(self.model)
        # Generation stops on the close marker as on EOS. TRL reads generation settings once at init
        # (trl#2820, #3425), so the HF-generate config is rebuilt here with the extra stop id.
        if self.think_close_id is not None and self.think_close_id not in self.eos_token_ids:
            self.eos_token_ids = [*self.eos_token_ids, self.think_close_id]
        if not self.use_vllm:
            self.generation_kwargs.update(eos_token_id=self.eos_token_ids, min_new_tokens=args.min_thought_tokens)
            self.generation_config = GenerationConfig(**self.generation_kwargs, disable_compile=True)
        # The EMA teacher for this model and backend (full replica, ZeRO-3 shards, or a PEFT adapter); built before
        # the optimizer and the DeepSpeed engine exist, so a PEFT teacher adapter is frozen and partitioned with the
        # model. Incompatible options (e.g. teacher_device="cpu" with PEFT, FSDP) fail here, naming the fix.
        self.teacher = build_teacher(self.model, args, self.accelerator)
        self.add_callback(_EMAUpdateCallback(self))

    # ------------------------------------------------------------------ data
    def _to_positions(self, dataset, tokenizer, args, position_scorer=None):
        if isinstance(dataset, dict):
            return {k: self._to_positions(v, tokenizer, args, position_scorer) for k, v in dataset.items()}
        if dataset.column_names is not None and {"prompt", "context_ids", "target_ids"} <= set(dataset.column_names):
            return dataset
        positions, stats = build_position_dataset(
            dataset, tokenizer, open_ids=self.think_open_ids, text_field=args.dataset_text_field,
            max_context_tokens=args.max_context_tokens, min_context_tokens=args.min_context_tokens,
            reward_horizon=args.reward_horizon, positions_per_document=args.positions_per_document,
            position_strategy=args.position_strategy, seed=args.seed, max_document_chars=args.max_document_chars,
            position_scorer=position_scorer,
        )
        self.position_stats = self.position_stats or stats
        if stats.documents is not None:
            print(f"[rlp_trl] {stats.summary()}")
        return positions

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt", "context_ids", "target_ids", "doc_index", "position"]

    def _tokenize_prompts(self, prompts: list):
        # RLP prompts are already token ids (context + think-open marker): no decode/re-encode drift.
        return [list(p) for p in prompts], None, {}

    # ------------------------------------------------------------------ rollouts and reward
    def _split_thought(self, sampled: list[int]) -> tuple[list[int], str]:
        """Thought = sampled tokens before the first stop token (close marker or EOS), and how it ended
        (`rlp_trl.loss`: the sampled close marker, another stop, or the length limit)."""
        if self.think_markers_text:
            decode = lambda ids: self._tokenizer.decode(ids, clean_up_tokenization_spaces=False)  # noqa: E731
            thought, cut = split_thought_text(sampled, self._stop_ids, self.args.think_close, self.think_close_ids, decode)
            written = sampled[len(thought) : len(thought) + len(self.think_close_ids)] == self.think_close_ids
            return thought, LENGTH_LIMIT if cut else SAMPLED_CLOSE if written else OTHER_STOP
        return split_thought(sampled, self._stop_ids, self.think_close_id)

    @property
    def _stop_ids(self) -> set[int]:
        return set(self.eos_token_ids)

    def _generate_and_score_completions(self, inputs):
        device = self.accelerator.device
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        pad_id = self._tokenizer.pad_token_id
        horizon = self.args.reward_horizon
        unwrapped = self.accelerator.unwrap_model(self.model)
        if not self.teacher.initialized and self.args.no_think_baseline == "ema":  # Alg. 1, lines 8-9: phi <- theta
            self.teacher.init_from(unwrapped)

        prompts = [list(x["prompt"]) for x in inputs]
        targets = [list(x["target_ids"]) for x in inputs]
        # With prefix sharing, the sampler feeds </think> + x_t.. after each thought in its KV cache and scores them
        self._forced_suffixes = [[self.think_close_id] + y for y in targets]
        try:
            prompt_ids_list, sampled_list, _, _, sampling_logps_list, _, _, _ = self._generate(prompts)
        finally:
            self._forced_suffixes = None
        sample = self._last_sample

        # completion = thought + </think> + true next token(s); the action (thought, sampled </think>) enters the loss
        thoughts, ends = zip(*(self._split_thought(list(s)) for s in sampled_list))
        completions = [t + self.think_close_ids + y for t, y in zip(thoughts, targets)]
        thought_masks = [  # the action: the thought and, when the policy sampled it, its close marker
            action_mask(len(t), end, len(self.think_close_ids), horizon, close_in_loss=self.args.think_close_in_loss,
                        mask_thought=end == LENGTH_LIMIT and self.args.truncated_thoughts == "mask")
            for t, end in zip(thoughts, ends)
        ]
        to_tensor = lambda rows, value, side, dtype=torch.long: pad(  # noqa: E731
            [torch.tensor(r, dtype=dtype) for r in rows], padding_value=value, padding_side=side
        ).to(device)
        prompt_ids, prompt_mask = to_tensor(prompt_ids_list, pad_id, "left"), to_tensor([[1] * len(p) for p in prompt_ids_list], 0, "left")
        completion_ids = to_tensor(completions, pad_id, "right")
        completion_mask = to_tensor([[1] * len(c) for c in completions], 0, "right")
        thought_mask = to_tensor(thought_masks, 0, "right")

        with torch.no_grad():
            # S_pred (eq. 3): the policy, after its thought and </think>, scores the true token(s) at temperature 1;
            # read from the sampler's KV cache when it could, else one extra forward over prompt + completion
            if sample is not None and sample.suffix_logps is not None:
                reasoned = sample.suffix_logps[:, 1:].to(device)
            else:
                seq_ids, seq_mask = pad_rows([p + c for p, c in zip(prompt_ids_list, completions)], pad_id, device)
                reasoned = score_last_tokens(unwrapped, seq_ids, seq_mask, horizon, batch_size)
            # S_ema (eq. 4): one teacher pass per distinct context (shared by its G rollouts, and by the positions of
            # the same document that are prefixes of it)
            contexts = [list(x["context_ids"]) + y for x, y in zip(inputs, targets)]
            if self.args.no_think_baseline == "live":  # ablation: the policy itself, no lag
                baseline = score_sequence_ends(unwrapped, contexts, horizon, batch_size, pad_id).to(device)
            else:
                with self.teacher.scoring(unwrapped) as teacher_model:
                    baseline = score_sequence_ends(teacher_model, contexts, horizon, batch_size, pad_id).to(device)

            old_per_token_logps = None
            generate_every = self.args.steps_per_generation * self.num_iterations
            needs_old = self.args.gradient_accumulation_steps % generate_every != 0
            is_correction = self.use_vllm and self.vllm_importance_sampling_correction
            if needs_old or is_correction:  # the behaviour snapshot theta_old (Alg. 1, line 5)
                old_per_token_logps, _, _ = self._get_per_token_logps_and_entropies(
                    self.model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1),
                    completion_ids.size(1), batch_size=batch_size,
                )
            ref_per_token_logps = None
            if self.beta != 0.0:  # ablation: a KL term (the paper has none, Sec. 2.4); TRL's reference pass
                ref_per_token_logps = self._reference_logps(
                    torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1),
                    completion_ids.size(1), batch_size,
                )

        rewards = information_gain(reasoned, baseline, self.args.reward_discount)  # eq. 5
        gains = rewards
        if self.args.reward_type == "rpt_prefix_match":  # ablation: RPT's binary reward; the gain is still logged
            decode = self._tokenizer.decode
            rewards = prefix_match_reward(
                [decode(t) for t in thoughts], [[decode(y[:j]) for j in range(1, len(y) + 1)] for y in targets]
            ).to(device)
        all_rewards = self.accelerator.gather(rewards)
        all_rewards = self.nonfinite_guard.check_rewards(all_rewards, num_generations, mode)  # NaN/inf: skip or raise
        all_advantages = group_advantages(all_rewards, num_generations)  # eq. 7
        process_slice = slice(self.accelerator.process_index * len(prompts), (self.accelerator.process_index + 1) * len(prompts))
        advantages = all_advantages[process_slice]

        loss_mask = completion_mask * thought_mask
        output = {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
            "tool_mask": thought_mask,
            "advantages": advantages,
            "num_items_in_batch": self.accelerator.gather(loss_mask.sum()).sum(),
        }
        if old_per_token_logps is not None:
            output["old_per_token_logps"] = old_per_token_logps
        if ref_per_token_logps is not None:
            output["ref_per_token_logps"] = ref_per_token_logps
        if is_correction and sampling_logps_list is not None:
            output["importance_sampling_ratio"] = self._vllm_is_ratio(
                old_per_token_logps, sampling_logps_list, thought_masks, loss_mask
            )
        all_gains = all_rewards if gains is rewards else self.accelerator.gather(gains)
        self._log_rlp(mode, inputs, thoughts, ends, reasoned, baseline, all_gains, all_advantages)
        self._metrics[mode]["rlp/reward_mean"].append(all_rewards.mean().item())
        return output

    def _reference_logps(self, input_ids, attention_mask, logits_to_keep, batch_size):
        """Per-token log-probs of the completions under the reference model, as TRL's GRPO computes them: its
        `ref_model`, or with PEFT the base model (adapters disabled, or the initial copy loaded as adapter "ref")."""
        if self.ref_model is not None:
            model = self.ref_model
            context = contextlib.nullcontext()
        else:
            model = self.model
            unwrapped = self.accelerator.unwrap_model(self.model)
            context = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with context:
            logps, _, _ = self._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size
            )
        return logps

    def _vllm_is_ratio(self, old_per_token_logps, sampling_logps_list, action_masks, mask):
        """Importance weights pi_theta_old / pi_vLLM on the action's tokens (TRL's truncate/mask modes, token or
        sequence). The sampled tokens (thought, then its stop token) line up with the completion's first tokens."""
        rows = [
            [float("nan") if v is None else v for v in lp[: sum(m)]] for lp, m in zip(sampling_logps_list, action_masks)
        ]
        width = old_per_token_logps.size(1)
        sampling = torch.tensor([r + [0.0] * (width - len(r)) for r in rows], device=old_per_token_logps.device)
        diff = torch.nan_to_num((old_per_token_logps - sampling) * mask, nan=0.0)
        if self.vllm_importance_sampling_mode.startswith("sequence"):
            diff = diff.sum(-1, keepdim=True)
        ratio = torch.exp(diff)
        low = self.vllm_importance_sampling_clip_min if self.vllm_importance_sampling_clip_min is not None else 0.0
        high = self.vllm_importance_sampling_clip_max if self.vllm_importance_sampling_clip_max is not None else float("inf")
        if self.vllm_importance_sampling_mode.endswith("truncate"):
            return ratio.clamp(min=low, max=high)
        return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)

    def _log_rlp(self, mode, inputs, thoughts, ends, reasoned, baseline, all_rewards, all_advantages):
        gather = self.accelerator.gather
        metrics = self._metrics[mode]
        device = reasoned.device
        lengths = gather(torch.tensor([len(t) for t in thoughts], device=device, dtype=torch.float32))
        cut = gather(torch.tensor([e == LENGTH_LIMIT for e in ends], device=device, dtype=torch.float32))
        closed = gather(torch.tensor([e == SAMPLED_CLOSE for e in ends], device=device, dtype=torch.float32))
        reasoned_all, baseline_all = gather(reasoned.sum(-1)), gather(baseline.sum(-1))
        metrics["rlp/info_gain_mean"].append(all_rewards.mean().item())
        metrics["rlp/info_gain_std"].append(all_rewards.std().item() if all_rewards.numel() > 1 else 0.0)
        metrics["rlp/positive_gain_frac"].append((all_rewards > 0).float().mean().item())
        metrics["rlp/reasoned_logp_mean"].append(reasoned_all.mean().item())
        metrics["rlp/baseline_logp_mean"].append(baseline_all.mean().item())
        metrics["rlp/thought_length_mean"].append(lengths.mean().item())
        metrics["rlp/thought_length_max"].append(lengths.max().item())
        metrics["rlp/thought_truncated_frac"].append(cut.mean().item())
        metrics["rlp/thought_closed_frac"].append(closed.mean().item())  # ended by a sampled close marker
        metrics["rlp/advantage_abs_mean"].append(all_advantages.abs().mean().item())
        metrics["rlp/teacher_updates"].append(float(self.teacher.num_updates))
        # what log_completions shows: the context tail, the thought, the true next token(s), the reward
        decode = self._tokenizer.decode
        self._logs["prompt"].extend(gather_object(["…" + decode(x["context_ids"][-48:]) for x in inputs]))
        self._logs["completion"].extend(gather_object([decode(t) for t in thoughts]))
        self._logs["extra"]["target"].extend(gather_object([decode(x["target_ids"]) for x in inputs]))
        self._logs["rewards"]["info_gain"].extend(all_rewards.tolist())
        self._logs["advantages"].extend(all_advantages.tolist())

    # ------------------------------------------------------------------ loss
    def _uses_paper_loss(self) -> bool:
        a = self.args
        return (
            self.loss_type == "grpo" and self.beta == 0.0 and self.importance_sampling_level == "token"
            and self.top_entropy_quantile >= 1.0 and not self._entropy_bonus_enabled and a.delta is None
            and self.off_policy_mask_threshold is None and not self.aux_loss_enabled
        )

    def _compute_loss(self, model, inputs):
        """Eq. 8 on thought tokens; TRL's own loss for non-paper settings (other loss types, KL, entropy terms)."""
        if not self._uses_paper_loss():
            return super()._compute_loss(model, inputs)
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        per_token_logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([inputs["prompt_ids"], completion_ids], 1),
            torch.cat([inputs["prompt_mask"], completion_mask], 1),
            completion_ids.size(1),
            compute_entropy=True,
        )
        mask = completion_mask * inputs["tool_mask"]
        old = inputs.get("old_per_token_logps")
        old = per_token_logps.detach() if old is None else old
        loss = clipped_thought_loss(
            per_token_logps, old, inputs["advantages"], mask, self.epsilon_low, self.epsilon_high,
            per_token_weights=inputs.get("importance_sampling_ratio"),
        )
        mode = "train" if self.model.training else "eval"

        def global_mean(x):
            totals = self.accelerator.reduce(torch.stack([(x * mask).sum(), mask.sum().float()]), reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        ratio = torch.exp(per_token_logps.detach() - old)
        adv = inputs["advantages"].unsqueeze(1)
        low, high = (ratio < 1 - self.epsilon_low) & (adv < 0), (ratio > 1 + self.epsilon_high) & (adv > 0)
        metrics = self._metrics[mode]
        metrics["entropy"].append(global_mean(entropies))
        metrics["clip_ratio/low_mean"].append(global_mean(low.float()))
        metrics["clip_ratio/high_mean"].append(global_mean(high.float()))
        metrics["clip_ratio/region_mean"].append(global_mean((low | high).float()))
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        return loss / normalizer

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model, trial):
        # Atomic (rlp_trl.resilience): written into a staging folder, marked complete, renamed to checkpoint-N last.
        with staged_checkpoint(self, trial):
            # The teacher goes into the checkpoint folder before the Trainer writes trainer_state.json (written last).
            output_dir = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            if self.teacher.initialized:  # every rank: a ZeRO-3 teacher gathers its shards; the saving rank writes
                if self.args.should_save:
                    os.makedirs(output_dir, exist_ok=True)
                self.teacher.save(output_dir, write=self.args.should_save)
            super()._save_checkpoint(model, trial)

    def _save(self, output_dir=None, state_dict=None):
        unwrapped = self.accelerator.unwrap_model(self.model)
        config = getattr(unwrapped, "config", None)
        use_cache = getattr(config, "use_cache", None)
        if config is not None:  # training turns the KV cache off; a saved model generates with it
            config.use_cache = True
        try:
            with self.teacher.hidden_from_saving(unwrapped):
                super()._save(output_dir, state_dict)
        finally:
            if config is not None:
                config.use_cache = use_cache
        if self.args.should_save:
            write_card(self, output_dir or self.args.output_dir)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """RLP's model card (`rlp_trl.model_card`): base model, corpus, steps and tokens, think markers and how to
        prompt with them, the RLP settings, the final information gain. Written with every saved model too."""
        if self.is_world_process_zero():
            write_card(self, self.args.output_dir, model_name, dataset_name)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.teacher.load(checkpoint, self.accelerator.unwrap_model(self.model))
