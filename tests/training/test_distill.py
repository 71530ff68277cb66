"""Token-level distillation (r1_sft/training/distill.py, scripts/train_distill.py) on two tiny models sharing a tokenizer.

The student is the session's tiny R1 model; the teacher is a second tiny model built from the same corpus
(hence the byte-identical tokenizer) with another seed and a shorter pre-training. These tests check the
mechanics (loss, memory, batch layouts, refusal, direction of training), not that the teacher is better.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import TrainingArguments

from r1_sft.cli import UserError
from r1_sft.model.folders import load_tokenizer
from r1_sft.model.loading import load_model
from r1_sft.model.r1_tokenizer import EOS_TOKEN
from r1_sft.model.tiny_model import build_tiny_model
from r1_sft.training.batching import make_collator
from r1_sft.training.distill import KDTrainer, check_token_level_run, tokenizer_mismatch
from r1_sft.training.encoding import encode_dataset, load_sft_records
from r1_sft.training.loss import chunked_loss, model_loss
from r1_sft.training.trainer import SFTTrainer

from conftest import run_script, script_config

SCRIPT = "scripts/train_distill.py"
TRAIN = "tests/fixtures/sft_tiny_train.jsonl"
VAL = "tests/fixtures/sft_tiny_val.jsonl"


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "tiny_teacher"
    # Another seed, shorter blocks and fewer steps than the student: a different model in ~15 s of CPU.
    build_tiny_model(out, seed=1, pretrain_steps=150, batch_size=16, block_size=64, learning_rate=6e-3, verbose=False)
    return out


@pytest.fixture(scope="module")
def pair(tiny_model_dir, teacher_dir):
    student, tokenizer = load_model(tiny_model_dir, device="cpu", dtype="float32", attention="sdpa")
    teacher, _ = load_model(teacher_dir, device="cpu", dtype="float32", attention="sdpa")
    return student, teacher, tokenizer


@pytest.fixture(scope="module")
def features(pair):
    _, _, tokenizer = pair
    tokenizer.padding_side = "right"
    data = encode_dataset(load_sft_records(VAL)[:4], tokenizer, max_length=256).dataset
    return [data[i] for i in range(len(data))]


def trained_count(batch) -> torch.Tensor:
    return (batch["labels"][..., 1:] != -100).sum()


# ----------------------------------------------------------------------------- the loss, in memory

def reference_kd_loss(student_hidden, student_head, teacher_hidden, teacher_head, labels, lam, temperature, kl_vocab):
    """The loss written the obvious way: full logits for every position at once."""
    targets = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
    mask = targets != -100
    s_logits, t_logits = student_head(student_hidden).float()[mask], teacher_head(teacher_hidden).float()[mask]
    ce = torch.nn.functional.cross_entropy(s_logits, targets[mask])
    p_t = torch.softmax(t_logits[:, :kl_vocab] / temperature, -1)
    log_ratio = torch.log_softmax(t_logits[:, :kl_vocab] / temperature, -1) - \
        torch.log_softmax(s_logits[:, :kl_vocab] / temperature, -1)
    kl = (p_t * log_ratio).sum(-1).mean()
    return (1 - lam) * ce + lam * temperature ** 2 * kl


@pytest.mark.parametrize("chunk_tokens", [1, 7, 1000])
def test_chunked_loss_and_gradient_equal_the_full_logits_formula(chunk_tokens):
    torch.manual_seed(0)
    vocab, kl_vocab = 50, 45  # the teacher's lm_head is wider (like R1-7B's 152,064 vs 1.5B's 151,936 rows)
    s_head, t_head = torch.nn.Linear(8, vocab, bias=False), torch.nn.Linear(12, vocab + 14, bias=False)
    labels = torch.randint(0, kl_vocab, (2, 9))
    labels[0, :3] = -100  # a prompt
    labels[1, 6:] = -100  # padding
    s_hidden = torch.randn(2, 9, 8, requires_grad=True)
    t_hidden = torch.randn(2, 9, 12)

    expected = reference_kd_loss(s_hidden, s_head, t_hidden, t_head, labels, 0.3, 2.0, kl_vocab)
    (grad_expected,) = torch.autograd.grad(expected, s_hidden)
    got = chunked_loss(s_hidden, s_head, labels, teacher_hidden=t_hidden, teacher_head=t_head, lambda_kl=0.3,
                          temperature=2.0, kl_vocab=kl_vocab, chunk_tokens=chunk_tokens)
    (grad_got,) = torch.autograd.grad(got.loss, s_hidden)

    assert got.tokens == int((labels[..., 1:] != -100).sum()) == 11
    torch.testing.assert_close(got.loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_got, grad_expected, rtol=1e-4, atol=1e-7)
    assert t_head.weight.grad is None  # the teacher gets no gradient


def test_backward_keeps_no_vocabulary_sized_logits_and_never_runs_the_head_again():
    """The fused loss computes each chunk's gradient in its forward pass: what it keeps for backward is
    one hidden-state-sized gradient, and backward runs no lm_head product (a checkpointed chunk would
    recompute its logits; the full-logits loss keeps them, as the control shows)."""
    torch.manual_seed(0)
    tokens, vocab = 120, 1000
    s_head, t_head = torch.nn.Linear(8, vocab, bias=False), torch.nn.Linear(8, vocab, bias=False)
    s_head.requires_grad_(False)  # frozen, as lm_head is under LoRA all-linear (a trainable head adds its grad)
    s_hidden, t_hidden = torch.randn(1, tokens + 1, 8, requires_grad=True), torch.randn(1, tokens + 1, 8)
    labels = torch.randint(0, vocab, (1, tokens + 1))
    head_calls = []
    s_head.register_forward_hook(lambda *_: head_calls.append(1))

    loss = chunked_loss(s_hidden, s_head, labels, teacher_hidden=t_hidden, teacher_head=t_head,
                        lambda_kl=0.5, chunk_tokens=32).loss
    kept = sum(t.numel() for t in loss.grad_fn.saved_tensors)
    assert len(head_calls) == 4  # 120 positions in chunks of 32
    assert kept == tokens * 8  # the hidden states' gradient, nothing vocabulary-sized
    loss.backward()
    assert len(head_calls) == 4  # backward ran the head no more

    sizes = []  # control: the full-logits loss keeps vocabulary-sized tensors for its backward
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        torch.nn.functional.cross_entropy(s_head(s_hidden[0, :-1]), labels[0, 1:])
    assert sum(sizes) >= tokens * vocab


def test_padding_free_and_padded_batches_give_the_same_ce_and_kl(pair, features):
    """The teacher sees a flattened row exactly as the student does: restarting position_ids, no cache,
    no attention across examples (else its KL would differ from the padded batch's).

    As in training, the student's config has the cache off (load_model(for_training=True)) and the
    teacher's has it on; the batch carries no ``use_cache``, so the teacher call must turn it off itself.
    """
    student, teacher, tokenizer = pair
    assert teacher.config.use_cache
    results = {}
    student.config.use_cache = False
    try:
        for strategy in ("padding_free", "length_grouped"):
            batch = make_collator(tokenizer, student, strategy=strategy)[0](features)
            batch.pop("use_cache", None)
            with torch.no_grad():
                results[strategy] = model_loss(student, batch, teacher=teacher, lambda_kl=0.5, chunk_tokens=16)
    finally:
        student.config.use_cache = True
    flat, padded = results["padding_free"], results["length_grouped"]
    assert flat.tokens == padded.tokens > 100
    torch.testing.assert_close(flat.ce_sum, padded.ce_sum, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(flat.kl_sum, padded.kl_sum, rtol=1e-4, atol=1e-3)
    assert float(flat.kl_sum) / flat.tokens > 0.05  # two different models: a KL worth matching


def test_a_teacher_identical_to_the_student_has_zero_kl(pair, features):
    student, _, tokenizer = pair
    batch = make_collator(tokenizer, student, strategy="padding_free")[0](features)
    with torch.no_grad():
        parts = model_loss(student, batch, teacher=student, lambda_kl=1.0, temperature=2.0)
    assert abs(float(parts.kl_sum)) < 1e-4 and abs(float(parts.loss)) < 1e-6


@pytest.mark.parametrize("strategy", ["padding_free", "length_grouped"])
def test_chunked_sft_loss_and_kd_at_lambda_zero_equal_the_stock_loss(pair, features, strategy, tmp_path):
    """One loss for SFT and distillation: the chunked CE (default SFT) and KD at λ = 0 give the stock
    full-logits loss and its gradient, on padded and padding-free batches alike."""
    student, teacher, tokenizer = pair
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    stock = SFTTrainer(model=student, args=args, loss_chunk_tokens=0)  # transformers' own causal-LM loss
    chunked = SFTTrainer(model=student, args=args, loss_chunk_tokens=16)  # what the SFT script trains with
    kd = KDTrainer(model=student, args=args, teacher_model=teacher, lambda_kl=0.0, kl_vocab=len(tokenizer),
                   kd_chunk_tokens=16)
    assert stock.uses_stock_loss and not chunked.uses_stock_loss
    batch = make_collator(tokenizer, student, strategy=strategy)[0](features)
    n = 3 * trained_count(batch)  # as under gradient accumulation: the tokens of all 3 micro-batches
    student.train()  # the training path (the teacher is skipped at λ = 0)
    try:
        losses, grads = [], []
        for trainer in (stock, chunked, kd):
            student.zero_grad()
            loss = trainer.compute_loss(student, dict(batch), num_items_in_batch=n)
            loss.backward()
            losses.append(loss.detach())
            grads.append(student.model.layers[0].self_attn.q_proj.weight.grad.clone())
    finally:
        student.zero_grad()
        student.eval()
    for got, grad in zip(losses[1:], grads[1:]):
        torch.testing.assert_close(got, losses[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, grads[0], rtol=1e-4, atol=1e-7)
    assert not kd._has_kl["train"]  # the teacher did not run


def test_tokenizer_mismatches_are_named(pair, tiny_model_dir):
    _, _, tokenizer = pair
    assert tokenizer_mismatch(tokenizer, tokenizer) is None

    extra = load_tokenizer(tiny_model_dir, padding_side="right")
    extra.add_tokens(["<extra_token>"])
    assert "1 only in the teacher, e.g. '<extra_token>'" in tokenizer_mismatch(tokenizer, extra)

    assert "vocabularies differ" in tokenizer_mismatch(tokenizer, _small_bpe_tokenizer())

    other_eos = load_tokenizer(tiny_model_dir, padding_side="right")
    other_eos.eos_token = "<｜User｜>"  # same vocabulary, another EOS id
    assert tokenizer_mismatch(tokenizer, other_eos).startswith("eos_token_id differs")


def _small_bpe_tokenizer():
    """A tokenizer with another vocabulary (a 400-token BPE trained here), as another model family would have."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    texts = ["肺炎的常见症状包括咳嗽、发热和胸痛。", "高血压患者应低盐饮食。"] * 20
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, show_progress=False, special_tokens=[EOS_TOKEN]))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN)


# ----------------------------------------------------------------------------- the script

def _train(tiny_model_dir, teacher_dir, out, lambda_kl) -> tuple[str, list[dict]]:
    """The real script; returns its output and its log history."""
    args = ["--model_path", tiny_model_dir, "--teacher_model_path", teacher_dir, "--use_teacher_logits",
            "--lambda_kl", lambda_kl, "--train_file", TRAIN, "--val_file", VAL, "--output_dir", out,
            "--max_steps", 4, "--eval_steps", 2, "--save_steps", 2, "--logging_steps", 1,
            "--per_device_train_batch_size", 4, "--gradient_accumulation_steps", 1, "--learning_rate", 3e-3,
            "--max_length", 256, "--kd_chunk_tokens", 64, "--seed", 7,
            "--no_use_4bit", "--no_gradient_checkpointing"]  # the SFT tests cover those; the teacher stays 4-bit
    proc = run_script(SCRIPT, *args, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, [json.loads(line) for line in (out / "training_logs/log_history.jsonl").read_text().splitlines()]


def test_kl_to_the_teacher_falls_faster_with_lambda_one(tiny_model_dir, teacher_dir, tmp_path):
    """Both runs start from the same student (same seed; LoRA starts as the identity, so the same initial KL), train
    4 steps on the same batches against the same 4-bit teacher (the default), and evaluate on held-out data at
    steps 2 and 4."""
    stdout, kd = _train(tiny_model_dir, teacher_dir, tmp_path / "kd", 1.0)
    _, sft = _train(tiny_model_dir, teacher_dir, tmp_path / "sft", 0.0)
    assert "token-level: loss = 0·CE + 1·1²·KL(teacher ‖ student)" in stdout
    loaded = [line for line in stdout.splitlines() if line.startswith("[model] loaded")]
    assert teacher_dir.name in loaded[0] and "4-bit NF4" in loaded[0]  # the teacher, first, in 4-bit (default)
    assert tiny_model_dir.name in loaded[1] and "4-bit" not in loaded[1]  # the student (--no_use_4bit)

    kd_eval = [h["eval_kl_loss"] for h in kd if "eval_kl_loss" in h]
    sft_eval = [h["eval_kl_loss"] for h in sft if "eval_kl_loss" in h]
    assert len(kd_eval) == len(sft_eval) == 2
    assert kd_eval[-1] < kd_eval[0]
    print(f"eval_kl_loss at steps 2, 4: lambda_kl=1 {kd_eval}, lambda_kl=0 {sft_eval}")
    assert kd_eval[-1] < sft_eval[-1] and kd_eval[0] < sft_eval[0], (kd_eval, sft_eval)
    # λ = 1: the logged training loss is the KL alone; λ = 0: the CE alone.
    kd_train = [h for h in kd if "loss" in h]
    assert all(h["loss"] == pytest.approx(h["kl_loss"], abs=1e-3) for h in kd_train)
    assert all(h["loss"] == pytest.approx(h["ce_loss"], abs=1e-3) and "kl_loss" not in h
               for h in sft if "loss" in h)
    for folder in ("best_model", "final_model"):
        assert (tmp_path / "kd" / folder / "adapter_model.safetensors").stat().st_size > 0
    config = json.loads((tmp_path / "kd/training_logs/run_info.json").read_text())
    assert "lambda_kl" in json.dumps(config)


def test_a_teacher_with_another_tokenizer_is_refused_before_training(tiny_model_dir, tmp_path):
    teacher = tmp_path / "teacher_extra_token"
    shutil.copytree(tiny_model_dir, teacher)
    tokenizer = load_tokenizer(teacher, padding_side="right")
    tokenizer.add_tokens(["<extra_token>"])
    tokenizer.save_pretrained(teacher)
    out = tmp_path / "out"

    proc = run_script(SCRIPT, "--model_path", tiny_model_dir, "--teacher_model_path", teacher, "--use_teacher_logits",
                      "--train_file", TRAIN, "--val_file", VAL, "--output_dir", out)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "tokenizer differs" in lines[0]
    assert "<extra_token>" in lines[0] and "--use_teacher_logits" in lines[0]
    assert "[model] loaded" not in proc.stdout and not out.exists()


def test_an_earlier_run_in_the_output_folder_is_refused_before_the_teacher_loads(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    (out / "best_model").mkdir(parents=True)  # an earlier run's result
    proc = run_script(SCRIPT, "--model_path", tiny_model_dir, "--teacher_model_path", tiny_model_dir,
                      "--use_teacher_logits", "--train_file", TRAIN, "--val_file", VAL, "--output_dir", out)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds an earlier run (pass --resume to continue it" in lines[0], lines
    assert "[model] loaded" not in proc.stdout


@pytest.mark.parametrize("overrides, message", [
    ({"loss_chunk_tokens": 0}, "--loss_chunk_tokens 0 with --use_teacher_logits: the stock loss has no teacher term"),
    ({"loss_chunk_tokens": 512}, "chunks by --kd_chunk_tokens (pass --kd_chunk_tokens 512)"),
    ({"fsdp_config": "configs/fsdp2_lora.json"}, "--fsdp_config with --use_teacher_logits: the student would be sharded"),
])
def test_token_level_refuses_what_cannot_carry_a_teacher(overrides, message):
    cfg = script_config(SCRIPT)(use_teacher_logits=True, **overrides)
    with pytest.raises(UserError) as err:
        check_token_level_run(cfg)
    assert message in str(err.value)
