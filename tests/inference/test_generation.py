"""One generation module (issue 20 item 1): evaluation, the terminal chat and the server say the same thing.

The consequence a user would notice: with the same model (the stand-in), question, seed, sampling
values and batch size 1, `scripts/evaluate_model.py`, `scripts/chat_with_model.py --once` and a
`POST /v1/chat/completions` to `scripts/serve_model.py` return the same text. Sampling is at values
off the defaults (T 1.6, top_p 0.999), where the stand-in's tail matters: a path that kept
transformers' default top_k=50 (as the chat and the server once did), or seeded differently,
draws another text (both pinned in memory below).
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from r1_sft.inference.chat import ANSWER_LABEL, REASONING_LABEL
from r1_sft.inference.decoding import Decoding
from r1_sft.r1_format import parse_output

from conftest import REPO, popen_script, run_script

QUESTION = "高血压患者平时饮食要注意什么？"
SEED, TEMPERATURE, TOP_P, MAX_NEW_TOKENS = 1234, 1.6, 0.999, 24
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the same float32 arithmetic in every process


def test_top_k_is_decided_in_one_place():
    lines = [f"{path.name}:{number}" for path in sorted((REPO / "r1_sft").rglob("*.py"))
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"\btop_k\b", line)]
    assert len(lines) == 1 and lines[0].startswith("decoding.py:"), lines  # Decoding.generate_kwargs


def test_sampling_switches_top_k_off_and_greedy_unsets_the_sampling_values():
    assert Decoding(do_sample=True, temperature=0.7, top_p=0.9).generate_kwargs() == \
        {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0}
    # greedy: nothing from the model's generation_config (do_sample, T 0.6, top_p 0.95) applies
    assert Decoding(do_sample=False).generate_kwargs() == \
        {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    # the chat's and the server's convention: temperature 0 is greedy
    assert Decoding.from_temperature(0, 0.95, 8).do_sample is False
    assert Decoding(seed=7).batch_seed(3) == 10 and Decoding(seed=None).batch_seed(3) is None


def test_a_batch_is_generated_the_same_whoever_runs_it(tiny_model_dir):
    """Batch i of an evaluation run is seeded seed + i: a chat reply or request with that index equals it."""
    import torch

    from r1_sft.inference.generation import generate_with_stats, load_for_generation, stream_reply
    from r1_sft.model.plan import make_plan
    from r1_sft.r1_format import encode_prompt

    torch.set_num_threads(1)
    model, tokenizer = load_for_generation(make_plan(tiny_model_dir))
    conversations = [[{"role": "user", "content": q}] for q in ("头痛怎么办？", QUESTION, "孩子发烧到39度怎么办？")]
    decoding = Decoding(MAX_NEW_TOKENS, True, TEMPERATURE, TOP_P, SEED)
    gens, _ = generate_with_stats(model, tokenizer, conversations, decoding, batch_size=1)
    prompts = [encode_prompt(tokenizer, c) for c in conversations]
    order = sorted(range(3), key=lambda i: -len(prompts[i]))  # batches go longest prompt first
    for batch_index, i in enumerate(order):
        alone = stream_reply(model, tokenizer, prompts[i], decoding, reply_index=batch_index)
        assert alone.text == gens[i].text and alone.new_tokens == gens[i].new_tokens
    assert len({g.text for g in gens}) == 3
    # another seed draws another text: the seed is really used
    other = stream_reply(model, tokenizer, prompts[order[0]], Decoding(MAX_NEW_TOKENS, True, TEMPERATURE, TOP_P, SEED + 1))
    assert other.text != gens[order[0]].text
    # transformers' default top_k=50 (what the chat and the server drew with before) gives another text here
    first = torch.tensor([prompts[order[0]]])
    torch.manual_seed(decoding.batch_seed(0))
    out = model.generate(input_ids=first, attention_mask=torch.ones_like(first), max_new_tokens=MAX_NEW_TOKENS,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
                         **{**decoding.generate_kwargs(), "top_k": 50})
    assert tokenizer.decode(out[0, first.shape[1]:], skip_special_tokens=True) != gens[order[0]].text


def _start_server(tiny_model_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with open(log, "w", encoding="utf-8") as out:
        proc = popen_script("scripts/serve_model.py", "--model", tiny_model_dir, "--port", "0", "--max_context", "1024",
                            "--max_tokens", "64", cwd=REPO, env=ONE_THREAD, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://\S+/v1)", log.read_text(encoding="utf-8", errors="replace"))
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"server did not start:\n{log.read_text(encoding='utf-8', errors='replace')}")


def _chat_parts(stdout: str) -> tuple[str, str, int]:
    """Reasoning, answer and token count of a `--once` reply as the terminal shows them."""
    body = stdout.split(REASONING_LABEL + "\n", 1)[1]
    found = re.search(r"\n\[(\d+) tokens, ", body)
    body = body[:found.start()]
    reasoning, _, answer = body.partition("\n" + ANSWER_LABEL + "\n")
    return reasoning.strip(), answer.strip(), int(found.group(1))


def test_evaluation_chat_and_server_give_the_same_text(tiny_model_dir, tmp_path):
    import openai

    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"input": QUESTION, "output": "<think>\n想\n</think>\n\n答"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    sampling = ["--seed", SEED, "--temperature", TEMPERATURE, "--top_p", TOP_P, "--max_new_tokens", MAX_NEW_TOKENS]
    proc = run_script("scripts/evaluate_model.py", "--base_model", tiny_model_dir, "--adapter", "", "--data", data,
                      "--num_samples", 1, "--batch_size", 1, *sampling, "--output_dir", tmp_path, "--run_name", "eval",
                      env=ONE_THREAD, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    prediction = json.loads((tmp_path / "eval" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()[0])
    evaluated = parse_output(prediction["prediction"])
    assert evaluated.reasoning and prediction["new_tokens"] > 1

    chat = run_script("scripts/chat_with_model.py", "--model", tiny_model_dir, "--once", QUESTION, *sampling,
                      env=ONE_THREAD, timeout=300, cwd=tmp_path)
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert _chat_parts(chat.stdout) == (evaluated.reasoning, evaluated.answer, prediction["new_tokens"])

    server, url = _start_server(tiny_model_dir, tmp_path / "server.log")
    try:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)
        response = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}],
                                                  seed=SEED, temperature=TEMPERATURE, top_p=TOP_P,
                                                  max_tokens=MAX_NEW_TOKENS)
    finally:
        server.terminate()
        server.wait(timeout=30)
    message = response.choices[0].message
    assert (message.reasoning_content, message.content) == (evaluated.reasoning, evaluated.answer)
    assert response.usage.completion_tokens == prediction["new_tokens"]


def test_chat_server_and_evaluation_share_generation_and_the_server_needs_no_terminal_chat():
    import ast

    def imports(module: str) -> set[str]:
        tree = ast.parse((REPO / "r1_sft" / f"{module}.py").read_text(encoding="utf-8"))
        return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}

    for module in ("inference/chat", "inference/serving", "evaluation/run"):
        assert "r1_sft.inference.generation" in imports(module), module
    # no terminal-chat internals in the server
    assert "r1_sft.inference.chat" not in imports("inference/serving") | imports("inference/openai_api")
    text = (REPO / "r1_sft" / "inference" / "serving.py").read_text(encoding="utf-8")
    assert ".generate(" not in text and "StoppingCriteria" not in text  # no generate call of its own
