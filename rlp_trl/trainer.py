"""`RLPTrainer`: RLP (arXiv 2510.01265) on top of TRL's `GRPOTrainer`.

What GRPO already does and RLP keeps: sampling G completions per prompt (HF `generate`, vLLM, continuous batching),
the behaviour snapshot (`old_per_token_logps`), batching, accumulation, the clipped loss of eq. 8 (TRL's
`loss_type="grpo"` over the per-token `tool_mask`, which is RLP's per-thought mean; tests/test_loss_equivalence.py
checks it against `rlp_trl.loss.clipped_thought_loss`), logging and checkpointing. What this class changes:

* data: documents become positions (`rlp_trl.data`); a prompt is a token-id context plus `<think>`;
* `_generate_and_score_completions`, one RLP step as named calls over typed values (`rlp_trl.rollouts`): sample
  thoughts -> cut them (thought + `</think>` + true next token(s)) -> S_pred, S_ema (eqs. 3-4) -> information gain
  and advantages (eqs. 5, 7) -> TRL's loss inputs, the action (thought, sampled `</think>`) as `tool_mask`;
* the EMA teacher (`rlp_trl.teacher`): updated after every optimizer step, saved and loaded with checkpoints.

The run's guarantees (lock, resume, signals, guards, atomic checkpoints) are composed around it by
`rlp_trl.train(trainer, ...)` (`rlp_trl.resilience.run`).
"""

import contextlib
import functools
import os

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.extras.profiling import profiling_context
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import use_adapter

from ._trl_compat import check_trl_compat
from .config import RLPConfig
from .fast.generation import hf_generation_config, loss_pass_sharing, prefix_shared_sample, uses_prefix_sharing
from .fast.generation import vllm_stop_kwargs
from .fast.scoring import score_sequence_ends
from .fast.shared_prefix import completion_scores, packable, policy_logps
from .likelihood import LikelihoodRequest, likelihood_loss
from .loading import disable_attention_dropout, kv_cache_on
from .marker_lr import marker_lr_callback
from .metrics import completion_table, extend_logs, generation_metrics, rlp_metrics
from .model_card import CITATION, CardFacts, write_card
from .prepare import prepare
from .rewards import exclude_nonfinite_groups, group_advantages, information_gain, reward_for
from .rollouts import PaddedBatch, Rollouts, ThoughtCutter, cut_thoughts, pack_for_trl, tensorize, vllm_is_ratio
from .teacher import EMAUpdateCallback, build_teacher


def _reward_computed_in_batch(*args, **kwargs):
    """GRPOTrainer requires a reward function; RLP's reward (eq. 5) needs the policy and the teacher, so
    `RLPTrainer._generate_and_score_completions` computes it and this is never called."""
    raise RuntimeError("the RLP information gain is computed inside RLPTrainer, not as a reward function")


@contextlib.contextmanager
def _args_for_grpo(args: RLPConfig, close_id: int | None, loaded_here: bool):
    """The one place RLP changes `args` after construction, around `GRPOTrainer.__init__`, which reads its generation
    settings once (trl#2820): vLLM's SamplingParams stop on the close marker and sample at least `min_thought_tokens`
    (Alg. 1, line 7); a model RLP loaded itself (to grow its embeddings) is not loaded again by TRL, so
    `model_init_kwargs` is hidden from it while it runs."""
    if args.use_vllm:
        args.generation_kwargs = vllm_stop_kwargs(args.generation_kwargs, close_id, args.min_thought_tokens)
    model_init_kwargs = args.model_init_kwargs
    args.model_init_kwargs = None if loaded_here else model_init_kwargs
    try:
        yield args
    finally:
        args.model_init_kwargs = model_init_kwargs


class RLPTrainer(GRPOTrainer):
    """Reinforcement Learning Pretraining (RLP) trainer: GRPO's machinery, RLP's reward, advantage and loss.

    Args:
        model: a model name/path or a `PreTrainedModel` (PEFT models as in `GRPOTrainer`).
        args: an [`RLPConfig`].
        train_dataset: plain documents (column `args.dataset_text_field`), or a dataset already produced by
            [`rlp_trl.data.build_position_dataset`] (columns `prompt`, `context_ids`, `target_ids`).
        eval_dataset, processing_class, callbacks, optimizers, peft_config, quantization_config: as in `GRPOTrainer`.
    """

    _tag_names = ["trl", "rlp"]
    _name = "RLP"
    _paper = {"title": "RLP: Reinforcement as a Pretraining Objective", "id": "2510.01265", "citation": CITATION}

    def __init__(self, model, args: RLPConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, callbacks=None, optimizers=(None, None), peft_config=None,
                 quantization_config=None):
        model_id = model if isinstance(model, str) else model.config._name_or_path
        args = args or RLPConfig(f"{str(model_id).rstrip('/').split('/')[-1]}-RLP")
        if not isinstance(args, RLPConfig):
            raise TypeError(f"RLPTrainer needs an RLPConfig, got {type(args).__name__}")
        ready = prepare(model, args, processing_class, train_dataset, eval_dataset, quantization_config)
        self.think_open_ids, self.think_close_ids, self.think_close_id = ready.open_ids, ready.close_ids, ready.close_id
        self.think_markers_text, self.position_stats = ready.as_text, ready.position_stats
        with _args_for_grpo(args, self.think_close_id, ready.loaded_here):
            super().__init__(
                model=ready.model, reward_funcs=[_reward_computed_in_batch], args=args,
                train_dataset=ready.train_dataset, eval_dataset=ready.eval_dataset, processing_class=ready.tokenizer,
                callbacks=callbacks, optimizers=optimizers, peft_config=peft_config,
                quantization_config=quantization_config if isinstance(ready.model, str) else None,
            )
        check_trl_compat(self)  # the private GRPOTrainer attributes RLP relies on exist (rlp_trl/_trl_compat.py)
        self.card_facts = CardFacts(model_id, ready.markers_added, ready.position_stats,
                                    adapters=tuple(getattr(self._unwrapped(), "peft_config", None) or ()))
        if args.disable_dropout:  # TRL zeroed the nn.Dropout modules; the reward is a log-likelihood: no noise in it
            disable_attention_dropout(self.model)
        # generation stops on the close marker as on EOS; TRL reads its generation settings once at init (trl#2820)
        if self.think_close_id is not None and self.think_close_id not in self.eos_token_ids:
            self.eos_token_ids = [*self.eos_token_ids, self.think_close_id]
        if not self.use_vllm:
            self.generation_config = hf_generation_config(
                self.generation_kwargs, self.eos_token_ids, args.min_thought_tokens)
        self.thought_cutter = ThoughtCutter.for_markers(  # the first stop token, or a text marker's first spelling
            self.eos_token_ids, self.think_close_ids, args.think_close if self.think_markers_text else None,
            self._tokenizer)
        self.shares_sampling = uses_prefix_sharing(  # fixed once the backend is known
            args.prefix_sharing, vllm=self.use_vllm, continuous_batching=self.use_transformers_continuous_batching,
            zero_stage=self._zero_stage, ds3_gather_for_generation=args.ds3_gather_for_generation)
        # the variants, picked once: the reward (eq. 5 or RPT's), the model that scores S_ema (teacher or live policy)
        self.reward = reward_for(args.reward_type, self._tokenizer.decode)
        self.no_think_model = self._teacher_scoring if args.no_think_baseline == "ema" else contextlib.nullcontext
        # full replica, ZeRO-3 shards or a PEFT adapter; built before the optimizer and the DeepSpeed engine exist
        self.teacher = build_teacher(self.model, args, self.accelerator)
        marker_lr = marker_lr_callback(  # marker rows at think_marker_lr_multiplier x the learning rate
            self.accelerator.unwrap_model(self.model), [*self.think_open_ids, self.think_close_id],
            args.think_marker_lr_multiplier, text_markers=self.think_markers_text,
            partitioned=self.is_fsdp_enabled or self._zero_stage == 3)
        for callback in filter(None, [marker_lr, EMAUpdateCallback(self.teacher, self._unwrapped)]):
            self.add_callback(callback)  # phi <- tau phi + (1 - tau) theta after every optimizer step (Alg. 1, l. 15)

    def _unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    @property
    def _zero_stage(self) -> int | None:
        return self.accelerator.state.deepspeed_plugin.zero_stage if self.is_deepspeed_enabled else None

    # ------------------------------------------------------------------ data
    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt", "context_ids", "target_ids", "doc_index", "position"]

    def _tokenize_prompts(self, prompts: list):
        return [list(p) for p in prompts], None, {}  # already token ids (context + <think>): no decode/re-encode drift

    # ------------------------------------------------------------------ one RLP step (Algorithm 1, lines 6-12)
    def _generate_and_score_completions(self, inputs):
        """Sample thoughts, score S_pred and S_ema, turn them into rewards and advantages, pack for TRL's loss."""
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        args, device, gather = self.args, self.accelerator.device, self.accelerator.gather
        prompts, targets = [list(x["prompt"]) for x in inputs], [list(x["target_ids"]) for x in inputs]
        # with single-token markers the sampler scores </think> + x_t.. after each thought in its KV cache
        suffixes = None if self.think_markers_text else [[self.think_close_id] + y for y in targets]
        rollouts = self.sample_thoughts(prompts, suffixes)
        thoughts = cut_thoughts(rollouts.sampled_ids, targets, self.thought_cutter, args.reward_horizon,
                                close_in_loss=args.think_close_in_loss,
                                mask_truncated=args.truncated_thoughts == "mask")
        batch = tensorize(rollouts.prompt_ids, thoughts, self._tokenizer.pad_token_id, device)
        with torch.no_grad():
            s_pred = self._s_pred(rollouts, batch, batch_size)  # eq. 3
            s_ema = self._s_ema([list(x["context_ids"]) + y for x, y in zip(inputs, targets)], batch_size)  # eq. 4
            old_logps, ref_logps = self._behaviour_logps(batch, batch_size)

        gains = information_gain(s_pred, s_ema, args.reward_discount)  # eq. 5
        all_rewards, found = exclude_nonfinite_groups(gather(self.reward.compute(gains, thoughts.ids, targets)),
                                                      num_generations)  # a NaN reward cannot enter eq. 7
        all_gains, _ = exclude_nonfinite_groups(gather(gains), num_generations)
        all_advantages = group_advantages(all_rewards, num_generations)  # eq. 7
        n = len(prompts)
        advantages = all_advantages[self.accelerator.process_index * n:][:n]
        is_ratio = None
        if self.use_vllm and self.vllm_importance_sampling_correction and rollouts.sampling_logps is not None:
            is_ratio = vllm_is_ratio(old_logps, rollouts.sampling_logps, thoughts.action_masks, batch.loss_mask,
                                     self.vllm_importance_sampling_mode, self.vllm_importance_sampling_clip_min,
                                     self.vllm_importance_sampling_clip_max)
        self._log(mode, {**self._on_rewards(found, mode), **self.reward.metrics(all_rewards), **rlp_metrics(
            gather, thoughts, s_pred, s_ema, all_gains, all_advantages, self.teacher.num_updates)},
            completion_table(self._tokenizer.decode, inputs, thoughts, all_gains, all_advantages))
        num_items = gather(batch.loss_mask.sum()).sum()
        return pack_for_trl(batch, advantages, num_items, old_logps, ref_logps, is_ratio)

    def _on_rewards(self, found, mode: str) -> dict:
        """RLP's callback event: callbacks with an `on_rewards` method (the run's non-finite guard) see what the step
        found in its rewards and return metrics to log with it."""
        metrics = {"rlp/nonfinite_rewards": float(found.count)}
        for callback in self.callback_handler.callbacks:
            if hasattr(callback, "on_rewards"):
                metrics.update(callback.on_rewards(self.args, self.state, self.control, found=found, mode=mode) or {})
        return metrics

    def _log(self, mode: str, metrics: dict, rows: dict | None = None) -> None:
        """Into TRL's log buffers: metrics averaged at the next logging step, rows for its completions table."""
        for key, value in metrics.items():
            self._metrics[mode][key].append(value)
        extend_logs(self._logs, rows or {})

    def sample_thoughts(self, prompts: list[list[int]], suffixes: list[list[int]] | None = None) -> Rollouts:
        """Sample one thought per prompt row (Alg. 1, line 7). The prefix-shared sampler (`rlp_trl.fast.generation`)
        also scores `suffixes` in its KV cache; vLLM, continuous batching and un-gathered ZeRO-3 use TRL's
        `_generate`."""
        if not self.shares_sampling:
            prompt_ids, completion_ids, _, _, logps, *_ = self._generate(prompts)
            return Rollouts(prompt_ids, completion_ids, sampling_logps=logps)
        with (
            profiling_context(self, "prefix_shared_sample"),
            unwrap_model_for_generation(
                self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as model,
            torch.no_grad(),
            self._dist.summon_full_params(self.model_wrapped, recurse=False),
        ):
            sample = prefix_shared_sample(model, prompts, self.generation_config, suffixes)
        mode, stops = "train" if self.model.training else "eval", {*self.eos_token_ids, self._tokenizer.pad_token_id}
        metrics = generation_metrics(
            self.accelerator.gather, prompts, sample.completion_ids, stops, self.accelerator.device)
        tokens = metrics.pop("tokens")
        self.state.num_input_tokens_seen += tokens if mode == "train" else 0  # as TRL's _generate
        self._metrics[mode]["num_tokens"] = [self.state.num_input_tokens_seen]
        self._log(mode, metrics)
        return Rollouts(prompts, sample.completion_ids, suffix_logps=sample.suffix_logps,
                        prefill_tokens=sample.prefill_tokens, decode_tokens=sample.decode_tokens)

    def _s_pred(self, rollouts: Rollouts, batch: PaddedBatch, batch_size: int) -> torch.Tensor:
        """S_pred (eq. 3): the policy scores the true token(s) after its thought and </think>, at temperature 1; read
        from the sampler's KV cache when it could, else one packed forward per distinct prompt, else one per row."""
        if rollouts.suffix_logps is not None:
            return rollouts.suffix_logps[:, 1:].to(self.accelerator.device)
        model = self._unwrapped()
        return completion_scores(
            model, batch.input_ids, batch.attention_mask, batch.completion_ids.size(1), self.args.reward_horizon,
            batch_size, share=self.args.prefix_sharing and packable(model), pad_id=self._tokenizer.pad_token_id)

    def _s_ema(self, contexts: list[list[int]], batch_size: int) -> torch.Tensor:
        """S_ema (eq. 4): one pass per distinct context (shared by its G rollouts and by the contexts it is a prefix
        of), by the EMA teacher or, with `no_think_baseline="live"`, by the policy itself."""
        with self.no_think_model(self._unwrapped()) as model:
            scores = score_sequence_ends(
                model, contexts, self.args.reward_horizon, batch_size, self._tokenizer.pad_token_id)
        return scores.to(self.accelerator.device)

    def _teacher_scoring(self, policy):
        if not self.teacher.initialized:  # Alg. 1, lines 8-9: phi <- theta at the first step
            self.teacher.init_from(policy)
        return self.teacher.scoring(policy)

    def _behaviour_logps(self, batch: PaddedBatch, batch_size: int):
        """theta_old's log-probs of the completions (Alg. 1, line 5) when the loss cannot take them from its own pass
        (several optimizer steps per generation, or vLLM importance sampling), and the reference model's for the KL
        ablation (beta > 0; the paper has none, Sec. 2.4); None where not needed."""
        logps = functools.partial(self._get_per_token_logps_and_entropies, input_ids=batch.input_ids,
                                  attention_mask=batch.attention_mask, logits_to_keep=batch.completion_ids.size(1),
                                  batch_size=batch_size)
        old = ref = None
        generate_every = self.args.steps_per_generation * self.num_iterations
        if self.args.gradient_accumulation_steps % generate_every != 0 or (
                self.use_vllm and self.vllm_importance_sampling_correction):
            old = logps(self.model)[0]
        if self.beta != 0.0:  # as TRL's GRPO: its ref_model, or the base with adapters off (or adapter "ref")
            model, context = self.ref_model, contextlib.nullcontext()
            if model is None:
                model, unwrapped = self.model, self._unwrapped()
                context = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
            with context:
                ref = logps(model)[0]
        return old, ref

    # ------------------------------------------------------------------ the loss pass and the loss (eq. 8)
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **extra):
        """The policy's log-probs of completion tokens (the loss, theta_old): one forward per distinct prompt when
        prefix sharing applies (`rlp_trl.fast.shared_prefix`), else one per chunk. Inside `compute_loss` with
        likelihood terms on, the same pass also returns their log-probs to it. MoE aux losses and multimodal inputs
        keep TRL's own pass."""
        if compute_aux_loss or any(v is not None for v in extra.values()):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss,
                **extra)
        request, self._likelihood_request = self._likelihood_request, None  # the loss pass's, once
        logps, entropies, likelihood = policy_logps(
            model, self.accelerator.unwrap_model(model), input_ids, attention_mask, logits_to_keep,
            batch_size or input_ids.size(0), compute_entropy, self.accelerator.autocast,
            share=self._loss_pass_sharing(model), request=request)
        if request is not None:
            self._likelihood_logps = likelihood
        return logps, entropies, None

    def _loss_pass_sharing(self, model) -> str | None:
        """`loss_pass_sharing` for one of the trainer's log-prob passes (the loss, theta_old, the reference model's
        for beta > 0): None when `prefix_sharing` is off or `model` is none of these."""
        if not self.args.prefix_sharing or model not in (self.model, self.model_wrapped, self.ref_model):
            return None
        unwrapped = self.accelerator.unwrap_model(model)
        checkpointing = self.args.gradient_checkpointing or getattr(unwrapped, "is_gradient_checkpointing", False)
        return loss_pass_sharing(unwrapped, self.is_deepspeed_enabled or self.is_fsdp_enabled or checkpointing)

    # the one value TRL's loss cannot carry: compute_loss asks its log-prob pass for the likelihood terms' log-probs
    _likelihood_request: LikelihoodRequest | None = None
    _likelihood_logps = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss (eq. 8 over the action's `tool_mask`), plus `reader_nll_coef` x the reader NLL and
        `nothink_nll_coef` x the no-think NLL of the true token(s) when set (`rlp_trl.likelihood`; off: the paper),
        scaled for gradient accumulation as TRL scales eq. 8, logged as `rlp/reader_nll` and `rlp/nothink_nll`."""
        args = self.args
        if not (args.reader_nll_coef or args.nothink_nll_coef):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # with H = 1 the no-think NLL comes with the pass: logged even when it is not trained
        self._likelihood_request = LikelihoodRequest(args.reward_horizon, len(self.think_open_ids),
                                                     nothink=args.reward_horizon == 1)
        try:
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            likelihood = self._likelihood_logps
        finally:
            self._likelihood_request = self._likelihood_logps = None
        mode = "train" if self.model.training else "eval"
        extra, nlls = likelihood_loss(likelihood, inputs, args, self.accelerator.unwrap_model(model),
                                      len(self.think_open_ids), self.accelerator.autocast)
        self._log(mode, {name: self.accelerator.gather(nll[None]).mean().item() for name, nll in nlls.items()})
        return loss + extra / (self.current_gradient_accumulation_steps if mode == "train" else 1.0)

    # ------------------------------------------------------------------ the teacher in checkpoints, the saved model
    def _save_checkpoint(self, model, trial):
        # the teacher goes into the checkpoint folder first: the Trainer writes trainer_state.json last
        if self.teacher.initialized:  # every rank: a ZeRO-3 teacher gathers its shards; the saving rank writes
            checkpoint_dir = os.path.join(
                self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            if self.args.should_save:
                os.makedirs(checkpoint_dir, exist_ok=True)
            self.teacher.save(checkpoint_dir, write=self.args.should_save)
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.teacher.load(checkpoint, self._unwrapped())

    def _save(self, output_dir=None, state_dict=None):
        # training turns the KV cache off; a saved model generates with it. Saved outputs hold the policy only.
        with kv_cache_on(self._unwrapped()), self.teacher.hidden_from_saving(self._unwrapped()):
            super()._save(output_dir, state_dict)
        if self.args.should_save:
            self._write_card(output_dir or self.args.output_dir)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        if self.is_world_process_zero():
            self._write_card(self.args.output_dir, model_name, dataset_name)

    def _write_card(self, folder, model_name=None, dataset_name=None):
        """RLP's model card (`rlp_trl.model_card`): written with every saved model and by `create_model_card`."""
        write_card(folder, self.args, self.state, self.card_facts, self.accelerator.num_processes, model_name,
                   dataset_name)

    def end(self):
        """`Trainer.end` where transformers has it (5.18+); before that, the trackers are finished by accelerate."""
        return super().end() if hasattr(GRPOTrainer, "end") else self.accelerator.end_training()
