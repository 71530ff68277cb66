"""Every training path under a GPU's numerics, run for real on the CPU.

A GPU at compute capability >= 8.0 trains with bf16 weights under bf16 autocast (T4/V100: fp16 with
loss scaling). Both autocasts run on CPUs, so ``--precision bf16|fp16`` runs those branches here:
real optimizer steps through the real scripts, with the dtypes a GPU would use. The old chunked
loss crashed at its first bf16 step (``float != BFloat16``: accelerate hands back fp32 hidden
states, lm_head was bf16); these tests would have caught it.

Each run asserts what a user would check: the model loaded in that dtype, finite losses, LoRA
weights that moved, and outputs the next stage reads.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainingArguments

from r1_sft.model.loading import load_model
from r1_sft.training.batching import PADDING_FREE, make_collator
from r1_sft.training.encoding import encode_dataset, load_sft_records
from r1_sft.training.loss import chunked_loss
from r1_sft.training.trainer import NONFINITE_STEPS, NonFiniteLossError, SFTTrainer

from conftest import REPO, run_script

TRAIN = REPO / "tests/fixtures/sft_tiny_train.jsonl"
VAL = REPO / "tests/fixtures/sft_tiny_val.jsonl"
SFT = "scripts/train_stf_r1_train_val.py"
DTYPE_NAME = {"bf16": "bfloat16", "fp16": "float16"}
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------- the fused loss itself

def _reference(hidden, head, labels):
    logits = head(hidden[:, :-1]).float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                             ignore_index=-100, reduction="sum") / (labels[:, 1:] != -100).sum()


def _lora_head(vocab: int, hidden: int):
    from peft import LoraConfig, get_peft_model

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = torch.nn.Linear(hidden, vocab, bias=False)

        def forward(self, x):
            return self.lm_head(x)

    model = get_peft_model(Head(), LoraConfig(r=4, lora_alpha=8, target_modules=["lm_head"], lora_dropout=0.0))
    torch.nn.init.normal_(model.base_model.model.lm_head.lora_B["default"].weight)  # not zero: a real gradient path
    return model.base_model.model.lm_head


@pytest.mark.parametrize("head_kind", ["frozen", "trainable", "lora"])
def test_fused_loss_equals_the_stock_loss_and_its_gradients(head_kind):
    torch.manual_seed(0)
    vocab, width = 300, 16
    head = _lora_head(vocab, width) if head_kind == "lora" else torch.nn.Linear(width, vocab, bias=False)
    if head_kind == "frozen":
        head.requires_grad_(False)
    params = [p for p in head.parameters() if p.requires_grad]
    labels = torch.randint(0, vocab, (3, 11))
    labels[0, :4] = -100
    labels[2, 7:] = -100
    hidden = torch.randn(3, 11, width, requires_grad=True)

    expected = _reference(hidden, head, labels)
    expected_grads = torch.autograd.grad(expected, [hidden, *params])
    got = chunked_loss(hidden, head, labels, chunk_tokens=5)
    got_grads = torch.autograd.grad(got.loss, [hidden, *params])

    torch.testing.assert_close(got.loss, expected, rtol=1e-5, atol=1e-6)
    assert len(got_grads) == len(expected_grads) == 1 + {"frozen": 0, "trainable": 1, "lora": 2}[head_kind]
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_loss_takes_fp32_hidden_states_beside_a_16_bit_head(dtype):
    """What the Trainer hands over under mixed precision: fp32 outputs of an autocast forward, a 16-bit
    lm_head. The loss runs the head under autocast as the forward would, and matches that reference."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=False).to(dtype).requires_grad_(False)
    labels = torch.randint(0, 300, (2, 9))
    hidden = torch.randn(2, 9, 16, requires_grad=True)  # fp32
    with pytest.raises(RuntimeError):
        head(hidden)  # the crash of the old loss: float input, 16-bit weight, no autocast
    with torch.autocast("cpu", dtype=dtype):
        expected = _reference(hidden, head, labels)
    got = chunked_loss(hidden, head, labels, chunk_tokens=4)
    (grad,) = torch.autograd.grad(got.loss, hidden)
    assert math.isfinite(got.loss.item()) and grad.dtype == torch.float32 and grad.abs().sum() > 0
    torch.testing.assert_close(got.loss, expected.float(), rtol=1e-3, atol=1e-3)


# ----------------------------------------------------------------------------- the real scripts

def _small_val(tmp_path):
    path = tmp_path / "val3.jsonl"
    path.write_text("".join(VAL.read_text(encoding="utf-8").splitlines(keepends=True)[:3]), encoding="utf-8")
    return path


def _batch(precision: str) -> str:
    """Examples per step: one under fp16, whose matrix products a CPU without AVX512-FP16 emulates (about 10x
    bf16's time on the 151,936-row output layer); two under bf16."""
    return "1" if precision == "fp16" else "2"


def _train(tiny_model_dir, tmp_path, name: str, precision: str, *extra: str, script: str = SFT):
    out = tmp_path / name
    proc = run_script(script, "--model_path", tiny_model_dir, "--train_file", TRAIN,
                      "--val_file", _small_val(tmp_path), "--output_dir", out, "--max_length", "192",
                      "--max_steps", "2", "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "1",
                      "--per_device_train_batch_size", _batch(precision), "--per_device_eval_batch_size", "3",
                      "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3", "--precision", precision,
                      "--lora_target_modules", "q_proj,v_proj,lm_head", *extra, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def _assert_trained(out, log: str, precision: str, four_bit: bool):
    quant = ", 4-bit NF4" if four_bit else ""
    assert f"(cpu, {DTYPE_NAME[precision]}{quant}," in log  # the weights a GPU would train
    history = [json.loads(line) for line in (out / "training_logs/log_history.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if "loss" in h] + [h["eval_loss"] for h in history if "eval_loss" in h]
    assert len(losses) >= 3 and all(math.isfinite(v) for v in losses), losses  # 2 steps, 1 evaluation
    adapter = load_file(out / "final_model/adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and all(torch.isfinite(t.float()).all() for t in adapter.values())
    assert any(t.abs().sum() > 0 for t in lora_b)  # LoRA B starts at zero: non-zero means it trained
    assert any("lm_head" in name for name in adapter)  # the head's adapter got its gradient (fused loss)
    assert json.loads((out / "final_model/run_info.json").read_text())["config"]["precision"] == precision


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_qlora_with_the_default_loss_trains_evaluates_and_resumes(tiny_model_dir, tmp_path, precision):
    out, log = _train(tiny_model_dir, tmp_path, "qlora", precision, "--use_4bit")
    _assert_trained(out, log, precision, four_bit=True)
    resumed = run_script(SFT, "--model_path", tiny_model_dir, "--train_file", TRAIN, "--val_file",
                         _small_val(tmp_path), "--output_dir", out, "--max_length", "192", "--max_steps", "3",
                         "--eval_steps", "3", "--save_steps", "3", "--per_device_train_batch_size", _batch(precision),
                         "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3", "--precision", precision,
                         "--lora_target_modules", "q_proj,v_proj,lm_head", "--resume", env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "continuing from" in resumed.stdout and (out / "checkpoint-3").is_dir()

    # Evaluation, chat and merging of that adapter under the same precision.
    evaluated = run_script("scripts/evaluate_model.py", "--base_model", tiny_model_dir, "--adapter",
                           out / "final_model", "--data", _small_val(tmp_path), "--num_samples", "2", "--n_samples",
                           "1", "--max_new_tokens", "8", "--output_dir", tmp_path / "eval", "--run_name", "p",
                           "--precision", precision, env=ONE_THREAD)
    assert evaluated.returncode == 0, evaluated.stdout[-3000:] + evaluated.stderr[-3000:]
    assert evaluated.stdout.count(f"(cpu, {DTYPE_NAME[precision]}") == 2  # base and tuned, in that dtype
    summary = json.loads((tmp_path / "eval/p/summary.json").read_text())
    assert set(summary["models"]) == {"base", "tuned"}
    chat = run_script("scripts/chat_with_model.py", "--model", out / "final_model", "--once", "头痛怎么办？",
                      "--max_new_tokens", "8", "--seed", "1", "--precision", precision, env=ONE_THREAD)
    assert chat.returncode == 0 and f"(cpu, {DTYPE_NAME[precision]}" in chat.stdout, chat.stderr[-2000:]
    merged = run_script("scripts/merge_lora.py", "--adapter", out / "final_model", "--output_dir", tmp_path / "m",
                        "--dtype", DTYPE_NAME[precision], env=ONE_THREAD)
    assert merged.returncode == 0, merged.stderr[-2000:]
    weights = load_file(tmp_path / "m/model.safetensors")
    assert {t.dtype for t in weights.values()} == {getattr(torch, DTYPE_NAME[precision])}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_lora_on_16_bit_weights_with_the_stock_loss(tiny_model_dir, tmp_path, precision):
    out, log = _train(tiny_model_dir, tmp_path, "lora", precision, "--no_use_4bit", "--loss_chunk_tokens", "0")
    _assert_trained(out, log, precision, four_bit=False)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_token_level_distillation(tiny_model_dir, tmp_path, precision):
    out, log = _train(tiny_model_dir, tmp_path, "kd", precision, "--no_use_4bit", "--use_teacher_logits",
                      "--teacher_model_path", tiny_model_dir, "--no_teacher_use_4bit", "--lambda_kl", "0.5",
                      script="scripts/train_distill.py")
    _assert_trained(out, log, precision, four_bit=False)
    history = [json.loads(line) for line in (out / "training_logs/log_history.jsonl").read_text().splitlines()]
    kl = [h["kl_loss"] for h in history if "kl_loss" in h]
    assert kl and all(math.isfinite(v) for v in kl)


def test_padding_free_batches_train_under_bf16(tiny_model_dir, tmp_path):
    """Padding-free rows (FlashAttention's batching on a GPU) through the fused loss, bf16 autocast."""
    model, tokenizer = load_model(tiny_model_dir, for_training=True, device="cpu", precision="bf16")
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    data = encode_dataset(load_sft_records(VAL)[:4], tokenizer, max_length=192).dataset
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=True, max_steps=2,
                             per_device_train_batch_size=2, learning_rate=1e-2, remove_unused_columns=False,
                             save_strategy="no", logging_steps=1, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data,
                         data_collator=make_collator(tokenizer, model, strategy=PADDING_FREE)[0])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


# ----------------------------------------------------------------------------- the non-finite guard

def test_a_non_finite_loss_stops_the_run_with_one_line_and_keeps_the_good_checkpoints(tiny_model_dir, tmp_path):
    from r1_sft.training.run import run_training

    from conftest import sft_config

    class SpoilsAfterTwoSteps(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return result * float("nan") if model.training and self.state.global_step >= 2 else result

    out = tmp_path / "run"
    cfg = sft_config(model_path=str(tiny_model_dir), train_file=str(TRAIN), val_file=str(_small_val(tmp_path)),
                     output_dir=str(out), max_length=192, max_steps=8, eval_steps=1, save_steps=1,
                     per_device_train_batch_size=2, gradient_accumulation_steps=1, use_4bit=False,
                     precision="bf16", early_stopping_patience=0)
    with pytest.raises(NonFiniteLossError) as err:
        run_training(cfg, trainer_cls=SpoilsAfterTwoSteps)
    message = str(err.value)
    assert "\n" not in message
    assert f"stopped at step {2 + NONFINITE_STEPS}" in message and "bf16" in message
    assert "checkpoint-2" in message and "--precision fp32" in message and "--learning_rate" in message
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    kept = load_file(out / "checkpoint-2/adapter_model.safetensors")
    assert all(torch.isfinite(t.float()).all() for t in kept.values())
