"""What the field's libraries print, decided once: quiet where the user cannot act on it.

Called when the ``r1_sft`` package is imported, i.e. before any stage script imports torch,
transformers, peft or bitsandbytes, so that a one-line error stays one line and a log file stays
readable:
  * bitsandbytes 0.50 logs ``Failed to load CPU gemm_4bit_forward from kernels-community`` at
    import on CPUs with AVX512-BF16, and peft imports bitsandbytes whenever it is installed;
  * transformers and huggingface_hub draw "Loading weights" / "Writing model shards" bars, and
    transformers warns about settings the project already makes on purpose (pad == eos);
  * peft warns on every save that it cannot tell whether embedding layers changed.
Errors still show. The Trainer's own progress bar is chosen per stream in ``training.py``.
"""
from __future__ import annotations

import logging
import os
import warnings

_QUIET_LOGGERS = ("bitsandbytes", "transformers", "peft", "accelerate", "datasets", "huggingface_hub", "jieba", "trl")


def quiet_libraries() -> None:
    """Silence library chatter (warnings below ERROR, progress bars of loads and saves)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' load/save bars use this switch
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warning from the tokenizers library
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # peft 0.21 still calls a transformers method that 5.x renamed; the warning says nothing to users.
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
    # TRL 1.16 switches checkpointing off and on around each generation by transformers 5's old method names.
    warnings.filterwarnings("ignore", message=r"`gradient_checkpointing_(enable|disable)` is deprecated",
                            category=FutureWarning)
    # peft on save: "Could not find a config file ... will assume that the vocabulary was not modified"
    # / "Setting `save_embedding_layers` to `True` as embedding layers found in `target_modules`".
    warnings.filterwarnings("ignore", message=r".*(save_embedding_layers|vocabulary was not modified).*")
