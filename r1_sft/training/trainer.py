"""The Hugging Face Trainer with the project's loss, token-weighted eval_loss and a resumable shuffle."""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import torch
from transformers import Trainer
from transformers.modeling_outputs import CausalLMOutputWithPast

from r1_sft.cli import UserError
from r1_sft.paths import display_path
from r1_sft.r1_format import IGNORE_INDEX
from r1_sft.training.loss import DEFAULT_CHUNK_TOKENS, LossParts, model_loss, shifted_targets
from r1_sft.training.outputs import CopiedTokenizerSave, complete_checkpoints

# Optimizer steps in a row with a non-finite loss or gradient norm before the run stops.
NONFINITE_STEPS = 3


class NonFiniteLossError(UserError):
    """The loss or gradient norm stayed NaN/inf: training stops with one line, its good checkpoints kept."""


class EpochSeededSampler(torch.utils.data.Sampler):
    """Wraps the Trainer's LengthGroupedSampler so its shuffle depends only on (seed, epoch).

    The stock one draws from the global RNG, whose state at the start of a later epoch differs
    between an uninterrupted run and one resumed from a checkpoint: the resumed run would see
    other batches. Seeding per epoch makes ``--resume`` exact.
    """

    def __init__(self, inner, seed: int, current_epoch):
        self.inner, self.seed, self.current_epoch = inner, seed, current_epoch

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        self.inner.generator = torch.Generator().manual_seed(self.seed + self.current_epoch())
        return iter(self.inner)


class SFTTrainer(CopiedTokenizerSave, Trainer):
    """The Hugging Face Trainer with the project's loss, token-weighted eval_loss and a resumable shuffle.

    Loss: cross-entropy over trained tokens through lm_head in chunks of ``loss_chunk_tokens``
    positions (``r1_sft.training.loss``: no full-vocabulary logits). ``loss_chunk_tokens=0`` falls back to the
    model's stock loss (full logits; for comparison), as does Liger-Kernel's fused linear
    cross-entropy (``use_liger_kernel``), which patches the model's own forward.
    ``eval_loss`` is the mean over every trained token of the validation set: the Trainer's own
    averages batch means weighted by batch size, and counts a padding-free batch as one.
    ``final_dir`` receives the last step's adapter before ``load_best_model_at_end`` replaces the
    weights in memory (:meth:`save_final_adapter`).
    Subclass this for other losses (``distill.KDTrainer``).
    """

    def __init__(self, *args, loss_chunk_tokens: int = DEFAULT_CHUNK_TOKENS, final_dir: str | Path | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_chunk_tokens = loss_chunk_tokens
        self.final_dir = Path(final_dir) if final_dir is not None else Path(self.args.output_dir) / "final_model"
        self.final_saved = False
        # [ce_sum, kl_sum, tokens] since the last log, per mode; kept on the device (no sync per step)
        self._loss_sums = {mode: torch.zeros(3, dtype=torch.float64, device=self.args.device)
                           for mode in ("train", "eval")}
        self._has_kl = {"train": False, "eval": False}
        self._nonfinite_now = False  # a micro-batch of the current optimizer step had a NaN/inf loss
        self._nonfinite_steps = 0  # optimizer steps in a row that were not finite
        self._guarded = (-1, False)  # (optimizer step the guard last judged, whether it was bad)
        self.final_skipped = False  # final_model/ was not written: the weights in memory were NaN/inf

    @property
    def uses_stock_loss(self) -> bool:
        return self.loss_chunk_tokens <= 0 or bool(self.args.use_liger_kernel)

    def loss_parts(self, model, inputs, num_items_in_batch, mode: str) -> LossParts:
        """This batch's loss and its sums; ``KDTrainer`` adds the teacher."""
        return model_loss(model, inputs, chunk_tokens=self.loss_chunk_tokens, num_items_in_batch=num_items_in_batch,
                          head_model=self.accelerator.unwrap_model(model))

    def token_mean_loss(self, ce_sum: float, kl_sum: float, tokens: float) -> float:
        """The loss as a mean over trained tokens, from the summed parts (eval_loss)."""
        return ce_sum / tokens

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        if mode == "eval":
            # eval_loss is (summed loss) / (summed tokens) over every process's real examples. In
            # evaluation transformers 5.23 passes num_items_in_batch counted over all processes and
            # scales the loss by their number, which is right only when every process holds the same
            # number of tokens; and accelerate repeats examples to even out the last batches.
            inputs = mask_repeated_examples(inputs, self.accelerator)
            num_items_in_batch = None
        if self.uses_stock_loss:  # the model's own loss, or Liger's fused one (same labels, same fix)
            loss = super().compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
            if mode == "eval":  # loss is this batch's per-token mean (NaN when it has no trained token)
                tokens = int((shifted_targets(inputs["labels"], inputs.get("shift_labels")) != IGNORE_INDEX).sum())
                loss = loss if tokens else torch.zeros_like(loss)
                self._add_sums(mode, loss.detach().float() * tokens, None, tokens)
            return (loss, CausalLMOutputWithPast(loss=loss)) if return_outputs else loss
        parts = self.loss_parts(model, inputs, num_items_in_batch, mode)
        loss = parts.loss
        # Same scaling as Trainer.compute_loss: the denominator counted tokens on all processes,
        # and DDP averages gradients over processes.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        self._add_sums(mode, parts.ce_sum, parts.kl_sum, parts.tokens)
        return (loss, CausalLMOutputWithPast(loss=loss)) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # The Trainer reads this value on the host every step anyway (logging_nan_inf_filter), then
        # logs the running mean in place of a NaN: without this check nobody would ever see it.
        if not bool(torch.isfinite(loss).all()):
            self._nonfinite_now = True
        return loss

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, *args, **kwargs):
        """Called once per optimizer step, and again at an epoch's end for the same step (transformers 5.23):
        the non-finite guard judges each step once, then the Trainer's log/evaluate/save."""
        step = self.state.global_step
        if self._guarded[0] == step:  # the epoch-end call: same verdict, not counted again
            bad = self._guarded[1]
        else:
            bad_norm = (grad_norm is not None and not math.isfinite(float(grad_norm))
                        and not self.accelerator.optimizer_step_was_skipped)  # an fp16 scaler skip is no harm
            bad = self._on_any_process(self._nonfinite_now or bad_norm)
            self._nonfinite_now = False
            self._guarded = (step, bad)
            self._nonfinite_steps = self._nonfinite_steps + 1 if bad else 0
        if bad:
            # Weights after a non-finite step may be spoiled: never checkpoint or score them.
            self.control.should_save = self.control.should_evaluate = False
            if self._nonfinite_steps >= NONFINITE_STEPS:
                raise NonFiniteLossError(self._nonfinite_message())
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

    def weights_finite(self) -> bool:
        """Whether every trainable weight in memory is finite, on every process (collective: all ranks call)."""
        return not self._on_any_process(not trainable_weights_finite(self.model))

    def _on_any_process(self, flag: bool) -> bool:
        if self.accelerator.num_processes == 1:
            return flag
        return bool(self.accelerator.reduce(torch.tensor(float(flag), device=self.args.device), "sum") > 0)

    def _nonfinite_message(self) -> str:
        step = self.state.global_step
        precision = "bf16 mixed precision" if self.args.bf16 else "fp16 mixed precision" if self.args.fp16 else "fp32"
        saved = complete_checkpoints(Path(self.args.output_dir))
        kept = (f"the last good checkpoint is {display_path(saved[-1])} (--resume continues from it)" if saved
                else "no checkpoint was saved before it")
        return (f"training stopped at step {step}: the loss or gradient norm was NaN/inf for {NONFINITE_STEPS} "
                f"steps in a row under {precision}; {kept}. Try --precision fp32 (or bf16 on a GPU that has it) "
                f"or a lower --learning_rate (now {self.args.learning_rate:g})")

    def _add_sums(self, mode: str, ce_sum: torch.Tensor, kl_sum: torch.Tensor | None, tokens: int) -> None:
        kl = kl_sum if kl_sum is not None else torch.zeros_like(ce_sum)
        self._loss_sums[mode] += torch.stack([ce_sum, kl, ce_sum.new_tensor(tokens)]).to(self._loss_sums[mode])
        self._has_kl[mode] |= kl_sum is not None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        self._loss_sums["eval"].zero_()
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        ce, kl, tokens = sum_over_processes(self._loss_sums["eval"]).tolist()
        if tokens > 0:
            output.metrics[f"{metric_key_prefix}_loss"] = self.token_mean_loss(ce, kl, tokens)
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            self._loss_sums["train"].zero_()  # plain SFT logs the Trainer's own loss; KDTrainer adds its parts
        super().log(logs, start_time)

    def save_final_adapter(self) -> None:
        """Save the adapter in memory as ``final_dir`` (every rank calls it: sharded engines gather).

        Written to a temporary folder first and renamed by the main process: a killed run never
        leaves a half-written final_model/.
        """
        self.final_saved = True
        if not self.weights_finite():  # one or two NaN steps at the very end (three stop the run)
            self.final_skipped = True
            if self.is_world_process_zero():
                print(f"[guard] {self.final_dir.name}/ not written: the adapter after step {self.state.global_step} "
                      f"has NaN/inf weights; {last_finite_checkpoint(Path(self.args.output_dir))}", flush=True)
            return
        tmp = self.final_dir.with_name(f".{self.final_dir.name}.tmp")
        if self.is_world_process_zero():
            shutil.rmtree(tmp, ignore_errors=True)
        self.save_model(str(tmp))
        if self.is_world_process_zero():
            (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; the config is in run_info.json
            shutil.rmtree(self.final_dir, ignore_errors=True)
            os.replace(tmp, self.final_dir)

    def _load_best_model(self) -> None:
        # transformers 5.23 ends training with: load the best checkpoint into memory, then (with
        # save_total_limit 1) delete the last checkpoint, then on_train_end. The last step's
        # weights exist only here, just before they are replaced: final_model/ is saved now.
        self.save_final_adapter()
        super()._load_best_model()

    def _get_train_sampler(self, train_dataset=None):
        from transformers.trainer_pt_utils import LengthGroupedSampler

        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            # state.epoch is a float that reaches exactly k.0 at the end of epoch k-1 (and on resume).
            sampler = EpochSeededSampler(sampler, seed, lambda: int(math.floor((self.state.epoch or 0) + 1e-6)))
        return sampler


def trainable_weights_finite(model) -> bool:
    """This process's trainable weights (its shards under FSDP2) are all finite."""
    for p in model.parameters():
        if p.requires_grad:
            local = p.to_local() if hasattr(p, "to_local") else p
            if not bool(torch.isfinite(local).all()):
                return False
    return True


def last_finite_checkpoint(output_dir: Path) -> str:
    """Where the last finite adapter is, in words (checkpoints are saved only after finite steps)."""
    saved = complete_checkpoints(output_dir)
    return (f"the last finite adapter is {display_path(saved[-1])}" if saved
            else "no checkpoint was saved before it")


def mask_repeated_examples(inputs: dict, accelerator) -> dict:
    """The evaluation batch with labels -100 on the examples accelerate repeated to even out processes.

    With several processes, accelerate's ``even_batches`` completes the last round of evaluation
    batches with examples from the start of the set, so that every process runs the same number
    of forward passes (FSDP and DeepSpeed need it). Those copies appear only in each process's last
    batch, after its real examples: of the round's ``batch x processes`` slots the first
    ``remainder`` (= set size mod that product, in process order) are real -- the rule
    ``Accelerator.gather_for_metrics`` drops copies by. A padding-free row holds its examples in
    order, each starting where ``position_ids`` is 0.
    """
    state = accelerator.gradient_state
    if accelerator.num_processes == 1 or not state.end_of_dataloader or state.remainder <= 0:
        return inputs
    labels = inputs["labels"]
    packed = labels.shape[0] == 1 and inputs.get("position_ids") is not None
    starts = (inputs["position_ids"][0] == 0).nonzero().flatten().tolist() if packed else list(range(labels.shape[0]))
    real = min(max(state.remainder - accelerator.process_index * len(starts), 0), len(starts))
    if real == len(starts):
        return inputs
    masked = dict(inputs)
    for key in ("labels", "shift_labels"):
        if masked.get(key) is not None:
            masked[key] = masked[key].clone()
            if packed:
                masked[key][0, starts[real]:] = IGNORE_INDEX
            else:
                masked[key][real:] = IGNORE_INDEX
    return masked


def sum_over_processes(values: torch.Tensor) -> torch.Tensor:
    """All-reduce (sum) a small tensor over DDP processes; the tensor itself when not distributed."""
    tensor = values.clone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor.cpu()

