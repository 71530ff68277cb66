"""Models: the tiny R1 stand-in reproduces the real traps, the one loader, the download path, test_model.py.

The tiny model comes from the session fixture ``tiny_model_dir`` (the real ``download_model.py --tiny``).
The download path runs the real modelscope client against a local HTTP fake (no network).
"""
from __future__ import annotations

import hashlib
import http.server
import json
import math
import os
import socket
import threading
import urllib.parse
from pathlib import Path

import pytest
import torch

from r1_sft.cli import UserError
from r1_sft.model.folders import load_tokenizer, local_model_dir, resolve_model_folder, save_tokenizer
from r1_sft.model.loading import load_model, merge_adapter
from r1_sft.r1_format import build_prompt, encode_example, encode_prompt

from conftest import REPO, run_script

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
FIXTURES = REPO / "tests" / "fixtures" / "models"
QUESTION = [{"role": "user", "content": "头痛怎么办？"}]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


# ---------------------------------------------------------------- the real tokenizer and its traps

R1_ADDED = ["<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<｜begin▁of▁sentence｜>", "<|EOT|>", "<think>",
            "</think>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
            "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
            "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
SPECIAL_IDS = {151643, 151646, *range(151650, 151657)}


@pytest.fixture(scope="module")
def tok_4x():
    """The same files as transformers 4.x reads them: the tokenizer itself prepends a BOS."""
    from r1_sft.model.r1_tokenizer import load_r1_tokenizer

    tokenizer = load_r1_tokenizer(tokenizer_adds_bos=True)
    tokenizer.padding_side = "left"
    return tokenizer


def test_the_stand_in_tokenizer_is_the_real_r1_tokenizer(tok):
    assert len(tok) == 151665
    assert type(tok).__name__ == "Qwen2Tokenizer"  # what transformers 5.x loads for model_type qwen2
    decoder = tok.added_tokens_decoder
    assert [decoder[i].content for i in range(151643, 151665)] == R1_ADDED
    assert {i for i in range(151643, 151665) if decoder[i].special} == SPECIAL_IDS
    assert (tok.bos_token, tok.bos_token_id, tok.eos_token, tok.eos_token_id) == (BOS, 151646, EOS, 151643)
    assert tok.pad_token_id == 151643  # pad == eos
    # Published encodings of the real files.
    assert encode_prompt(tok, [{"role": "user", "content": "Who are you?"}]) == \
        [151646, 151644, 15191, 525, 498, 30, 151645, 151648, 198]
    assert tok("介绍一下你自己", add_special_tokens=False)["input_ids"] == [109432, 107828]
    assert tok(" Yes", add_special_tokens=False)["input_ids"] == [7414]
    assert tok(" No", add_special_tokens=False)["input_ids"] == [2308]
    # Real Chinese medical text: about 0.70 tokens per character.
    text = "患者男，45岁，反复上腹痛半年，进食后加重，伴反酸、嗳气。建议完善胃镜检查，必要时行幽门螺杆菌检测。"
    assert 0.5 < len(tok(text, add_special_tokens=False)["input_ids"]) / len(text) < 0.9


def test_role_and_think_tokens_are_not_special(tok):
    for token in (USER, ASSISTANT, "<think>", "</think>", BOS, EOS):
        assert len(tok(token, add_special_tokens=False)["input_ids"]) == 1
    # skip_special_tokens drops BOS/EOS and keeps the role and think tokens.
    text = f"{BOS}{USER}问{ASSISTANT}<think>\n想\n</think>\n\n答{EOS}"
    decoded = tok.decode(tok(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
    assert decoded == f"{USER}问{ASSISTANT}<think>\n想\n</think>\n\n答"


def test_pad_is_eos_and_config_ids_are_the_real_ones(tok, tiny_model_dir):
    assert tok.pad_token_id == tok.eos_token_id
    config = json.loads((tiny_model_dir / "config.json").read_text())
    # The real config.json says bos_token_id 151643 (not the tokenizer's 151646); generation_config says 151646.
    assert (config["bos_token_id"], config["eos_token_id"]) == (151643, 151643)
    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (151646, 151643)


def test_bos_from_the_tokenizer_depends_on_the_transformers_version(tok, tok_4x):
    # Pinned transformers 5.x: the tokenizer adds no BOS; 4.x (LlamaTokenizerFast, add_bos_token): it adds one.
    assert tok("头痛")["input_ids"][0] != tok.bos_token_id
    assert tok_4x("头痛")["input_ids"][0] == tok_4x.bos_token_id
    # Both read the same template, which writes BOS itself: tokenized with special tokens, 4.x gets two.
    text = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert text.startswith(BOS) and text == tok_4x.apply_chat_template(QUESTION, tokenize=False,
                                                                      add_generation_prompt=True)
    assert tok(text)["input_ids"].count(tok.bos_token_id) == 1
    assert tok_4x(text)["input_ids"][:2] == [tok.bos_token_id, tok.bos_token_id]


@pytest.mark.parametrize("version", ["pinned 5.x", "4.x"])
def test_every_prompt_and_training_example_has_exactly_one_bos(tok, tok_4x, version):
    from r1_sft.inference.chat import ChatSession

    tokenizer = tok if version == "pinned 5.x" else tok_4x
    prompt_ids = encode_prompt(tokenizer, QUESTION)
    assert prompt_ids[0] == tokenizer.bos_token_id and prompt_ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.apply_chat_template(QUESTION, tokenize=True, add_generation_prompt=True)["input_ids"] == prompt_ids
    example = encode_example(tokenizer, "头痛怎么办？", "<think>\n先想一想病因\n</think>\n\n多休息。")
    assert example["input_ids"][:len(prompt_ids)] == prompt_ids
    assert example["input_ids"].count(tokenizer.bos_token_id) == 1
    # The chat's prompt for a second turn (history without reasoning) has one BOS too.
    session = ChatSession.__new__(ChatSession)  # only the prompt builder is exercised: no model needed
    session.tokenizer = tokenizer
    messages = [*QUESTION, {"role": "assistant", "content": "多休息。"}, {"role": "user", "content": "还要注意什么？"}]
    chat_ids = encode_prompt(tokenizer, messages)
    assert chat_ids.count(tokenizer.bos_token_id) == 1 and chat_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(chat_ids).endswith(f"{ASSISTANT}<think>\n")


def test_generation_prompt_ends_inside_the_think_block(tok):
    text = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert text == f"{BOS}{USER}头痛怎么办？{ASSISTANT}<think>\n"
    assert build_prompt(tok, QUESTION) == text  # not doubled by r1_format
    assert tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=False) == f"{BOS}{USER}头痛怎么办？"


def test_template_cuts_reasoning_from_assistant_turns_and_pastes_system_raw(tok):
    messages = [{"role": "system", "content": "你是医生。"}, *QUESTION,
                {"role": "assistant", "content": "<think>\n先想一想病因\n</think>\n\n多休息。"},
                {"role": "user", "content": "还要注意什么？"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "先想一想病因" not in text
    assert text == (f"{BOS}你是医生。{USER}头痛怎么办？{ASSISTANT}\n\n多休息。{EOS}"
                    f"{USER}还要注意什么？{ASSISTANT}<think>\n")
    # So a training string must append the target by hand (r1_format.encode_example does):
    example = encode_example(tok, "头痛怎么办？", "<think>\n先想一想病因\n</think>\n\n多休息。")
    assert "先想一想病因" in tok.decode(example["input_ids"])
    assert example["input_ids"][-1] == tok.eos_token_id and example["labels"][-1] == tok.eos_token_id


def test_tokenizer_round_trips_after_reload(tok):
    for text in ("患者主诉头痛三天，体温 38.5℃。\n\n建议：多喝水；必要时就医！", "BMI = 24.3 kg/m2, HbA1c 6.5%",
                 "  两个空格\t制表符\\n字面反斜杠n", "罕见字：龘靐齉"):
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_tiny_model_is_a_small_qwen2_with_the_real_vocabulary(tiny_model_dir, tok):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["tie_word_embeddings"] is False
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # grouped-query attention
    assert config["vocab_size"] == 151936 and config["max_position_embeddings"] == 131072
    with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    assert model.lm_head.weight.shape[0] == model.get_input_embeddings().weight.shape[0] == 151936
    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert (gen["do_sample"], gen["temperature"], gen["top_p"]) == (True, 0.6, 0.95)
    tok_config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    # The real file's fields, which transformers 4.x reads as "prepend BOS" and 5.x ignores.
    assert (tok_config["tokenizer_class"], tok_config["add_bos_token"]) == ("LlamaTokenizerFast", True)
    assert (tiny_model_dir / "run_info.json").is_file()
    # Pre-training learned its corpus: a sample document is far likelier than uniform over 151,936 ids
    # (2.8 nats/token against 11.9; 4.7 after the old 500 steps). It is a memoriser: a sentence outside
    # the corpus scores near 10.
    from r1_sft.model.tiny_model import corpus_documents, default_corpus_files

    doc = corpus_documents(default_corpus_files())[0]
    ids = torch.tensor([[tok.bos_token_id] + tok(doc, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < 0.35 * math.log(151936)


def test_tiny_build_is_deterministic_and_uses_the_real_tokenizer(tmp_path, tiny_model_dir):
    from r1_sft.model.tiny_model import build_tiny_model

    corpus = [FIXTURES / "r1_data_sample.jsonl", FIXTURES / "teacher_sample.jsonl"]
    kwargs = dict(corpus_files=corpus, pretrain_steps=3, batch_size=4, block_size=32, verbose=False)
    a = build_tiny_model(tmp_path / "a", **kwargs)
    build_tiny_model(tmp_path / "b", **kwargs)
    build_tiny_model(tmp_path / "seed1", seed=1, **kwargs)
    weights = lambda name: (tmp_path / name / "model.safetensors").read_bytes()  # noqa: E731
    assert weights("a") == weights("b")
    assert weights("a") != weights("seed1")
    # Whatever the corpus, the tokenizer is the real one (the distillation teacher shares it).
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()
    assert a.documents == 16 and a.final_loss < a.first_loss and a.tokenizer_size == 151665


def test_compact_pretraining_equals_the_full_vocabulary_loss():
    """The stand-in pre-trains on a compact output layer; exported, the full 151,936-row model has the same loss."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1_sft.model.tiny_model import _pretrain_compact

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config)
    stream = [3, 17, 5, 900, 17, 3, 44, 5, 17, 900] * 6
    used = sorted(set(stream) | {998, 999})
    last_loss, _ = _pretrain_compact(model, stream, used, 1000 - len(used), seed=0, steps=1, batch_size=2,
                                     block_size=8, learning_rate=0.0, verbose=False)  # lr 0: weights unchanged
    gen = torch.Generator().manual_seed(0)  # the batch the step drew
    starts = torch.randint(0, len(stream) - 8, (2,), generator=gen)
    batch = torch.stack([torch.tensor(stream[s:s + 8]) for s in starts.tolist()])
    with torch.no_grad():
        full = model(input_ids=batch, labels=batch).loss.item()
    assert full == pytest.approx(last_loss, rel=1e-5)
    unused = [i for i in range(1000) if i not in used]
    assert torch.equal(model.lm_head.weight[unused[0]], model.lm_head.weight[unused[-1]])


def test_stand_in_knows_where_a_sample_reasoning_ends_but_never_writes_think_close(tiny_model_dir, tok):
    """What `make demo` rests on: the base has learnt the sample texts well enough to expect the end of a
    reasoning (its last ``。\\n``), and gives ``</think>`` no chance. Then a 40-step fine-tune only has
    to learn that ``</think>`` comes there. A 500-step stand-in had about the same odds at the end as
    after any other sentence (0.11 vs 0.08 on these records), and the demo's tuned model never closed
    the think block.
    """
    from transformers import AutoModelForCausalLM

    from r1_sft.jsonl_io import read_jsonl
    from r1_sft.r1_format import format_output

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).float().eval()
    newline_dot, = tok("。\n", add_special_tokens=False)["input_ids"]
    dot, = tok("。", add_special_tokens=False)["input_ids"]
    think_close = tok.convert_tokens_to_ids("</think>")
    at_end, elsewhere, close = [], [], []
    for rec in list(read_jsonl(REPO / "modelscope_r1_data/r1_data_example.jsonl"))[:12]:
        ex = encode_example(tok, rec["question"], format_output(rec["think"], rec["answer"]))
        ids, labels = ex["input_ids"], ex["labels"]
        with torch.no_grad():
            probs = model(input_ids=torch.tensor([ids])).logits[0].float().softmax(-1)
        end = ids.index(think_close) - 1  # the reasoning's last token, 。\n
        assert ids[end] == newline_dot
        start = next(i for i, label in enumerate(labels) if label != -100)
        at_end.append(probs[end - 1, newline_dot].item())
        elsewhere += [probs[i - 1, newline_dot].item() for i in range(start, end) if ids[i] == dot]
        close.append(probs[end, think_close].item())
    mean_end, mean_elsewhere = sum(at_end) / len(at_end), sum(elsewhere) / len(elsewhere)
    assert mean_end > 0.25 and mean_end > 3 * mean_elsewhere, (mean_end, mean_elsewhere)
    assert max(close) < 1e-4, close  # never a pre-training target: the base cannot close the think block


# ---------------------------------------------------------------- the loader

def test_load_base_model_on_cpu(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.dtype == torch.float32 and not model.training
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == tokenizer.eos_token_id
    assert model.config._attn_implementation == "sdpa"
    model, tokenizer = load_model(tiny_model_dir, for_training=True, dtype="bfloat16")
    assert model.training and tokenizer.padding_side == "right" and model.dtype == torch.bfloat16
    assert model.config.use_cache is False


def test_load_4bit_quantizes_the_linear_layers(tiny_model_dir):
    import bitsandbytes as bnb

    model, tokenizer = load_model(tiny_model_dir, use_4bit=True)
    quantized = {name.split(".")[-1] for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert quantized == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert model.config.quantization_config.bnb_4bit_quant_type == "nf4"
    assert model.config.quantization_config.bnb_4bit_use_double_quant is True
    logits = model(input_ids=torch.tensor([encode_prompt(tokenizer, QUESTION)])).logits
    assert torch.isfinite(logits).all()


def _save_adapter(base_dir: Path, out: Path) -> torch.Tensor:
    """A LoRA adapter with non-zero B (so it changes the output); returns its logits on QUESTION."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_model(base_dir)
    torch.manual_seed(0)  # lora_A's random init too: the adapter must not depend on what ran before
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(out)
    ids = torch.tensor([encode_prompt(tokenizer, QUESTION)])
    with torch.no_grad():
        return peft_model(input_ids=ids).logits


def test_adapter_folder_loads_its_base_then_the_adapter(tiny_model_dir, tmp_path, monkeypatch):
    adapter = tmp_path / "adapter"
    expected = _save_adapter(tiny_model_dir, adapter)
    # base_model_name_or_path relative to the repository root, loaded from another working directory
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = os.path.relpath(tiny_model_dir, REPO)
    config_file.write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)

    folder = resolve_model_folder(adapter)
    assert (folder.kind, folder.base_path, folder.adapter_path) == ("adapter", tiny_model_dir.resolve(), adapter)
    model, tokenizer = load_model(adapter)
    assert type(model).__name__ == "PeftModelForCausalLM" and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    ids = torch.tensor([encode_prompt(tokenizer, QUESTION)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    torch.testing.assert_close(logits, expected)
    base, _ = load_model(tiny_model_dir)
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=ids).logits, logits), "the adapter must change the output"
    trainable, _ = load_model(adapter, for_training=True)
    assert any(p.requires_grad for n, p in trainable.named_parameters() if "lora_" in n)

    merged_dir = merge_adapter(adapter, tmp_path / "merged")
    assert resolve_model_folder(merged_dir).kind == "merged"
    merged, _ = load_model(merged_dir)
    assert type(merged).__name__ == "Qwen2ForCausalLM"
    with torch.no_grad():  # bf16 storage of the merged weights: close, not equal
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=0.1, rtol=0.05)


def test_loader_errors_name_the_folder_and_the_fix(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match=r"model folder not found .*download_model\.py"):
        resolve_model_folder(tmp_path / "nope")
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"no_weights: model folder has no \*\.safetensors"):
        load_model(tmp_path / "no_weights")
    adapter = tmp_path / "orphan_adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "model/missing_base"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"x")
    with pytest.raises(UserError, match=r"adapter_config\.json: base model 'model/missing_base' not found"):
        resolve_model_folder(adapter)
    assert local_model_dir("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B") == \
        REPO / "model" / "deepseek_ai" / "DeepSeek-R1-Distill-Qwen-1.5B"


def test_stage_reports_a_missing_model_in_one_line(tmp_path):
    proc = run_script("scripts/test_model.py", "--model_path", tmp_path / "absent", timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr
    assert "download_model.py" in proc.stderr


# ---------------------------------------------------------------- test_model.py on the tiny model

def test_test_model_script_answers_three_questions(tiny_model_dir, tmp_path):
    out = tmp_path / "answers.jsonl"
    proc = run_script("scripts/test_model.py", "--model_path", tiny_model_dir, "--max_new_tokens", "24",
                      "--no_do_sample", "--output_file", out, cwd=tmp_path, check=True)
    assert "<｜Assistant｜><think>\\n'" in proc.stdout  # the printed prompt ends inside the think block
    assert proc.stdout.count("--- 推理过程") == 3 and proc.stdout.count("--- 最终回答") == 3
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3 and len({r["question"] for r in rows}) == 3
    for row in rows:
        assert 0 < row["new_tokens"] <= 24
        text = row["reasoning"] + row["answer"]
        # the pre-trained tiny model writes Chinese-looking text
        assert sum("\u4e00" <= ch <= "\u9fff" for ch in text) >= 2, text


# ---------------------------------------------------------------- the download path, against a local fake hub

class _FakeModelScope(http.server.ThreadingHTTPServer):
    """Serves the two endpoints modelscope's snapshot_download uses: the file listing and file bytes (Range)."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        super().__init__(("127.0.0.1", 0), _FakeHandler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FakeHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, code: int, body: bytes, headers: dict | None = None):
        self.send_response(code)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        files = self.server.files
        self.server.requests.append((url.path, query.get("FilePath"), self.headers.get("Range")))
        if url.path.endswith("/repo/files"):
            listing = [{"Name": n, "Path": n, "Type": "blob", "Size": len(b), "Revision": "master",
                        "Sha256": hashlib.sha256(b).hexdigest()} for n, b in files.items()]
            return self._send(200, json.dumps({"Code": 200, "Success": True, "Data": {"Files": listing}}).encode(),
                              {"Content-Type": "application/json"})
        if url.path.endswith("/repo") and query.get("FilePath") in files:
            data = files[query["FilePath"]]
            if self.headers.get("Range"):
                start = int(self.headers["Range"].split("=")[1].split("-")[0])
                return self._send(206, data[start:], {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
            return self._send(200, data)
        self._send(404, b'{"Code": 404, "Message": "not found"}')


@pytest.fixture
def fake_hub():
    servers = []

    def start(files):
        server = _FakeModelScope(files)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# For an endpoint nobody listens on: one listing attempt, not the client's 1 + 2 + 4 s of retries.
NO_RETRIES = {"MODELSCOPE_REPO_TREE_PAGE_MAX_ATTEMPTS": "1"}


def _download(endpoint: str, local_dir: Path, tmp_path: Path, **env: str):
    env = {"MODELSCOPE_ENDPOINT": endpoint, "MODELSCOPE_CACHE": str(tmp_path / "ms_cache"),
           "MODELSCOPE_DOMAIN": "", **env}
    return run_script("download_model/download_model.py", "--local_dir", local_dir, env=env, timeout=300)


FAKE_REPO = {
    "config.json": json.dumps({"architectures": ["Qwen2ForCausalLM"]}).encode(),
    "tokenizer_config.json": b'{"add_bos_token": true}',
    "tokenizer.json": b'{"model": {}}',
    "generation_config.json": b'{"do_sample": true}',
    "model.safetensors": bytes(range(256)) * 2000,  # 512,000 bytes
}


def test_download_resumes_skips_and_verifies_through_the_real_modelscope_client(fake_hub, tmp_path):
    hub = fake_hub(FAKE_REPO)
    out = tmp_path / "model"
    proc = _download(hub.endpoint, out, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {n: (out / n).read_bytes() for n in FAKE_REPO} == FAKE_REPO
    fetched = sorted(f for _, f, _ in hub.requests if f)
    assert fetched == sorted(FAKE_REPO)
    assert all(path.startswith("/api/v1/models/deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B/") for path, _, _ in
               hub.requests if "internal" not in path)
    assert "wrote" in proc.stdout and "files" in proc.stdout and (out / "run_info.json").is_file()

    hub.requests.clear()  # a re-run downloads nothing again
    assert _download(hub.endpoint, out, tmp_path).returncode == 0
    assert [f for _, f, _ in hub.requests if f] == []

    hub.requests.clear()  # a partial file is resumed with an HTTP Range request, not restarted
    weights = FAKE_REPO["model.safetensors"]
    (out / "model.safetensors").unlink()
    (out / "model.safetensors.incomplete").write_bytes(weights[:100_000])
    assert _download(hub.endpoint, out, tmp_path).returncode == 0
    assert [(f, r) for _, f, r in hub.requests if f] == [("model.safetensors", "bytes=100000-")]
    assert (out / "model.safetensors").read_bytes() == weights


def test_download_verification_fails_without_weights(fake_hub, tmp_path):
    hub = fake_hub({k: v for k, v in FAKE_REPO.items() if k != "model.safetensors"})
    proc = _download(hub.endpoint, tmp_path / "model", tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "no *.safetensors weights" in proc.stderr


def test_download_without_network_says_which_host_and_how_to_use_a_local_copy(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _download(f"http://127.0.0.1:{port}", tmp_path / "model", tmp_path, **NO_RETRIES)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot reach 127.0.0.1:{port} ")
    assert "local copy" in last and "--local_dir" in last


def test_download_offline_goes_on_with_a_complete_local_copy(tiny_model_dir, tmp_path):
    """The fix the offline error suggests (put the model folder in place) must then work offline."""
    import shutil

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    local = tmp_path / "model"
    shutil.copytree(tiny_model_dir, local)
    proc = _download(f"http://127.0.0.1:{port}", local, tmp_path, **NO_RETRIES)
    assert proc.returncode == 0, proc.stderr
    assert "using the complete local copy" in proc.stdout
    (local / "config.json").unlink()  # an incomplete copy is still an error
    assert _download(f"http://127.0.0.1:{port}", local, tmp_path, **NO_RETRIES).returncode == 2


def test_library_chatter_is_silenced_once_the_package_is_imported():
    """bitsandbytes logs a warning at import on AVX512-BF16 CPUs (and peft imports bitsandbytes); the
    simulated warning and the real imports must print nothing, so one-line errors stay one line anywhere."""
    import subprocess
    import sys

    code = ("import r1_sft, logging, peft, transformers, bitsandbytes\n"
            "logging.getLogger('bitsandbytes.backends.cpu.ops').warning("
            "'Failed to load CPU gemm_4bit_forward from kernels-community')\n"
            "logging.getLogger('transformers.tokenization_utils_base').warning('pad token notice')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == ""
    control = subprocess.run([sys.executable, "-c", code.replace("import r1_sft, ", "import ")], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert "gemm_4bit_forward" in control.stderr  # without the package's filter the warning would show


def test_a_saved_tokenizer_is_the_files_it_was_loaded_from_and_loads_the_same(tiny_model_dir, tmp_path):
    """save_tokenizer (every checkpoint, best_model, final_model, merged folder) copies the base's tokenizer
    files; what loads from the copy tokenizes, templates and decodes as the base's tokenizer does."""
    from transformers import AutoTokenizer

    base = load_tokenizer(tiny_model_dir)
    save_tokenizer(base, tmp_path / "copy")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "copy" / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    base, copy = (AutoTokenizer.from_pretrained(str(p)) for p in (tiny_model_dir, tmp_path / "copy"))
    text = "患者发热三天，体温39℃。<think>\n先排查感染\n</think>\n\n建议就医。"
    ids = base(text)["input_ids"]
    assert copy(text)["input_ids"] == ids and len(copy) == len(base) and copy.decode(ids) == base.decode(ids)
    assert build_prompt(copy, QUESTION) == build_prompt(base, QUESTION)
    assert (copy.bos_token, copy.eos_token, copy.pad_token) == (base.bos_token, base.eos_token, base.pad_token)
    # not loaded from a folder of tokenizer files: transformers writes it
    base.name_or_path = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    save_tokenizer(base, tmp_path / "written")
    assert AutoTokenizer.from_pretrained(str(tmp_path / "written"))(text)["input_ids"] == ids
