"""GRPO after SFT (scripts/train_grpo.py, r1_sft/rl/grpo.py) on the offline stand-in: it runs, it learns, its
output loads where SFT's does, and bad input stops it before any model loads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1_sft.cli import UserError

from conftest import REPO, run_script

SAMPLE = REPO / "mcq_data" / "medical_mcq.jsonl"
CMB = REPO / "tests" / "fixtures" / "benchmarks" / "cmb_exam.json"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # torch gives MKL the OMP thread count
COMMA = 3837  # "，" in R1's vocabulary: the stand-in samples it in about 6% of its tokens


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _sample(n: int) -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()[:n]]


def _config(model_path, tmp_path, **overrides):
    from r1_sft.rl.config import GrpoConfig

    settings = dict(model_path=str(model_path), train_file=str(SAMPLE), val_file=str(CMB),
                    output_dir=str(tmp_path / "grpo"), use_4bit=False, lora_r=8, lora_alpha=16, learning_rate=2e-2,
                    num_train_epochs=1.0, max_steps=4, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                    num_generations=2, max_completion_length=8, beta=0.0, loss_type="dapo", eval_steps=100,
                    save_steps=100, seed=0)
    settings.update(overrides)
    return GrpoConfig(**settings)


@pytest.fixture(scope="module")
def grpo_run(tiny_model_dir, tmp_path_factory):
    """The issue's end-to-end run: a 6-question file, refused with the defaults (8 questions per step) before any
    model loads, then 4 steps with flags that fit (2 questions per step), small groups, KL on."""
    tmp = tmp_path_factory.mktemp("grpo_run")
    val = _write_jsonl(tmp / "val.jsonl", _sample(2))
    six = _write_jsonl(tmp / "six.jsonl", _sample(8)[2:])
    out = tmp / "grpo"
    refused = run_script("scripts/train_grpo.py", "--model_path", tiny_model_dir, "--train_file", six,
                         "--val_file", val, "--output_dir", out, env=ONE_THREAD, timeout=300)
    proc = run_script("scripts/train_grpo.py", "--model_path", tiny_model_dir, "--train_file", six,
                      "--val_file", val, "--output_dir", out, "--max_steps", "4", "--per_device_train_batch_size", "4",
                      "--gradient_accumulation_steps", "1", "--num_generations", "2", "--max_completion_length", "16",
                      "--eval_steps", "2", "--save_steps", "2", "--beta", "0.04", env=ONE_THREAD, timeout=900)
    return out, val, proc, refused


def test_a_file_too_small_for_one_step_is_one_line_naming_the_flags(grpo_run):
    _, _, _, refused = grpo_run
    assert refused.returncode == 2 and "\n" not in refused.stderr.strip(), refused.stderr[-2000:]
    assert "[model]" not in refused.stdout and "Traceback" not in refused.stderr
    message = refused.stderr.strip()
    assert "6 question(s), fewer than the 8 one step takes" in message
    for flag in ("--per_device_train_batch_size 8", "--gradient_accumulation_steps 8", "--num_generations 8",
                 "lower --gradient_accumulation_steps to 6"):
        assert flag in message, flag


def test_four_steps_write_what_sft_writes_and_log_every_reward(grpo_run, tiny_model_dir):
    out, _, proc, _ = grpo_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("best_model", "final_model", "checkpoint-2", "checkpoint-4"):
        assert (out / name / "adapter_model.safetensors").is_file(), name
        assert (out / name / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes(), name
    assert not (out / "best_model" / "ref").exists()  # TRL's frozen reference copy is not part of the result
    config = json.loads((out / "final_model" / "adapter_config.json").read_text(encoding="utf-8"))
    assert Path(config["base_model_name_or_path"]).resolve() == Path(tiny_model_dir).resolve()
    logs = out / "training_logs"
    assert (logs / "reward_curve.png").is_file() and (logs / "run_info.json").is_file()
    history = [json.loads(line) for line in (logs / "log_history.jsonl").read_text(encoding="utf-8").splitlines()]
    train = [h for h in history if "reward" in h]
    assert [h["step"] for h in train] == [1, 2, 3, 4]  # every step
    for h in train:
        for name in ("accuracy_reward", "format_reward", "overlong_penalty"):
            assert f"rewards/{name}/mean" in h and f"rewards/{name}/std" in h
        for key in ("reward_std", "completions/mean_length", "completions/clipped_ratio", "kl", "frac_reward_zero_std"):
            assert key in h, key
        # the soft over-length penalty: -1 for each completion cut at the limit, less for those near it
        assert -1 <= h["rewards/overlong_penalty/mean"] <= -h["completions/clipped_ratio"] + 1e-9
    assert [h["step"] for h in history if "eval_rewards/accuracy_reward/mean" in h] == [2, 4]
    # the plan line comes before any model loads: questions per step, steps per epoch, epochs, validation cost
    plan = next(line for line in proc.stdout.splitlines() if line.startswith("[grpo] "))
    assert proc.stdout.index(plan) < proc.stdout.index("[model]")
    assert "2 question(s) x 2 completions per step" in plan and "6 questions = 3 step(s) per epoch" in plan
    assert "4 steps = 1.3 epoch(s)" in plan and "on 2 of 2 questions x 2 = 4 completions" in plan
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[train] step")]
    assert len(lines) == 4 and all(k in lines[-1] for k in ("reward ", "accuracy ", "format ", "cut ", "kl "))
    assert "[eval] step 2/4" in proc.stdout and "best validation accuracy_reward" in proc.stdout
    assert "FutureWarning" not in proc.stderr


def test_the_adapter_loads_in_mcq_evaluation_and_chat(grpo_run, tiny_model_dir, tmp_path):
    out, val, _, _ = grpo_run
    proc = run_script("scripts/evaluate_model.py", "--task", "mcq", "--data", val, "--base_model", tiny_model_dir,
                      "--adapter", out / "final_model", "--adapter2", out / "best_model", "--num_samples", "2",
                      "--n_samples", "1", "--max_new_tokens", "8", "--output_dir", tmp_path, "--run_name", "loop",
                      env=ONE_THREAD, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "loop" / "summary.json").read_text(encoding="utf-8"))
    assert list(summary["models"]) == ["base", "tuned", "tuned2"]  # base vs SFT vs GRPO in one report
    assert all("accuracy" in block for block in summary["models"].values())
    assert "tuned2" in (tmp_path / "loop" / "report.md").read_text(encoding="utf-8")
    chat = run_script("scripts/chat_with_model.py", "--model", out / "best_model", "--once", "头痛怎么办？",
                      "--max_new_tokens", "6", "--temperature", "0", cwd=tmp_path, env=ONE_THREAD, timeout=300)
    assert chat.returncode == 0, chat.stderr[-3000:]


def test_resume_continues_from_the_newest_checkpoint(grpo_run, tiny_model_dir, tmp_path):
    import shutil

    out, val, _, _ = grpo_run
    copy = tmp_path / "grpo"
    shutil.copytree(out, copy)
    proc = run_script("scripts/train_grpo.py", "--model_path", tiny_model_dir, "--train_file", out.parent / "six.jsonl",
                      "--val_file", val, "--output_dir", copy, "--max_steps", "6", "--per_device_train_batch_size", "4",
                      "--gradient_accumulation_steps", "1", "--num_generations", "2", "--max_completion_length", "16",
                      "--eval_steps", "2", "--save_steps", "2", "--beta", "0.04", "--resume", env=ONE_THREAD,
                      timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[resume] continuing from" in proc.stdout and "checkpoint-4" in proc.stdout
    steps = [line.split()[2] for line in proc.stdout.splitlines() if line.startswith("[train] step")]
    assert steps == ["5/6", "6/6"]  # steps 1-4 are not redone
    assert (copy / "checkpoint-6" / "adapter_model.safetensors").is_file()
    refused = run_script("scripts/train_grpo.py", "--model_path", tiny_model_dir, "--train_file", SAMPLE,
                         "--val_file", val, "--output_dir", copy, env=ONE_THREAD, timeout=300)
    assert refused.returncode == 2 and "holds an earlier run" in refused.stderr


@pytest.fixture(scope="module")
def sft_adapter(random_adapter) -> Path:
    """An SFT-like adapter on the stand-in (random non-zero LoRA on q/v, rank 4)."""
    return random_adapter


def comma_reward(completion_ids, **_):
    """A rigged reward the stand-in can learn in a few steps: the share of "，" in the completion."""
    return [sum(t == COMMA for t in ids) / max(1, len(ids)) for ids in completion_ids]


def test_continues_an_sft_adapter_and_validates_on_a_bounded_subset(sft_adapter, tiny_model_dir, tmp_path,
                                                                    one_thread):
    """Continuing SFT's adapter; and each evaluation generates at most --eval_questions x --num_generations_eval
    completions, on the same seeded subset of the validation file every time."""
    from safetensors.torch import load_file

    from r1_sft.rl.grpo import run_grpo

    val_prompts: dict[int, list[str]] = {}

    def counting_reward(prompts, completion_ids, trainer_state, **_):
        evaluated = [p for p in prompts if p in cmb_prompts]  # the training questions come from another file
        if evaluated:
            val_prompts.setdefault(trainer_state.global_step, []).extend(evaluated)
        return comma_reward(completion_ids)

    from r1_sft.data.benchmarks import load_mcq
    from r1_sft.model.folders import load_tokenizer
    from r1_sft.rl.prompts import prompt_dataset

    cmb_prompts = set(prompt_dataset(load_mcq(CMB)[0], load_tokenizer(tiny_model_dir))["prompt"])
    result = run_grpo(_config(sft_adapter, tmp_path, max_steps=2, eval_steps=1, save_steps=1, eval_questions=3,
                              num_generations_eval=2), reward_funcs=[counting_reward])
    assert sorted(val_prompts) == [1, 2]  # evaluated after steps 1 and 2
    assert [len(v) for v in val_prompts.values()] == [6, 6]  # 3 questions x 2 completions, not 6 x 4
    assert set(val_prompts[1]) == set(val_prompts[2]) and len(set(val_prompts[1])) == 3  # one fixed subset
    config = json.loads((result.final_model / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]  # its own, not --lora_r 8
    assert Path(config["base_model_name_or_path"]).resolve() == Path(tiny_model_dir).resolve()
    before = load_file(sft_adapter / "adapter_model.safetensors")
    after = load_file(result.final_model / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    # started from the SFT weights (random, far from a fresh adapter's zero B) and moved a little
    changes = [float((after[k] - before[k]).abs().max()) for k in before]
    assert 0 < max(changes) < 0.5 * max(float(v.abs().max()) for v in before.values())


def test_prompts_are_the_evaluation_prompts_with_one_bos(tiny_model_dir):
    from r1_sft.data.benchmarks import load_mcq
    from r1_sft.evaluation.questions import load_items
    from r1_sft.model.folders import load_tokenizer
    from r1_sft.r1_format import encode_prompt
    from r1_sft.rl.prompts import prompt_dataset

    tokenizer = load_tokenizer(tiny_model_dir)
    records, _ = load_mcq(CMB)
    data = prompt_dataset(records, tokenizer)
    items = load_items(CMB, "mcq")
    for row, item in zip(data, items):
        ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]  # how R1GRPOTrainer tokenizes
        assert ids == encode_prompt(tokenizer, [{"role": "user", "content": item.user_text}])
        assert ids.count(tokenizer.bos_token_id) <= 1 and row["prompt"].endswith("<｜Assistant｜><think>\n")
        assert row["answer"] == item.reference and json.loads(row["options"]) == item.options


def _refused_before_loading(cfg, monkeypatch, match: str):
    import r1_sft.model.lora
    from r1_sft.rl.grpo import run_grpo

    def no_model(*_a, **_k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(r1_sft.model.lora, "setup_lora_model", no_model)
    with pytest.raises(UserError, match=match):
        run_grpo(cfg)


def test_bad_question_files_and_settings_stop_before_any_model_loads(tiny_model_dir, tmp_path, monkeypatch):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    _refused_before_loading(_config(tiny_model_dir, tmp_path, val_file=str(empty)), monkeypatch, "the file is empty")
    wrong = _write_jsonl(tmp_path / "wrong.jsonl", [{"question": "问", "options": {"A": "甲", "B": "乙"}, "answer": "C"}])
    _refused_before_loading(_config(tiny_model_dir, tmp_path, train_file=str(wrong)), monkeypatch,
                            "answer 'C' is not made of the option letters AB")
    unanswered = _write_jsonl(tmp_path / "unanswered.jsonl", _sample(2) + [{"question": "问", "options": {"A": "甲",
                                                                                                         "B": "乙"}}])
    _refused_before_loading(_config(tiny_model_dir, tmp_path, train_file=str(unanswered)), monkeypatch,
                            "1 question.* without an answer .*split_mcq_data")
    _refused_before_loading(_config(tiny_model_dir, tmp_path, num_generations=3), monkeypatch,
                            "--num_generations 3 must divide")
    _refused_before_loading(_config(tiny_model_dir, tmp_path, loss_type="ppo"), monkeypatch, "--loss_type 'ppo'")
    _refused_before_loading(_config(tiny_model_dir, tmp_path, use_vllm=True, use_4bit=True), monkeypatch,
                            "--use_vllm with --use_4bit: .*4973.*--no_use_4bit")
    _refused_before_loading(_config(tiny_model_dir, tmp_path, use_vllm=True), monkeypatch,
                            "--use_vllm: vllm is not installed in this Python .*docs/grpo.md")
    _refused_before_loading(_config(tiny_model_dir, tmp_path, use_vllm=True, vllm_mode="remote"), monkeypatch,
                            "--vllm_mode 'remote': use one of colocate, server")
    _refused_before_loading(_config(tiny_model_dir, tmp_path, loss_type="cispo"), monkeypatch,
                            "--loss_type cispo clips the ratio itself at --epsilon_high .*--epsilon_high 5.0")
    _refused_before_loading(_config(tiny_model_dir, tmp_path, loss_type="luspo"), monkeypatch,
                            "--loss_type luspo .*--importance_sampling_level sequence")
    _refused_before_loading(_config(tiny_model_dir, tmp_path, scale_rewards="std"), monkeypatch,
                            "--scale_rewards 'std': use one of group, batch, none")
    _refused_before_loading(_config(tiny_model_dir, tmp_path, top_p=0), monkeypatch, "--top_p 0")
    _refused_before_loading(_config(tmp_path / "no_sft_yet", tmp_path), monkeypatch,
                            "--model_path .*no_sft_yet: not found .*train_stf_r1_train_val.py first")


def test_a_bad_file_is_one_line_from_the_script(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    proc = run_script("scripts/train_grpo.py", "--model_path", tiny_model_dir, "--train_file", empty,
                      "--val_file", CMB, "--output_dir", tmp_path / "out", env=ONE_THREAD, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --train_file")
    assert "\n" not in proc.stderr.strip() and "[model]" not in proc.stdout


def test_dry_run_prints_the_prompt_and_the_memory_estimate(tiny_model_dir, tmp_path, capsys):
    from r1_sft.rl.grpo import run_grpo

    assert run_grpo(_config(tiny_model_dir, tmp_path, dry_run=True, gpu_memory_gb=24, beta=0.04)) is None
    out = capsys.readouterr().out
    assert "<｜Assistant｜><think>\n" in out and "estimated peak GPU memory" in out and "on a 24 GB GPU" in out
    assert "[model] loaded" not in out and not (tmp_path / "grpo").exists()


def test_memory_estimate_parts_follow_the_settings():
    from r1_sft.rl.memory import grpo_estimate
    from r1_sft.training.memory_estimate import R1_DISTILL_1_5B as shape

    base = dict(micro_batch=8, generation_batch=32, prompt_tokens=300, completion_tokens=2048, use_4bit=False)
    plain = grpo_estimate(shape, **base)
    assert plain.reference_gb == 0 and plain.vllm_gb == 0
    assert grpo_estimate(shape, **base, beta=0.04).reference_gb > 0  # the frozen "ref" adapter, not a second model
    assert grpo_estimate(shape, **base, beta=0.04).total_gb - plain.total_gb < 0.2
    assert grpo_estimate(shape, **{**base, "use_4bit": True}).weights_gb < plain.weights_gb / 2 + 0.5
    kv = 32 * 2348 * shape.num_hidden_layers * 2 * shape.kv_dim * 2 / 1e9
    assert plain.generation_gb == pytest.approx(kv + 32 * shape.vocab_size * 6 / 1e9)
    # TRL's tiled head is a small fraction of the full logits it never builds
    assert plain.logprob_head_gb < 1.5 < 20 < plain.full_logits_gb
    assert plain.peak_phase == "training"  # colocated vLLM: its reservation on top, no HF generation phase
    assert grpo_estimate(shape, **base, vllm_gb=24).total_gb == pytest.approx(plain.total_gb + 24)


def test_knobs_reach_trl_and_vllm_gets_what_keeps_its_log_probs_right(tiny_model_dir, tmp_path):
    """The flags as TRL's GRPOConfig receives them (vLLM itself cannot be imported in the project's environment)."""
    from r1_sft.model.plan import make_plan
    from r1_sft.rl.checks import plan_steps
    from r1_sft.rl.grpo import build_grpo_args

    plan = make_plan(tiny_model_dir, device="cpu", for_training=True)
    cfg = _config(tiny_model_dir, tmp_path, use_vllm=True, vllm_mode="server",
                  vllm_server_base_url="http://10.0.0.2:8000", scale_rewards="none", warmup_ratio=0.1,
                  lr_scheduler_type="constant_with_warmup", num_iterations=2, mask_truncated_completions=True,
                  num_generations_eval=2, eval_questions=3, log_completions=True)
    steps = plan_steps(cfg, 69, 6)
    args = build_grpo_args(cfg, plan, steps, tmp_path / "out", [1.0], "rewards/accuracy_reward/mean", 1234)
    assert (args.top_p, args.temperature) == (1.0, 0.6)  # the sampler's log-probs are the trainer's
    assert args.vllm_importance_sampling_mode == "token_truncate" and args.vllm_importance_sampling_correction
    assert (args.vllm_mode, args.vllm_server_base_url, args.vllm_max_model_length) == ("server",
                                                                                        "http://10.0.0.2:8000", 1234)
    assert (args.epsilon, args.epsilon_high) == (0.2, 0.28)  # DAPO's clip-higher when not given
    assert (args.scale_rewards, args.num_iterations, args.mask_truncated_completions) == ("none", 2, True)
    assert args.warmup_steps == 0.1 and args.lr_scheduler_type == "constant_with_warmup"
    assert args.max_steps == steps.total_steps == 4 and args.num_generations_eval == 2 and args.log_completions
    assert args.per_device_eval_batch_size % 2 == 0 and args.per_device_eval_batch_size > 2  # whole groups, batched
    cispo = build_grpo_args(_config(tiny_model_dir, tmp_path, loss_type="cispo", epsilon_high=5.0), plan, steps,
                            tmp_path / "out", [1.0], "rewards/accuracy_reward/mean", 1234)
    assert cispo.epsilon_high == 5.0 and not cispo.use_vllm and cispo.vllm_max_model_length is None
