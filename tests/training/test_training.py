"""QLoRA SFT (scripts/train_stf_r1_train_val.py, r1_sft/training/run.py) on the offline tiny model.

Unit tests check the encoding against the tokenizer and chat template directly; integration tests
run the real script: a dry run, a short training run (eval loss falls, files written), and a run
killed with SIGKILL after a checkpoint and resumed, which must equal the uninterrupted run.
"""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r1_sft.cli import UserError
from r1_sft.model.lora import setup_lora_model
from r1_sft.r1_format import build_prompt, parse_output
from r1_sft.training.checks import training_plan
from r1_sft.training.encoding import encode_dataset, load_sft_records, load_split
from r1_sft.training.outputs import complete_checkpoints
from r1_sft.training.run import run_training
from r1_sft.training.trainer import EpochSeededSampler

from conftest import REPO, run_script, sft_config, start_script

SCRIPT = "scripts/train_stf_r1_train_val.py"
TRAIN = REPO / "tests/fixtures/sft_tiny_train.jsonl"  # 24 records -> 6 steps per epoch at batch 4
VAL = REPO / "tests/fixtures/sft_tiny_val.jsonl"
# One thread: the same float summation order in every run, and no thread thrashing on a busy CPU.
ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}  # torch gives MKL the OMP thread count
MAX_STEPS = 14  # > 2 epochs: the resume test restarts inside the second epoch


def train_args(model_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["--model_path", str(model_dir), "--train_file", str(TRAIN), "--val_file", str(VAL),
            "--output_dir", str(output_dir), "--max_length", "128", "--max_steps", str(MAX_STEPS),
            "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "1", "--learning_rate", "5e-3",
            "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
            "--save_total_limit", "2", "--early_stopping_patience", "5", "--seed", "3", *extra]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from r1_sft.model.folders import load_tokenizer

    return load_tokenizer(tiny_model_dir, padding_side="right")


@pytest.fixture(scope="module")
def records():
    return load_sft_records(TRAIN)


# ----------------------------------------------------------------------------- encoding

def test_trained_tokens_are_reasoning_close_answer_eos(tokenizer, records):
    data = encode_dataset(records, tokenizer, max_length=512)
    assert len(data.dataset) == len(records) and data.skipped == 0
    for rec, ex in zip(records, data.dataset):
        parsed = parse_output(rec["output"])
        trained = [t for t, label in zip(ex["input_ids"], ex["labels"]) if label != -100]
        assert trained == [label for label in ex["labels"] if label != -100]  # labels are the ids themselves
        expected = tokenizer(f"{parsed.reasoning}\n</think>\n\n{parsed.answer}", add_special_tokens=False)["input_ids"]
        assert trained == expected + [tokenizer.eos_token_id]
        # pad == eos, yet the EOS keeps its label (a model trained without it never stops).
        assert tokenizer.pad_token_id == tokenizer.eos_token_id and ex["labels"][-1] == tokenizer.eos_token_id
        assert ex["length"] == len(ex["input_ids"])


def test_prompt_tokens_are_the_templates_generation_prompt_with_one_bos(tokenizer, records):
    data = encode_dataset(records[:4], tokenizer, max_length=512)
    for rec, ex in zip(records, data.dataset):
        n_prompt = sum(1 for label in ex["labels"] if label == -100)
        messages = [{"role": "user", "content": rec["input"]}]
        template = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert template.endswith("<｜Assistant｜><think>\n") and build_prompt(tokenizer, messages) == template
        assert ex["input_ids"][:n_prompt] == tokenizer(template, add_special_tokens=False)["input_ids"]
        assert ex["input_ids"].count(tokenizer.bos_token_id) == 1 and ex["input_ids"][0] == tokenizer.bos_token_id
        # The trained part starts right after "<think>\n": the reasoning, never a second <think>.
        assert "<think>" not in tokenizer.decode(ex["input_ids"][n_prompt:])


def test_over_length_examples_are_skipped_and_counted(tokenizer, records):
    lengths = sorted(len(ex["input_ids"]) for ex in encode_dataset(records, tokenizer, 512).dataset)
    limit = lengths[len(lengths) // 2]
    data = encode_dataset(records, tokenizer, max_length=limit)
    assert data.skipped == sum(1 for n in lengths if n > limit) > 0
    assert max(data.dataset["length"]) <= limit
    assert all(ex["labels"][-1] == tokenizer.eos_token_id for ex in data.dataset)  # no target lost its EOS

    cut = encode_dataset(records, tokenizer, max_length=limit, truncate=True)
    assert cut.skipped == 0 and cut.truncated == data.skipped and max(cut.dataset["length"]) == limit


def test_unusable_data_is_a_one_line_user_error(tmp_path, tokenizer):
    with pytest.raises(UserError, match="longer than max_length=8"):
        load_split(TRAIN, tokenizer, sft_config(max_length=8), "train")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "问题"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.jsonl: record 1: .*'output'"):
        load_sft_records(bad)
    with pytest.raises(UserError, match="file not found"):
        load_sft_records(tmp_path / "missing.jsonl")


def test_inconsistent_steps_are_refused_before_loading_anything(tmp_path):
    cfg = sft_config(model_path=str(tmp_path / "no_model"), eval_steps=20, save_steps=30)
    with pytest.raises(UserError, match="multiple of --eval_steps 20"):
        run_training(cfg)


def test_missing_model_folder_is_a_user_error(tmp_path):
    cfg = sft_config(model_path=str(tmp_path / "no_model"), train_file=str(TRAIN), val_file=str(VAL),
                      output_dir=str(tmp_path / "out"))
    with pytest.raises(UserError, match="model folder not found"):
        run_training(cfg)


# ----------------------------------------------------------------------------- model

def test_qlora_setup_quantizes_every_linear_layer_to_4bit(tiny_model_dir, tmp_path):
    import bitsandbytes as bnb

    cfg = sft_config(model_path=str(tiny_model_dir))
    model, _ = setup_lora_model(cfg, training_plan(cfg))
    lora_layers = {name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}
    targets = {name.rsplit(".", 1)[-1] for name in lora_layers}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert all(isinstance(m.base_layer, bnb.nn.Linear4bit) for m in lora_layers.values())
    assert all(m.base_layer.weight.quant_type == "nf4" for m in lora_layers.values())
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert model.peft_config["default"].base_model_name_or_path == str(tiny_model_dir)


# ----------------------------------------------------------------------------- resume machinery

def test_length_grouped_shuffle_depends_only_on_seed_and_epoch():
    from transformers.trainer_pt_utils import LengthGroupedSampler

    epoch = [0]
    lengths = list(range(5, 69))
    sampler = EpochSeededSampler(LengthGroupedSampler(4, lengths=lengths), seed=7, current_epoch=lambda: epoch[0])
    first = list(sampler)
    torch.manual_seed(123)  # the global RNG (dropout, a restored checkpoint) must not matter
    assert list(sampler) == first and sorted(first) == list(range(64))
    epoch[0] = 1
    assert list(sampler) != first


def test_only_complete_checkpoints_are_resumed_from(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]


# ----------------------------------------------------------------------------- the script

def test_dry_run_writes_encoded_examples_plans_memory_and_trains_nothing(tiny_model_dir, tmp_path, tokenizer, records):
    out = tmp_path / "run"
    proc = run_script(SCRIPT, "--model_path", tiny_model_dir, "--train_file", TRAIN, "--val_file", VAL,
                      "--output_dir", out, "--dry_run", "--gpu_memory_gb", "16", cwd=tmp_path, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "read 24 records" in proc.stdout and "skipped 0" in proc.stdout
    assert "⟦" in proc.stdout and "<｜end▁of▁sentence｜>⟧" in proc.stdout  # the trained part, EOS included
    plan_lines = [line for line in proc.stdout.splitlines() if line.startswith("[plan] ")]  # decided once, said once
    assert len(plan_lines) == 1 and "float32, attn=sdpa" in plan_lines[0], proc.stdout
    assert "--use_4bit auto: 16-bit LoRA" in plan_lines[0] and "16 GB GPU" in plan_lines[0]  # decided for that card
    rows = [json.loads(line) for line in (out / "training_logs/encoded_examples.jsonl").read_text().splitlines()]
    expected = encode_dataset(records[:5], tokenizer, max_length=2048).dataset
    assert [r["input_ids"] for r in rows] == expected["input_ids"]
    assert [r["labels"] for r in rows] == expected["labels"]
    assert not any(out.glob("checkpoint-*")) and not (out / "best_model").exists()
    # the memory plan, from config.json alone
    memory = [line for line in proc.stdout.splitlines() if line.startswith("[memory]")]
    assert memory[0].startswith("[memory] estimated peak GPU memory per device: ")
    assert any("on a 16 GB GPU: batch 4 fits; largest per-device batch at max_length" in line for line in memory)
    assert "[model] loaded" not in proc.stdout


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory) -> Path:
    """One uninterrupted training run of MAX_STEPS steps."""
    out = tmp_path_factory.mktemp("train") / "lora"
    proc = run_script(SCRIPT, *train_args(tiny_model_dir, out), cwd=tmp_path_factory.getbasetemp(), env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "training_logs/log_history.jsonl").read_text().splitlines()]


def test_training_writes_adapters_logs_and_eval_loss_falls(trained_run, tiny_model_dir):
    out = trained_run
    for name in ("best_model", "final_model", f"checkpoint-{MAX_STEPS}"):
        files = {p.name for p in (out / name).iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files, files
        assert "training_args.bin" not in files or name.startswith("checkpoint-")
        # the base's tokenizer files, byte for byte (transformers would write a 2.2x larger, 3x slower form)
        for tok in ("tokenizer.json", "tokenizer_config.json"):
            assert (out / name / tok).read_bytes() == (tiny_model_dir / tok).read_bytes(), (name, tok)
    log = read_log(out)
    evals = [h["eval_loss"] for h in log if "eval_loss" in h]
    assert len(evals) == MAX_STEPS // 2
    assert evals[-1] < evals[0] - 0.2, evals  # it learnt the think format on unseen questions
    train_logs = [h for h in log if "loss" in h]
    assert len(train_logs) == MAX_STEPS
    assert all(h["learning_rate"] >= 0 and h["tokens_per_s"] > 0 and 0 <= h["padding_fraction"] < 1
               for h in train_logs[1:])
    # The Trainer's own bookkeeping: last step saved, limit kept (the best checkpoint may be kept on top).
    steps = [int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")]
    assert MAX_STEPS in steps and len(steps) <= 3
    state = json.loads((out / f"checkpoint-{MAX_STEPS}/trainer_state.json").read_text())
    assert state["best_metric"] == pytest.approx(min(evals))
    best_ckpt = Path(state["best_model_checkpoint"]).name
    assert load_file(out / "best_model/adapter_model.safetensors").keys() == \
        load_file(out / best_ckpt / "adapter_model.safetensors").keys()
    best, from_ckpt = (load_file(p / "adapter_model.safetensors") for p in (out / "best_model", out / best_ckpt))
    assert all(torch.equal(best[k], from_ckpt[k]) for k in best)
    assert (out / "training_logs/loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((out / "training_logs/run_info.json").read_text())
    assert info["config"]["max_steps"] == MAX_STEPS and info["versions"]["peft"]


def test_rerun_without_resume_refuses_to_mix_runs(trained_run, tiny_model_dir):
    cfg = sft_config(model_path=str(tiny_model_dir), train_file=str(TRAIN), val_file=str(VAL),
                      output_dir=str(trained_run), max_length=128)
    with pytest.raises(UserError, match="--resume to continue it, --overwrite_output_dir"):
        run_training(cfg)


def test_killed_run_resumes_to_the_same_adapter(trained_run, tiny_model_dir, tmp_path):
    out = tmp_path / "lora"
    run = start_script(SCRIPT, *train_args(tiny_model_dir, out), cwd=tmp_path, env=ENV)
    # Kill (SIGKILL, no clean-up) as soon as a checkpoint inside the second epoch is complete.
    marker = out / "checkpoint-8" / "trainer_state.json"
    deadline = time.monotonic() + 600
    while not marker.exists() and run.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    run.kill()
    assert run.wait().returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "final_model").exists()

    resumed = run_script(SCRIPT, *train_args(tiny_model_dir, out, "--resume"), cwd=tmp_path, env=ENV)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "[resume] continuing from" in resumed.stdout
    for name in ("final_model", "best_model"):
        a = load_file(trained_run / name / "adapter_model.safetensors")
        b = load_file(out / name / "adapter_model.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a), name
    final_a, final_b = (json.loads((run / f"checkpoint-{MAX_STEPS}/trainer_state.json").read_text())
                        for run in (trained_run, out))
    assert final_b["global_step"] == final_a["global_step"] == MAX_STEPS
    evals_a, evals_b = ([(h["step"], round(h["eval_loss"], 5)) for h in read_log(run) if "eval_loss" in h]
                        for run in (trained_run, out))
    assert evals_b == evals_a


# ----------------------------------------------------------------------------- 4-bit kernels by CPU

def test_4bit_training_keeps_one_kernel_on_a_cpu_with_avx512_bf16(tiny_model_dir, monkeypatch):
    """Forces bitsandbytes' AVX512-BF16 path on any CPU: train -> evaluate -> train stays on one kernel.

    bitsandbytes 0.50 repacks a Linear4bit's weights for its CPU inference kernel on the first eval-mode,
    no-grad forward when the module says ``support_avx512bf16_for_cpu``. The spy stands in for the
    repacking (so machines without the feature never run that kernel) and records whether it was asked for.
    """
    import bitsandbytes.nn.modules as bnb_modules

    from r1_sft.model.loading import load_model

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)  # what such a CPU reports
    repacked = []

    def spy(weight, quant_state):
        repacked.append(weight.shape)
        return weight, quant_state

    monkeypatch.setattr(bnb_modules, "_convert_weight_packed_for_cpu", spy)
    cfg = sft_config(model_path=str(tiny_model_dir), use_4bit=True, gradient_checkpointing=False,
                      lora_target_modules="q_proj,v_proj")
    model, tokenizer = setup_lora_model(cfg, training_plan(cfg))
    linear4bit = [m for m in model.modules() if isinstance(m, bnb_modules.Linear4bit)]
    assert linear4bit and not any(m.support_avx512bf16_for_cpu for m in linear4bit)
    ids = torch.tensor([tokenizer("头痛三天，伴低热。")["input_ids"]])
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    model.eval()  # the Trainer's evaluation
    with torch.no_grad():
        model(input_ids=ids, labels=ids)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    assert repacked == [], "a training model must not switch to the CPU inference packing"

    # Control: the path is live in this test. Inference-only loading may repack (it is faster there).
    inference, _ = load_model(tiny_model_dir, use_4bit=True)
    with torch.no_grad():
        inference(input_ids=ids)
    assert len(repacked) == len([m for m in inference.modules() if isinstance(m, bnb_modules.Linear4bit)])


def test_training_from_an_adapter_continues_it_on_its_real_base(trained_run, tiny_model_dir, tmp_path):
    """--model_path pointing at an adapter: the new adapter's config names the real base, and the chat loads it."""
    out = tmp_path / "continued"
    proc = run_script(SCRIPT, "--model_path", trained_run / "best_model", "--train_file", TRAIN, "--val_file", VAL,
                      "--output_dir", out, "--max_length", "128", "--max_steps", "1", "--eval_steps", "1",
                      "--save_steps", "1", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
                      "--warmup_ratio", "0", env=ENV)  # no warmup: the one step has a learning rate
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "continuing adapter" in proc.stdout
    config = json.loads((out / "best_model/adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).name == tiny_model_dir.name
    assert not (Path(config["base_model_name_or_path"]) / "adapter_config.json").exists()
    before = load_file(trained_run / "best_model/adapter_model.safetensors")
    after = load_file(out / "best_model/adapter_model.safetensors")
    assert before.keys() == after.keys()  # the same adapter (rank, targets), trained further
    assert any(not torch.equal(before[k], after[k]) for k in before)
    chat = run_script("scripts/chat_with_model.py", "--model", out / "best_model", "--once", "头痛怎么办？",
                      "--max_new_tokens", "8", "--conversations_dir", tmp_path / "conv", env=ENV)
    assert chat.returncode == 0, chat.stdout[-2000:] + chat.stderr[-2000:]
    assert "LoRA adapter" in chat.stdout and tiny_model_dir.name in chat.stdout


def test_final_model_is_the_last_step_even_when_save_total_limit_deletes_it(tiny_model_dir, tmp_path):
    """--save_total_limit 1: the Trainer loads the best adapter, then deletes the last checkpoint.

    final_model/ must still be the last step's adapter (not the best one loaded into memory): the
    same run with a larger limit keeps checkpoint-2 on disk to compare with.
    """
    def run(limit: str) -> Path:
        out = tmp_path / f"limit{limit}"
        # Step 1 has learning rate 0 (warmup), step 2 a large one: eval_loss is best at step 1, not at the last.
        proc = run_script(SCRIPT, "--model_path", tiny_model_dir, "--train_file", TRAIN, "--val_file", VAL,
                          "--output_dir", out, "--max_length", "128", "--max_steps", "2", "--eval_steps", "1",
                          "--save_steps", "1", "--learning_rate", "0.5", "--per_device_train_batch_size", "2",
                          "--gradient_accumulation_steps", "1", "--save_total_limit", limit, "--seed", "3", env=ENV)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return out

    limited, kept = run("1"), run("2")
    evals = [(h["step"], h["eval_loss"]) for h in read_log(limited) if "eval_loss" in h]
    assert min(evals, key=lambda e: e[1])[0] == 1, evals  # the premise: best (step 1) != last (step 2)
    assert not (limited / "checkpoint-2").exists() and (kept / "checkpoint-2").exists()
    final = load_file(limited / "final_model/adapter_model.safetensors")
    last = load_file(kept / "checkpoint-2/adapter_model.safetensors")
    best = load_file(limited / "best_model/adapter_model.safetensors")
    assert final.keys() == last.keys() == best.keys()
    assert all(torch.equal(final[k], last[k]) for k in final)
    assert any(not torch.equal(final[k], best[k]) for k in final)
    assert not (limited / "final_model/training_args.bin").exists()
    assert (limited / "final_model/tokenizer.json").is_file()


