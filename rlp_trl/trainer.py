"""`RLPTrainer`: RLP (arXiv 2510.01265) on top of TRL's `GRPOTrainer`.

What GRPO already does and RLP keeps: sampling G completions per prompt (HF `generate`, vLLM, continuous batching),
the behaviour snapshot (`old_per_token_logps`), batching, accumulation, the clipped loss of eq. 8 (TRL's
`loss_type="grpo"` over the per-token `tool_mask`, which is RLP's per-thought mean; tests/test_loss_equivalence.py
checks it against `rlp_trl.loss.clipped_thought_loss`), logging and checkpointing. What this class changes:

* data: documents are turned into positions (`rlp_trl.data`); a prompt is a token-id context plus `<think>`;
* `_generate_and_score_completions`, one RLP step as named calls over typed values (`rlp_trl.rollouts`): sample
  thoughts -> cut them (thought + `</think>` + true next token(s)) -> S_pred, S_ema (eqs. 3-4) -> information gain
  and advantages (eqs. 5, 7) -> TRL's loss inputs, the action (thought, sampled `</think>`) as `tool_mask`;
* the EMA teacher (`rlp_trl.teacher`): lazily built, updated after every optimizer step, saved with checkpoints.
"""
# size: RLPTrainer still wires the run's guarantees (lock, resume, signals, atomic checkpoints) into train/save/load;
# they belong in a package of their own, composed around the trainer, which would leave the algorithm here alone.


import contextlib
import functools
import os

import torch
from datasets import Dataset, IterableDataset
from transformers import AutoTokenizer
from transformers.trainer_utils import TrainOutput
from trl import GRPOTrainer
from trl.extras.profiling import profiling_context
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import use_adapter

from ._trl_compat import check_trl_compat
from .config import RLPConfig
from .data import to_position_dataset
from .loading import disable_attention_dropout, kv_cache_on, load_policy
from .likelihood import LikelihoodRequest, likelihood_loss
from .fast.generation import (
    hf_generation_config, prefix_shared_sample, training_prefix_sharing, uses_prefix_sharing, vllm_stop_kwargs,
)
from .marker_lr import marker_lr_callback
from .markers import markers_missing, think_markers
from .metrics import log_generation, log_step
from .resilience import (
    CheckpointStager,
    GracefulStop,
    NonFiniteGuard,
    ResumeState,
    claimed_output_dir,
    finished_at,
    load_finished,
    preflight,
    sampling_error,
    verify_state_finite,
)
from .rewards import group_advantages, information_gain, prefix_match_reward
from .rollouts import Completions, Rollouts, ThoughtCutter, cut_thoughts, pack_for_trl, tensorize, vllm_is_ratio
from .fast.scoring import score_sequence_ends
from .fast.shared_prefix import completion_scores, packable, policy_logps
from .surprise import make_position_scorer
from .teacher import EMAUpdateCallback, build_teacher
from .tokens import ensure_pad_token
from .model_card import CITATION, write_card
from .window import fit_context_window


def _reward_computed_in_batch(*args, **kwargs):
    """GRPOTrainer requires a reward function; RLP's reward (eq. 5, `rlp_trl.rewards.information_gain`) needs the
    policy and the teacher, so `RLPTrainer._generate_and_score_completions` computes it and this is never called."""
    raise RuntimeError("the RLP information gain is computed inside RLPTrainer, not as a reward function")


class RLPTrainer(GRPOTrainer):
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
    _paper = {"title": "RLP: Reinforcement as a Pretraining Objective", "id": "2510.01265", "citation": CITATION}

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
        ensure_pad_token(processing_class)  # pad = EOS when missing; a clear error without EOS (rlp_trl.tokens)
        text_markers = args.think_markers_as_text and markers_missing(processing_class, args.think_open, args.think_close)
        grow = markers_missing(processing_class, args.think_open, args.think_close) and args.add_think_tokens and not text_markers
        loaded_here = isinstance(model, str) and (grow or args.position_strategy == "surprising")
        if loaded_here:  # the embeddings grow before GRPOTrainer wraps the model (PEFT, DeepSpeed); `surprising` scores
            model = load_policy(model, args, quantization_config)  # the corpus with the initial model (= the teacher)
        self.rlp_base_model, self.rlp_markers_added, self.corpus_name = model_id, grow, None  # for the model card
        self.think_markers_text = text_markers
        self.think_open_ids, self.think_close_ids, self.think_close_id, model = think_markers(
            processing_class, model, args, as_text=text_markers
        )
        if args.use_vllm:  # vLLM SamplingParams: stop on the close marker, at least min_thought_tokens (Alg. 1, l. 7)
            args.generation_kwargs = vllm_stop_kwargs(args.generation_kwargs, self.think_close_id, args.min_thought_tokens)

        self.position_stats = None
        # the default context shrinks to the model's window; an impossible explicit one fails before tokenizing
        fit_context_window(model, args, len(self.think_open_ids), len(self.think_close_ids))
        scorer = None  # `surprising` positions: one pass over the corpus with the initial model (rlp_trl.surprise)
        if args.position_strategy == "surprising":
            scorer = make_position_scorer(model, args.max_context_tokens, processing_class.pad_token_id)
        train_dataset, eval_dataset = (
            None if d is None else self._to_positions(d, processing_class, args, scorer) for d in (train_dataset, eval_dataset)
        )

        model_init_kwargs, args.model_init_kwargs = args.model_init_kwargs, None if loaded_here else args.model_init_kwargs
        super().__init__(
            model=model,
            reward_funcs=[_reward_computed_in_batch],
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
            self.generation_config = hf_generation_config(self.generation_kwargs, self.eos_token_ids, args.min_thought_tokens)
        # where a sampled thought ends (rlp_trl.rollouts): the first stop token, or a text marker's first spelling
        self.thought_cutter = ThoughtCutter(
            frozenset(self.eos_token_ids), tuple(self.think_close_ids), close_text=args.think_close if text_markers else None,
            decode=functools.partial(self._tokenizer.decode, clean_up_tokenization_spaces=False) if text_markers else None,
        )
        # The EMA teacher for this model and backend (full replica, ZeRO-3 shards, or a PEFT adapter); built before
        # the optimizer and the DeepSpeed engine exist, so a PEFT teacher adapter is frozen and partitioned with the
        # model. Incompatible options (e.g. teacher_device="cpu" with PEFT, FSDP) fail here, naming the fix.
        self.teacher = build_teacher(self.model, args, self.accelerator)
        # marker rows at think_marker_lr_multiplier x the learning rate (rlp_trl.marker_lr), scaled before the EMA update
        marker_lr = marker_lr_callback(
            self.accelerator.unwrap_model(self.model), [*self.think_open_ids, self.think_close_id],
            args.think_marker_lr_multiplier, text_markers=text_markers, partitioned=self.is_fsdp_enabled or (
                self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3),
        )
        if marker_lr is not None:
            self.add_callback(marker_lr)
        # phi <- tau phi + (1 - tau) theta after every optimizer step, once the policy's weights are checked finite
        self.add_callback(EMAUpdateCallback(
            self.teacher, lambda: self.accelerator.unwrap_model(self.model),
            before_update=lambda: self.nonfinite_guard.check_weights_after_step(),
        ))
        # Reliability (rlp_trl.resilience, docs/reliability.md): one piece per concern, built once, owned here
        self.interrupted: str | None = None  # set by train(): the signal that stopped it (after a saved checkpoint)
        self.already_finished: int | None = None  # set by train(): the checkpoint resumed from was at max_steps
        self.nonfinite_guard = NonFiniteGuard(self, args.on_nonfinite, args.nonfinite_patience)
        self.graceful_stop = GracefulStop(self.accelerator)  # installs its signal handlers in train()
        self.add_callback(self.nonfinite_guard)
        self.add_callback(self.graceful_stop)
        self.checkpoint_stager = CheckpointStager(args, self.accelerator)  # its staging_dir: see _get_output_dir
        self.resume_state = ResumeState(args, self.accelerator, self.train_dataset, self.nonfinite_guard.totals)

    # ------------------------------------------------------------------ data
    def _to_positions(self, dataset, tokenizer, args, position_scorer=None):
        positions, stats = to_position_dataset(dataset, tokenizer, args, self.think_open_ids, position_scorer)
        self.position_stats = self.position_stats or stats
        return positions

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt", "context_ids", "target_ids", "doc_index", "position"]

    def _tokenize_prompts(self, prompts: list):
        # RLP prompts are already token ids (context + think-open marker): no decode/re-encode drift.
        return [list(p) for p in prompts], None, {}

    # ------------------------------------------------------------------ one RLP step (Algorithm 1, lines 6-12)
    def _generate_and_score_completions(self, inputs):
        """Sample thoughts, score S_pred and S_ema, turn them into rewards and advantages, pack for TRL's loss."""
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        horizon, device = self.args.reward_horizon, self.accelerator.device
        unwrapped = self.accelerator.unwrap_model(self.model)
        if not self.teacher.initialized and self.args.no_think_baseline == "ema":  # Alg. 1, lines 8-9: phi <- theta
            self.teacher.init_from(unwrapped)

        prompts = [list(x["prompt"]) for x in inputs]
        targets = [list(x["target_ids"]) for x in inputs]
        # with single-token markers the sampler scores </think> + x_t.. after each thought in its KV cache
        suffixes = None if self.think_markers_text else [[self.think_close_id] + y for y in targets]
        rollouts = self.sample_thoughts(prompts, suffixes)
        thoughts = cut_thoughts(
            rollouts.sampled_ids, targets, self.thought_cutter, horizon, close_in_loss=self.args.think_close_in_loss,
            mask_truncated=self.args.truncated_thoughts == "mask",
        )
        batch = tensorize(rollouts.prompt_ids, thoughts, self._tokenizer.pad_token_id, device)
        with torch.no_grad():
            reasoned = self._score_reasoned(unwrapped, rollouts, batch, batch_size)  # S_pred, eq. 3
            contexts = [list(x["context_ids"]) + y for x, y in zip(inputs, targets)]
            baseline = self._score_no_think(unwrapped, contexts, batch_size)  # S_ema, eq. 4
            old_logps, ref_logps = self._behaviour_logps(batch, batch_size)

        gains = information_gain(reasoned, baseline, self.args.reward_discount)  # eq. 5
        rewards = gains
        if self.args.reward_type == "rpt_prefix_match":  # ablation: RPT's binary reward; the gain is still logged
            decode = self._tokenizer.decode
            rewards = prefix_match_reward(
                [decode(t) for t in thoughts.ids], [[decode(y[:j]) for j in range(1, len(y) + 1)] for y in targets]
            ).to(device)
        all_rewards = self.nonfinite_guard.check_rewards(self.accelerator.gather(rewards), num_generations, mode)
        all_advantages = group_advantages(all_rewards, num_generations)  # eq. 7
        rank, n = self.accelerator.process_index, len(prompts)
        advantages = all_advantages[rank * n : (rank + 1) * n]

        is_ratio = None
        if self.use_vllm and self.vllm_importance_sampling_correction and rollouts.sampling_logps is not None:
            is_ratio = vllm_is_ratio(
                old_logps, rollouts.sampling_logps, thoughts.action_masks, batch.loss_mask,
                self.vllm_importance_sampling_mode, self.vllm_importance_sampling_clip_min,
                self.vllm_importance_sampling_clip_max,
            )
        all_gains = all_rewards if rewards is gains else self.accelerator.gather(gains)
        log_step(self._metrics[mode], self._logs, self.accelerator.gather, self._tokenizer.decode, inputs, thoughts,
                 reasoned, baseline, all_gains, all_rewards, all_advantages, self.teacher.num_updates)
        num_items = self.accelerator.gather(batch.loss_mask.sum()).sum()
        return pack_for_trl(batch, advantages, num_items, old_logps, ref_logps, is_ratio)

    def sample_thoughts(self, prompts: list[list[int]], suffixes: list[list[int]] | None = None) -> Rollouts:
        """Sample one thought per prompt row (Alg. 1, line 7). The prefix-shared sampler (`rlp_trl.fast.generation`) also
        scores `suffixes` in its KV cache; vLLM, continuous batching and un-gathered ZeRO-3 go through TRL's
        `_generate`. Non-finite probabilities fail with a `NonFiniteError` naming the step."""
        try:
            if not uses_prefix_sharing(self):
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
        except RuntimeError as err:
            nonfinite = sampling_error(err, self.state.global_step + 1)  # NaN/inf probabilities: say so
            if nonfinite is None:
                raise
            raise nonfinite from err
        mode, stops = "train" if self.model.training else "eval", {*self.eos_token_ids, self._tokenizer.pad_token_id}
        log_generation(self._metrics, self.state, mode, self.accelerator.gather, self.accelerator.device, prompts,
                       sample.completion_ids, stops)
        return Rollouts(prompts, sample.completion_ids, suffix_logps=sample.suffix_logps,
                        prefill_tokens=sample.prefill_tokens, decode_tokens=sample.decode_tokens)

    def _score_reasoned(self, model, rollouts: Rollouts, batch: Completions, batch_size: int) -> torch.Tensor:
        """S_pred (eq. 3): the policy, after its thought and </think>, scores the true token(s) at temperature 1; read
        from the sampler's KV cache when it could, else from one packed forward per distinct prompt (prefix sharing
        on: vLLM, continuous batching, text markers), else one forward over each row's prompt + completion."""
        if rollouts.suffix_logps is not None:
            return rollouts.suffix_logps[:, 1:].to(self.accelerator.device)
        return completion_scores(
            model, batch.input_ids, batch.attention_mask, batch.completion_ids.size(1), self.args.reward_horizon,
            batch_size, share=self.args.prefix_sharing and packable(model), pad_id=self._tokenizer.pad_token_id,
        )

    def _score_no_think(self, model, contexts: list[list[int]], batch_size: int) -> torch.Tensor:
        """S_ema (eq. 4): one teacher pass per distinct context (shared by its G rollouts, and by the positions of the
        same document that are prefixes of it); `no_think_baseline="live"` scores with the policy itself."""
        pad_id, horizon = self._tokenizer.pad_token_id, self.args.reward_horizon
        if self.args.no_think_baseline == "live":  # ablation: the policy itself, no lag
            return score_sequence_ends(model, contexts, horizon, batch_size, pad_id).to(self.accelerator.device)
        with self.teacher.scoring(model) as teacher_model:
            return score_sequence_ends(teacher_model, contexts, horizon, batch_size, pad_id).to(self.accelerator.device)

    def _behaviour_logps(self, batch: Completions, batch_size: int):
        """theta_old's log-probs of the completions (Alg. 1, line 5) when the loss cannot take them from its own pass
        (several optimizer steps per generation, or vLLM importance sampling), and the reference model's for the KL
        ablation (beta > 0; the paper has none, Sec. 2.4); None where not needed."""
        keep = batch.completion_ids.size(1)
        old = ref = None
        generate_every = self.args.steps_per_generation * self.num_iterations
        if self.args.gradient_accumulation_steps % generate_every != 0 or (
            self.use_vllm and self.vllm_importance_sampling_correction
        ):
            old, _, _ = self._get_per_token_logps_and_entropies(
                self.model, batch.input_ids, batch.attention_mask, keep, batch_size=batch_size
            )
        if self.beta != 0.0:  # as TRL's GRPO: its ref_model, or the base with adapters off (or adapter "ref")
            model, context = self.ref_model, contextlib.nullcontext()
            if model is None:
                model, unwrapped = self.model, self.accelerator.unwrap_model(self.model)
                context = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
            with context:
                ref, _, _ = self._get_per_token_logps_and_entropies(
                    model, batch.input_ids, batch.attention_mask, keep, batch_size=batch_size
                )
        return old, ref

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
        compute_aux_loss=False, **extra,
    ):
        """The policy's log-probs of completion tokens (TRL's loss pass, theta_old): one forward per distinct prompt
        when prefix sharing applies (`rlp_trl.fast.shared_prefix`), else one plain forward per chunk; both with position
        ids from the attention mask. MoE aux losses and multimodal inputs keep TRL's own pass. Inside
        `compute_loss` with likelihood terms on, the same pass also returns their log-probs to it."""
        if compute_aux_loss or any(v is not None for v in extra.values()):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss, **extra
            )
        request, self._likelihood_request = self._likelihood_request, None  # the loss pass's, once
        logps, entropies, likelihood = policy_logps(
            model, self.accelerator.unwrap_model(model), input_ids, attention_mask, logits_to_keep,
            batch_size or input_ids.size(0), compute_entropy, self.accelerator.autocast,
            share=training_prefix_sharing(self, model), request=request,
        )
        if request is not None:
            self._likelihood_logps = likelihood
        return logps, entropies, None

    # ------------------------------------------------------------------ the loss: eq. 8 and the likelihood terms
    _likelihood_request: LikelihoodRequest | None = None  # set by compute_loss for its one loss pass
    _likelihood_logps = None  # what that pass returned for it

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss (eq. 8 over the action's `tool_mask`), plus `reader_nll_coef` x the reader NLL and
        `nothink_nll_coef` x the no-think NLL of the true token(s) when set (`rlp_trl.likelihood`; off: the paper),
        scaled for gradient accumulation as TRL scales eq. 8, logged as `rlp/reader_nll` and `rlp/nothink_nll`."""
        args = self.args
        if not (args.reader_nll_coef or args.nothink_nll_coef):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        horizon = args.reward_horizon
        # with H = 1 the no-think NLL comes with the pass: logged even when it is not trained
        self._likelihood_request = LikelihoodRequest(horizon, len(self.think_open_ids), nothink=horizon == 1)
        try:
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            likelihood = self._likelihood_logps
        finally:
            self._likelihood_request = self._likelihood_logps = None
        mode = "train" if self.model.training else "eval"
        extra, nlls = likelihood_loss(likelihood, inputs, args, self.accelerator.unwrap_model(model),
                                      len(self.think_open_ids), self.accelerator.autocast)
        for name, nll in nlls.items():
            self._metrics[mode][name].append(self.accelerator.gather(nll[None]).mean().item())
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0  # as TRL scales eq. 8
        return loss + extra / normalizer

    # ------------------------------------------------------------------ training and checkpoints (rlp_trl.resilience)
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """`Trainer.train` with one writer per output folder, a verified checkpoint to resume from (`True` / `"last"` /
        `"auto"` / a path), pre-flight checks and graceful SIGTERM / SIGINT (docs/reliability.md)."""
        self.interrupted = self.already_finished = None
        with claimed_output_dir(self.accelerator, self.args.output_dir, resume_from_checkpoint) as resume:
            done = finished_at(resume, self.args) if resume is not None else None
            if done is not None:  # the checkpoint is already at max_steps: nothing to train
                self.state, self.already_finished = load_finished(resume, done, self.accelerator), done
                return TrainOutput(self.state.global_step, 0.0, {})
            contexts_per_batch = max(1, self.args.generation_batch_size // self.num_generations)
            largest_weight = preflight(self.accelerator.unwrap_model(self.model), self.args, len(self.think_open_ids),
                                       len(self.think_close_ids), self.train_dataset, contexts_per_batch)
            self.nonfinite_guard.initial_weight_max = largest_weight or None  # the runaway check's reference
            if self.args.handle_signals:
                self.graceful_stop.install()
            try:
                output = super().train(
                    resume_from_checkpoint=resume, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs
                )
            finally:
                self.graceful_stop.uninstall()
            self.interrupted = self.graceful_stop.report(self.state.global_step, self.args.output_dir)
            return output

    def _get_output_dir(self, trial):
        # while a checkpoint is being written, everything the Trainer, TRL and RLP save for it goes to its staging folder
        staging = self.checkpoint_stager.staging_dir
        return staging if staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        # Atomic and verified (rlp_trl.resilience.staging): nothing is written for a non-finite state; the checkpoint is
        # written into a staging folder, marked complete and renamed to checkpoint-N last.
        step = self.state.global_step
        verify_state_finite(self.accelerator, self.model, self.teacher, self.optimizer, step, self.args.output_dir)
        with self.checkpoint_stager.stage(self._get_output_dir(trial=trial), self.state) as checkpoint_dir:
            # The teacher goes into the checkpoint folder before the Trainer writes trainer_state.json (written last).
            if self.teacher.initialized:  # every rank: a ZeRO-3 teacher gathers its shards; the saving rank writes
                if self.args.should_save:
                    os.makedirs(checkpoint_dir, exist_ok=True)
                self.teacher.save(checkpoint_dir, write=self.args.should_save)
            super()._save_checkpoint(model, trial)
            # what the Trainer does not save: GRPO's micro-step and buffered rollouts, data and settings fingerprints
            self.resume_state.save(checkpoint_dir, step, self._step, self._buffered_inputs)

    def _save(self, output_dir=None, state_dict=None):
        unwrapped = self.accelerator.unwrap_model(self.model)
        # training turns the KV cache off; a saved model generates with it. Saved outputs hold the policy only.
        with kv_cache_on(unwrapped), self.teacher.hidden_from_saving(unwrapped):
            super()._save(output_dir, state_dict)
        if self.args.should_save:
            write_card(self, output_dir or self.args.output_dir)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """RLP's model card (`rlp_trl.model_card`): base model, corpus, steps and tokens, think markers and how to
        prompt with them, the RLP settings, the final information gain. Written with every saved model too."""
        if self.is_world_process_zero():
            write_card(self, self.args.output_dir, model_name, dataset_name)

    def end(self):
        """`Trainer.end` where transformers has it (5.18+); before that, the trackers are finished by accelerate."""
        if hasattr(GRPOTrainer, "end"):
            return super().end()
        self.accelerator.end_training()

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            restored = self.resume_state.load(checkpoint)  # refuses (or warns about) other data or settings
            if restored is not None:  # GRPO's micro-step and the rollouts buffered mid-cycle (trl#3247)
                self._step, buffered = restored
                if buffered is not None:
                    self._buffered_inputs = buffered
            self.teacher.load(checkpoint, self.accelerator.unwrap_model(self.model))
