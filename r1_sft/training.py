"""Supervised fine-tuning machinery shared by the SFT and distillation scripts.

One entry point, :func:`run_training`: records -> token ids and labels (through
``r1_format.encode_example``, the same code inference uses) -> (Q)LoRA model -> the Hugging Face
Trainer (its own evaluation, checkpoints, best-model tracking, early stopping and resume) ->
``best_model/``, ``final_model/`` and ``training_logs/`` in the output folder.

Extension point for a script with another loss (e.g. knowledge distillation)::

    class KDTrainer(SFTTrainer):
        def __init__(self, *args, teacher_model=None, **kwargs): ...
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None): ...

    run_training(cfg, trainer_cls=KDTrainer, trainer_kwargs={"teacher_model": teacher})

``cfg`` is a :class:`TrainConfig` (or a subclass adding the script's own fields).
"""
from __future__ import annotations

import math
import os
import re
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.modeling_outputs import CausalLMOutputWithPast

from .batching import TokenStatsCallback, make_collator
from .cli import UserError
from .jsonl_io import read_jsonl, write_jsonl
from .loss import DEFAULT_CHUNK_TOKENS, LossParts, model_loss, shifted_targets
from .paths import display_path, repo_path
from .r1_format import IGNORE_INDEX, encode_example
from .run_info import save_run_info
from .train_callbacks import (LogHistoryCallback, SaveWhenStoppingCallback, end_summary, on_terminal, plot_loss_curve,
                              quiet_dataset_bars, use_progress_output)
from .train_checks import check_before_loading, report_to

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainConfig:
    """Every training knob; a script's ``Config`` subclasses this and re-states the defaults users edit."""

    model_path: str = "model/deepseek_ai/DeepSeek-R1-Distill-Qwen-1.5B"  # base model folder (repo-relative or absolute)
    train_file: str = "dataset/sft_r1_train.jsonl"  # training records {"input", "output"}, JSONL
    val_file: str = "dataset/sft_r1_val.jsonl"  # validation records for eval loss and best-model choice, JSONL
    output_dir: str = "model/deepseek_r1_1.5b_lora"  # checkpoints, best_model/, final_model/, training_logs/
    max_length: int = 2048  # longest example in tokens (prompt + reasoning + answer + EOS)
    truncate_long: bool = False  # cut over-length examples instead of skipping them (their EOS is lost: not advised)
    use_4bit: bool = True  # QLoRA: base weights in 4-bit NF4 with double quantization; off = LoRA on bf16/fp32 weights
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.05  # dropout on the LoRA input
    lora_target_modules: str = "all-linear"  # "all-linear" or comma-separated module names (q_proj,v_proj,...)
    learning_rate: float = 2e-4  # peak learning rate (AdamW)
    lr_scheduler_type: str = "cosine"  # learning-rate schedule after warmup
    warmup_ratio: float = 0.03  # fraction of the steps spent warming up the learning rate
    weight_decay: float = 0.0  # AdamW weight decay on the LoRA weights
    max_grad_norm: float = 1.0  # gradient clipping norm
    num_train_epochs: float = 3.0  # passes over the training data
    max_steps: int = -1  # optimizer steps; > 0 overrides num_train_epochs
    per_device_train_batch_size: int = 4  # sequences per device per micro-batch
    per_device_eval_batch_size: int = 4  # sequences per device per evaluation batch
    gradient_accumulation_steps: int = 4  # micro-batches per optimizer step
    gradient_checkpointing: bool = True  # recompute activations in backward: less memory, ~1/3 more compute
    eval_steps: int = 50  # evaluate the validation loss every N optimizer steps
    save_steps: int = 50  # write OUTPUT_DIR/checkpoint-N every N steps (a multiple of eval_steps)
    save_total_limit: int = 3  # checkpoints kept on disk (the best one is always kept as well)
    logging_steps: int = 10  # log train loss, learning rate and tokens/s every N steps
    early_stopping_patience: int = 3  # stop after N evaluations without a better eval loss; 0 = never
    seed: int = 42  # seed for LoRA init, data order and dropout
    dry_run: bool = False  # tokenize, print statistics and examples, write encoded_examples.jsonl, then exit
    resume: bool = False  # continue from the newest complete checkpoint-N in OUTPUT_DIR
    overwrite_output_dir: bool = False  # delete an earlier run's checkpoints and results in OUTPUT_DIR first
    deepspeed: str = ""  # DeepSpeed config JSON (e.g. configs/deepspeed_zero2.json); empty = plain DDP / single device
    loss_chunk_tokens: int = DEFAULT_CHUNK_TOKENS  # loss through lm_head this many trained positions at a time (0.16 GB per fp32 chunk of R1's logits; no full-vocabulary logits); 0 = the stock loss
    use_liger_kernel: bool = False  # CUDA + liger-kernel installed: Liger's fused linear cross-entropy instead of the chunked loss
    gpu_memory_gb: float = 0.0  # with --dry_run: also print the largest per-device batch that fits a GPU of this many GB
    report_to: str = "none"  # experiment tracking through the Trainer: none, tensorboard, swanlab, wandb (comma-separated; each an optional pip install)
    allow_no_think: bool = False  # train on records whose output is not in the <think> format instead of refusing them


@dataclass
class EncodedData:
    """A tokenized split: ``dataset`` has columns input_ids, labels, length (unpadded)."""

    dataset: Any  # datasets.Dataset
    records: int  # records read
    skipped: int  # over-length records left out (or truncated, with truncate_long)
    truncated: int  # records cut to max_length (truncate_long only)


@dataclass
class TrainingResult:
    best_model: Path
    final_model: Path
    global_step: int
    best_eval_loss: float | None
    log_history: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------- data

def load_sft_records(path: str | Path) -> list[dict]:
    """Read ``{"input", "output"}`` records; a record missing either string is a UserError."""
    path = repo_path(path)
    records = []
    for index, rec in enumerate(read_jsonl(path), 1):
        for key in ("input", "output"):
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                raise UserError(f"{display_path(path)}: record {index}: missing or empty string field {key!r} "
                                f"(expected {{\"input\": ..., \"output\": ...}} from the data stage)")
        records.append({"input": rec["input"], "output": rec["output"]})
    if not records:
        raise UserError(f"{display_path(path)}: no records (run the data stage, or pass the right file)")
    return records


def encode_dataset(records: Sequence[dict], tokenizer, max_length: int, truncate: bool = False,
                   desc: str = "tokenize"):
    """Tokenize records with ``datasets.map`` through ``r1_format.encode_example``; drop over-length ones."""
    from datasets import Dataset

    def encode(rec: dict) -> dict:
        enc = encode_example(tokenizer, rec["input"], rec["output"], max_length=max_length, truncate=truncate)
        if enc is None:
            return {"input_ids": [], "labels": [], "length": 0, "cut": False}
        # A truncated example lost its EOS label: count it so the user sees what they asked for.
        cut = enc["labels"][-1] != tokenizer.eos_token_id
        return {**enc, "length": len(enc["input_ids"]), "cut": cut}

    raw = Dataset.from_list(list(records))
    encoded = raw.map(encode, remove_columns=raw.column_names, desc=desc)
    kept = encoded.filter(lambda n: n > 0, input_columns="length", desc="drop over-length")
    truncated = sum(kept["cut"])
    return EncodedData(kept.remove_columns("cut"), len(records), len(records) - len(kept), truncated)


def load_split(path: str | Path, tokenizer, cfg: TrainConfig, name: str) -> EncodedData:
    """Read and tokenize one split; an empty result (everything too long) is a UserError."""
    records = load_sft_records(path)
    data = encode_dataset(records, tokenizer, cfg.max_length, cfg.truncate_long, desc=f"tokenize {name}")
    if len(data.dataset) == 0:
        raise UserError(f"{display_path(repo_path(path))}: all {data.records} examples are longer than "
                        f"max_length={cfg.max_length} tokens (raise --max_length)")
    return data


def length_summary(lengths: Sequence[int]) -> str:
    ordered = sorted(lengths)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return (f"min {ordered[0]}, mean {statistics.fmean(ordered):.0f}, median {statistics.median(ordered):.0f}, "
            f"p95 {p95}, max {ordered[-1]}")


def describe_split(name: str, path: str | Path, data: EncodedData, max_length: int) -> None:
    ds = data.dataset
    trained = [sum(1 for label in labels if label != IGNORE_INDEX) for labels in ds["labels"]]
    extra = f", {data.truncated} truncated to {max_length}" if data.truncated else ""
    print(f"[data] {name}: read {data.records} records from {display_path(repo_path(path))}; kept {len(ds)}, "
          f"skipped {data.skipped} longer than max_length={max_length}{extra}", flush=True)
    print(f"[data] {name} tokens per example: {length_summary(ds['length'])}; "
          f"trained tokens: {length_summary(trained)}", flush=True)


def render_trained_example(tokenizer, input_ids: Sequence[int], labels: Sequence[int]) -> str:
    """Decoded example with the trained (labelled) part between ⟦ and ⟧, special tokens shown."""
    first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    prompt = tokenizer.decode(list(input_ids[:first]), skip_special_tokens=False)
    trained = tokenizer.decode(list(input_ids[first:]), skip_special_tokens=False)
    return f"{prompt}⟦{trained}⟧"


def write_encoded_examples(path: Path, dataset, count: int = 5) -> int:
    rows = dataset.select(range(min(count, len(dataset))))
    return write_jsonl(path, ({"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows))


# ----------------------------------------------------------------------------- model

def target_modules(spec: str) -> str | list[str]:
    spec = spec.strip()
    return spec if spec == "all-linear" else [name.strip() for name in spec.split(",") if name.strip()]


def setup_lora_model(cfg: TrainConfig):
    """Load the base (4-bit NF4 when ``use_4bit``), freeze it, add LoRA adapters; returns ``(peft_model, tokenizer)``.

    The frozen base keeps its dtype: peft's ``prepare_model_for_kbit_training`` would upcast every
    non-quantized weight to fp32, for R1 the untied embed_tokens and lm_head (2 x 233M parameters =
    1.87 GB against a 0.7 GB 4-bit body), and its fp32 embedding output would make the whole residual
    stream fp32 under bf16 autocast. The LoRA weights are fp32 (peft's default), which fp16 loss
    scaling needs. ``model_path`` may be an adapter folder: training continues that adapter on its
    real base, and the new adapter_config names that base (never an adapter).
    Under torchrun ``load_model`` puts each process on its own GPU.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    from .modeling import load_model, resolve_model_folder

    folder = resolve_model_folder(cfg.model_path)
    model, tokenizer = load_model(folder.base_path, use_4bit=cfg.use_4bit, for_training=True)
    model.requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path
    if folder.adapter_path is not None:
        print(f"[lora] continuing adapter {display_path(folder.adapter_path)} on its base "
              f"{display_path(folder.base_path)} (its rank and target modules; the --lora_* settings are ignored)",
              flush=True)
        model = PeftModel.from_pretrained(model, str(folder.adapter_path), is_trainable=True)
    else:
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                          target_modules=target_modules(cfg.lora_target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    # adapter_config.json names its base (a full-weights folder): repo-relative keeps the folder portable.
    model.peft_config["default"].base_model_name_or_path = display_path(folder.base_path)
    return model, tokenizer


def compute_precision() -> dict:
    """Trainer mixed-precision flags, from the one precision decision (``modeling.decide_precision``)."""
    from .modeling import decide_precision, pick_device

    plan = decide_precision(pick_device())
    return {"bf16": plan.trainer_bf16, "fp16": plan.trainer_fp16}


# ----------------------------------------------------------------------------- trainer

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


class SFTTrainer(Trainer):
    """The Hugging Face Trainer with the project's loss, token-weighted eval_loss and a resumable shuffle.

    Loss: cross-entropy over trained tokens through lm_head in chunks of ``loss_chunk_tokens``
    positions (``r1_sft.loss``: no full-vocabulary logits). ``loss_chunk_tokens=0`` falls back to the
    model's stock loss (full logits; for comparison), as does Liger-Kernel's fused linear
    cross-entropy (``use_liger_kernel``), which patches the model's own forward.
    ``eval_loss`` is the mean over every trained token of the validation set: the Trainer's own
    averages batch means weighted by batch size, and counts a padding-free batch as one.
    Subclass this for other losses (``distill.KDTrainer``).
    """

    def __init__(self, *args, loss_chunk_tokens: int = DEFAULT_CHUNK_TOKENS, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_chunk_tokens = loss_chunk_tokens
        # [ce_sum, kl_sum, tokens] since the last log, per mode; kept on the device (no sync per step)
        self._loss_sums = {mode: torch.zeros(3, dtype=torch.float64, device=self.args.device)
                           for mode in ("train", "eval")}
        self._has_kl = {"train": False, "eval": False}

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
        if self.uses_stock_loss:
            loss = super().compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
            if mode == "eval":  # num_items_in_batch is None here: loss is this batch's per-token mean
                tokens = int((shifted_targets(inputs["labels"], inputs.get("shift_labels")) != IGNORE_INDEX).sum())
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

    def _get_train_sampler(self, train_dataset=None):
        from transformers.trainer_pt_utils import LengthGroupedSampler

        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            # state.epoch is a float that reaches exactly k.0 at the end of epoch k-1 (and on resume).
            sampler = EpochSeededSampler(sampler, seed, lambda: int(math.floor((self.state.epoch or 0) + 1e-6)))
        return sampler


def sum_over_processes(values: torch.Tensor) -> torch.Tensor:
    """All-reduce (sum) a small tensor over DDP processes; the tensor itself when not distributed."""
    tensor = values.clone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor.cpu()


# ----------------------------------------------------------------------------- callbacks

# ----------------------------------------------------------------------------- outputs

def complete_checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-N folders whose save finished (trainer_state.json is written last), oldest first."""
    found = []
    if output_dir.is_dir():
        for child in output_dir.iterdir():
            match = CHECKPOINT_RE.match(child.name)
            if match and child.is_dir() and (child / "trainer_state.json").is_file():
                found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def copy_adapter(checkpoint: Path, dest: Path, tokenizer) -> None:
    """Copy a checkpoint's adapter (config + safetensors) into ``dest`` with the tokenizer, atomically."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(checkpoint / name, tmp / name)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def clear_output_dir(output_dir: Path) -> None:
    """Remove what an earlier run left (checkpoints, results, logs); other files stay."""
    for child in output_dir.iterdir() if output_dir.is_dir() else []:
        if child.is_dir() and (CHECKPOINT_RE.match(child.name) or child.name in
                               ("best_model", "final_model", "training_logs")):
            shutil.rmtree(child)


def memory_plan(cfg: TrainConfig, longest: int) -> str:
    """The estimated peak GPU memory of this run (``r1_sft.memory_estimate``), from config.json alone.

    Estimated for a GPU (16-bit weights; QLoRA's NF4 body) at the longest encoded example, capped
    by max_length; with ``gpu_memory_gb`` also the largest per-device batch that fits.
    """
    from .memory_estimate import describe, estimate, read_shape
    from .modeling import resolve_model_folder

    shape = read_shape(resolve_model_folder(cfg.model_path).base_path)
    est = estimate(shape, batch_size=cfg.per_device_train_batch_size, max_length=min(longest, cfg.max_length),
                   use_4bit=cfg.use_4bit, dtype_bytes=2, lora_r=cfg.lora_r,
                   lora_target_modules=cfg.lora_target_modules, dropout_mask_bytes=1 if cfg.lora_dropout else 0,
                   gradient_checkpointing=cfg.gradient_checkpointing, loss_chunk_tokens=cfg.loss_chunk_tokens)
    return describe(est, gpu_memory_gb=cfg.gpu_memory_gb or None, shape=shape)


def check_loss_settings(cfg: TrainConfig) -> None:
    """The loss switches, checked before anything loads."""
    if cfg.loss_chunk_tokens < 0:
        raise UserError(f"--loss_chunk_tokens {cfg.loss_chunk_tokens}: must be >= 0 (0 = the stock full-logits loss)")
    if cfg.use_liger_kernel:
        import importlib.util

        if not torch.cuda.is_available():
            raise UserError("--use_liger_kernel: Liger-Kernel runs on CUDA GPUs only (on this machine the chunked "
                            "loss, the default, keeps the memory down)")
        if importlib.util.find_spec("liger_kernel") is None:
            raise UserError("--use_liger_kernel: the liger-kernel package is not installed (pip install liger-kernel)")


def build_training_args(cfg: TrainConfig, output_dir: Path, sampling_strategy: str) -> TrainingArguments:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if "tensorboard" in report_to(cfg.report_to):
        # transformers 5 has no TrainingArguments.logging_dir: its TensorBoard callback reads this variable.
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(output_dir / "training_logs" / "tensorboard")
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a fraction of the steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        prediction_loss_only=True,  # eval needs only the loss: never gather vocab-sized logits
        remove_unused_columns=False,  # the collator picks its columns
        train_sampling_strategy=sampling_strategy,
        length_column_name="length",
        seed=cfg.seed,
        report_to=report_to(cfg.report_to),
        run_name=output_dir.name,  # the trackers' run name: the output folder's
        disable_tqdm=not on_terminal(),  # in a log file: no bar, train_callbacks writes compact lines instead
        dataloader_pin_memory=torch.cuda.is_available(),
        # On a machine without CUDA, accelerate runs real multi-process DDP under torchrun only
        # with use_cpu set; without it each process silently trains alone.
        use_cpu=not torch.cuda.is_available(),
        save_only_model=False,  # optimizer, scheduler and RNG state are needed for an exact resume
        ddp_find_unused_parameters=False if distributed else None,
        deepspeed=str(repo_path(cfg.deepspeed)) if cfg.deepspeed else None,
        use_liger_kernel=cfg.use_liger_kernel,
        log_level_replica="error",  # DDP replicas would otherwise re-enable library warnings the user cannot act on
        **compute_precision(),
    )


# ----------------------------------------------------------------------------- entry point

def run_training(cfg: TrainConfig, trainer_cls: type[Trainer] = SFTTrainer, trainer_kwargs: dict | None = None,
                 callbacks: Sequence[TrainerCallback] = ()) -> TrainingResult | None:
    """Load -> encode -> (dry run: report and stop) -> train -> save best/final adapters and logs.

    ``trainer_cls`` / ``trainer_kwargs``: a subclass of :class:`SFTTrainer` and its extra constructor
    arguments (e.g. a distillation loss with its teacher). ``callbacks`` are added after ours.
    Returns None on a dry run.
    """
    from .modeling import load_tokenizer

    no_think = check_before_loading(cfg)  # values, paths, trackers, data format, LoRA names: nothing loaded yet
    check_loss_settings(cfg)
    quiet_dataset_bars()
    output_dir = repo_path(cfg.output_dir)
    logs_dir = output_dir / "training_logs"
    is_main = int(os.environ.get("RANK", "0")) == 0
    say = print if is_main else (lambda *a, **k: None)

    tokenizer = load_tokenizer(cfg.model_path, padding_side="right")
    train = load_split(cfg.train_file, tokenizer, cfg, "train")
    val = load_split(cfg.val_file, tokenizer, cfg, "val")
    if is_main:
        describe_split("train", cfg.train_file, train, cfg.max_length)
        describe_split("val", cfg.val_file, val, cfg.max_length)
        if any(no_think.values()):
            print(f"[data] trained as they are (--allow_no_think): {no_think['train']} train and {no_think['val']} "
                  f"val records whose output is not in the think format", flush=True)

    if cfg.dry_run:
        first = train.dataset[0]
        print("[dry_run] first training example; the trained part (labels != -100) is inside ⟦ ⟧:")
        print(render_trained_example(tokenizer, first["input_ids"], first["labels"]))
        path = logs_dir / "encoded_examples.jsonl"
        n = write_encoded_examples(path, train.dataset)
        print(f"[dry_run] wrote {n} encoded examples to {display_path(path)}; no training done", flush=True)
        print(memory_plan(cfg, max(train.dataset["length"])), flush=True)
        return None

    resume_from = None
    if cfg.resume:
        done = complete_checkpoints(output_dir)
        if done:
            resume_from = done[-1]
            say(f"[resume] continuing from {display_path(resume_from)}", flush=True)
        else:
            say(f"[resume] no complete checkpoint in {display_path(output_dir)}: starting from scratch", flush=True)
    elif complete_checkpoints(output_dir) or (output_dir / "best_model").exists():
        if not cfg.overwrite_output_dir:
            raise UserError(f"{display_path(output_dir)}: holds an earlier run (pass --resume to continue it, "
                            f"--overwrite_output_dir to start over, or another --output_dir)")
        if is_main:
            clear_output_dir(output_dir)

    set_seed(cfg.seed)  # before the LoRA weights are initialised
    model, tokenizer = setup_lora_model(cfg)
    collator, sampling_strategy = make_collator(tokenizer, model)
    args = build_training_args(cfg, output_dir, sampling_strategy)
    if is_main:
        model.print_trainable_parameters()
        save_run_info(cfg, logs_dir / "run_info.json")

    all_callbacks: list[TrainerCallback] = [SaveWhenStoppingCallback(), TokenStatsCallback()]
    early_stopping = None
    if cfg.early_stopping_patience > 0:
        early_stopping = EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience)
        all_callbacks.insert(0, early_stopping)
    all_callbacks += list(callbacks)
    all_callbacks.append(LogHistoryCallback(logs_dir / "log_history.jsonl"))  # last: sees every added value

    trainer = trainer_cls(model=model, args=args, data_collator=collator, train_dataset=train.dataset,
                          eval_dataset=val.dataset, processing_class=tokenizer, callbacks=all_callbacks,
                          **{"loss_chunk_tokens": cfg.loss_chunk_tokens, **(trainer_kwargs or {})})
    use_progress_output(trainer)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    state = trainer.state
    best_dir, final_dir = output_dir / "best_model", output_dir / "final_model"
    # load_best_model_at_end has put the best adapter in memory (every rank saves: DeepSpeed needs it).
    trainer.save_model(str(best_dir))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(best_dir))
        (best_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle; the config is in run_info.json
        # The last adapter is the newest checkpoint (the Trainer saves at max_steps, we at early stop).
        last = output_dir / f"checkpoint-{state.global_step}"
        if (last / "adapter_model.safetensors").is_file():
            copy_adapter(last, final_dir, tokenizer)
        else:  # cannot happen with our callbacks, but never leave final_model missing
            trainer.save_model(str(final_dir))
        write_jsonl(logs_dir / "log_history.jsonl", state.log_history)
        plotted = plot_loss_curve(state.log_history, logs_dir / "loss_curve.png")
        for folder in (best_dir, final_dir):
            save_run_info(cfg, folder / "run_info.json")
        for line in end_summary(args, state, early_stopping, best_dir, final_dir, cfg.eval_steps):
            print(line, flush=True)
        print(f"[write] {display_path(best_dir)} (best adapter), {display_path(final_dir)} (last adapter), "
              f"{display_path(logs_dir)}/log_history.jsonl ({len(state.log_history)} entries)"
              f"{', loss_curve.png' if plotted else ''}, run_info.json"
              f"{', tensorboard/' if 'tensorboard' in args.report_to else ''}", flush=True)
    return TrainingResult(best_dir, final_dir, state.global_step, state.best_metric, list(state.log_history))
