"""GRPO on a toy multiple-choice task the stand-in can learn (after a short SFT warm-up built here): the
project's own accuracy reward teaches it, and `torchrun --nproc_per_node 2` (gloo on CPU) gives the first
step of one process with the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, WARM_CLIENT, warm_client_env

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # torch gives MKL the OMP thread count


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


TOY_THINK = "想"  # the warm-up's one-character reasoning


def _toy_questions(n: int, start: int = 0) -> list[dict]:
    """Two-option questions whose answer is always A ("对"): a task the stand-in can learn."""
    return [{"id": f"toy{i}", "question": f"第{i}题：以下哪一项是对的？", "options": {"A": "对", "B": "错"},
             "answer": "A"} for i in range(start, start + n)]


@pytest.fixture(scope="module")
def warm_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The stand-in after a short SFT warm-up on the toy questions' GRPO prompts: a one-character think, then
    "答案：A" or "答案：B" equally often, so its sampled answers are right about half the time and the
    project's accuracy reward differs inside a group. Embeddings frozen, loss on the target tokens only."""
    import torch
    from transformers import AutoModelForCausalLM

    from r1_sft.data.benchmarks import load_mcq
    from r1_sft.model.folders import load_tokenizer
    from r1_sft.rl.prompts import prompt_dataset

    tmp = tmp_path_factory.mktemp("toy")
    torch.manual_seed(0)
    tokenizer = load_tokenizer(tiny_model_dir)
    records, _ = load_mcq(_write_jsonl(tmp / "toy.jsonl", _toy_questions(4)))
    rows = []
    for prompt in prompt_dataset(records, tokenizer)["prompt"]:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for letter in "AB":
            target = tokenizer(f"{TOY_THINK}\n</think>\n\n答案：{letter}", add_special_tokens=False)["input_ids"]
            rows.append((prompt_ids, target + [tokenizer.eos_token_id]))
    width = max(len(p) + len(t) for p, t in rows)
    ids = torch.full((len(rows), width), tokenizer.eos_token_id)
    labels, mask = torch.full_like(ids, -100), torch.zeros_like(ids)
    for i, (p, t) in enumerate(rows):
        ids[i, :len(p) + len(t)] = torch.tensor(p + t)
        labels[i, len(p):len(p) + len(t)] = torch.tensor(t)
        mask[i, :len(p) + len(t)] = 1
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.model.embed_tokens.weight.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    keep = labels[:, 1:] != -100
    for _ in range(20):
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[keep]), labels[:, 1:][keep])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.2, loss.item()  # the format is learnt; A vs B stays a coin toss (ln 2 / 8 tokens = 0.09)
    out = tmp / "warm"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_the_accuracy_reward_teaches_the_toy_task(warm_model, tmp_path, one_thread):
    """The project's own rewards, not a rigged one: groups disagree (non-zero advantages) and accuracy rises."""
    from r1_sft.rl.config import GrpoConfig
    from r1_sft.rl.grpo import run_grpo

    train = _write_jsonl(tmp_path / "train.jsonl", _toy_questions(8))
    val = _write_jsonl(tmp_path / "val.jsonl", _toy_questions(2, start=100))
    cfg = GrpoConfig(model_path=str(warm_model), train_file=str(train), val_file=str(val),
                     output_dir=str(tmp_path / "grpo"), use_4bit=False, lora_r=8, lora_alpha=16, learning_rate=3e-3,
                     num_train_epochs=1.0, max_steps=6, per_device_train_batch_size=16, gradient_accumulation_steps=1,
                     num_generations=8, max_completion_length=12, beta=0.0, loss_type="dapo", eval_steps=100,
                     save_steps=100, seed=0, gradient_checkpointing=False, precision="fp32")
    result = run_grpo(cfg)
    steps = [h for h in result.log_history if "reward" in h]
    accuracy = [h["rewards/accuracy_reward/mean"] for h in steps]
    print("accuracy per step:", accuracy, "equal-reward groups:", [h["frac_reward_zero_std"] for h in steps])
    assert len(accuracy) == 6 and steps[0]["frac_reward_zero_std"] < 1 and steps[0]["grad_norm"] > 0
    assert steps[0]["rewards/format_reward/mean"] > 0.9  # the warm-up's format holds: the signal is the letter
    first, last = sum(accuracy[:2]) / 2, sum(accuracy[-3:]) / 3
    assert last > first + 0.15 and last > 0.85, accuracy


FIRST_STEP_KEYS = ("reward", "reward_std", "rewards/accuracy_reward/mean", "rewards/format_reward/mean",
                   "rewards/overlong_penalty/mean", "completions/mean_length", "frac_reward_zero_std", "loss",
                   "entropy")


def _toy_files(tmp: Path) -> tuple[Path, Path]:
    # half the questions answered B: near-greedy rollouts all say A, so the processes' questions score apart
    toy = [{**q, "answer": "AB"[i % 2]} for i, q in enumerate(_toy_questions(4))]
    return (_write_jsonl(tmp / "train.jsonl", toy), _write_jsonl(tmp / "val.jsonl", _toy_questions(2, start=100)))


def _first_step_flags(warm_model: Path, tmp: Path, per_device: int) -> dict:
    train, val = _toy_files(tmp)
    return dict(model_path=str(warm_model), train_file=str(train), val_file=str(val), output_dir=str(tmp / "grpo"),
                max_steps=1, per_device_train_batch_size=per_device, gradient_accumulation_steps=1,
                num_generations=4, max_completion_length=12, temperature=0.01, precision="fp32",
                gradient_checkpointing=False, lora_r=8)


def _command_line(flags: dict) -> list[str]:
    line = []
    for name, value in flags.items():
        line += ([f"--{name}" if value else f"--no_{name}"] if isinstance(value, bool) else [f"--{name}", str(value)])
    return line


def test_two_processes_give_the_first_step_of_one(warm_model, tmp_path, one_thread):
    """Same global batch (16 completions = all 4 questions x 4): 1 process x 16 vs 2 processes x 8, rewards
    gathered across processes. Rollouts at temperature 0.01 are the same text whatever the process count;
    sampled ones cannot be compared, as TRL seeds each process apart (seed + rank)."""
    from r1_sft.rl.grpo import run_grpo

    from conftest import script_config

    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    # one process in this one, with the script's own defaults for every other flag
    result = run_grpo(script_config("scripts/train_grpo.py")(**_first_step_flags(warm_model, tmp_path / "one", 16)))
    one = next(h for h in result.log_history if "reward" in h)
    flags = _command_line(_first_step_flags(warm_model, tmp_path / "two", 8))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           WARM_CLIENT, REPO / "scripts" / "train_grpo.py", *flags], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1", **ONE_THREAD,
                                                       **warm_client_env()})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    history = (tmp_path / "two" / "grpo" / "training_logs" / "log_history.jsonl").read_text(encoding="utf-8")
    two = next(h for h in map(json.loads, history.splitlines()) if "reward" in h)
    print({k: (one[k], two[k]) for k in FIRST_STEP_KEYS})
    for key in FIRST_STEP_KEYS:
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    assert 0 < one["rewards/accuracy_reward/mean"] < 1 and one["reward_std"] > 0  # questions differ
    plan = [line for line in proc.stdout.splitlines() if line.startswith("[grpo] ") and "per step" in line]
    assert len(plan) == 1 and "x 2 process(es)" in plan[0] and "4 question(s) x 4 completions" in plan[0]
    assert "DDP x 2" in proc.stdout
