"""Stage 2, model: where the weights are, how they load, on which device and in which precision.

  plan            the run's decisions, made once: device, precision, model folder, 4-bit, attention,
                  engine and world size (printed, saved in run_info.json, passed down)
  folders         base / adapter / merged folders and their base; the tokenizer
  precision       --device and --precision decided; attention implementation
  loading         the one loader (safetensors only, trust_remote_code off), merging an adapter
  hardware        is the GPU usable: a visible GPU that torch cannot use is a one-line error
  lora            the trainable model: frozen (4-bit) base + LoRA, or a continued adapter
  r1_tokenizer    R1-Distill-Qwen's real tokenizer and chat template, built offline
  tiny_model      the offline stand-in (the real R1 tokenizer, 151,936 rows, pre-trained on the samples)
  random_model    untrained models of the real shapes (benchmarks, the GPU check)

May import: the shared modules (r1_sft/*.py). Nothing else in r1_sft.
"""
