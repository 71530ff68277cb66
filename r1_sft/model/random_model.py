"""Random (untrained) models of any Qwen2 shape, default the real 1.5B's, with R1's tokenizer: the real
model's speed and memory, offline, for benchmarks and the GPU check.
"""
from __future__ import annotations

from pathlib import Path

from r1_sft.model.r1_tokenizer import (
    BOS_TOKEN,
    FIRST_ADDED_ID,
    R1_ADDED_TOKENS,
    REAL_MAX_POSITIONS,
    REAL_VOCAB_ROWS,
    write_tokenizer,
)
from r1_sft.paths import repo_path

# DeepSeek-R1-Distill-Qwen-1.5B's architecture (config.json), for random models of the real cost.
REAL_1_5B_ARCH = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                      intermediate_size=8960, vocab_size=REAL_VOCAB_ROWS)
# A random model small enough for CPU smoke runs, with the real vocabulary (pad and EOS ids are 151643).
TINY_RANDOM_ARCH = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=128, vocab_size=REAL_VOCAB_ROWS)



def build_random_model(out_dir: str | Path, arch: dict | None = None, seed: int = 0) -> Path:
    """A randomly initialised bf16 ``Qwen2ForCausalLM`` of ``arch`` (default: the real 1.5B's) with R1's tokenizer.

    Untrained: it costs what the real model costs (speed, memory) and says nothing useful, which is
    all a benchmark or a GPU check needs, offline. Built on the GPU when there is one (1.8B weights
    initialise slowly on a CPU); written as a model folder with the real generation config.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out_dir = repo_path(out_dir)
    config = Qwen2Config(**(arch or REAL_1_5B_ARCH), tie_word_embeddings=False,
                         max_position_embeddings=REAL_MAX_POSITIONS, rope_theta=10000.0, rms_norm_eps=1e-6,
                         use_sliding_window=False, bos_token_id=FIRST_ADDED_ID, eos_token_id=FIRST_ADDED_ID,
                         initializer_range=0.02)
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    bos_id = FIRST_ADDED_ID + [t for t, _ in R1_ADDED_TOKENS].index(BOS_TOKEN)
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=FIRST_ADDED_ID, do_sample=True,
                                               temperature=0.6, top_p=0.95)
    model.save_pretrained(out_dir, safe_serialization=True)
    write_tokenizer(out_dir)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out_dir
