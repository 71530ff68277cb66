"""Stage 5, inference: one generation path for evaluation, the terminal chat and the server.

  decoding      the R1 decoding protocol: values, top-k off, seed + batch index
  generation    batched / left-padded or streamed generation (reasoning apart), stop on request,
                torchrun sharding, loading for generation (optional vLLM backend)
  conversation  a chat's settings, history without reasoning, context window
  chat_store    saved conversations (conversations/)
  chat          the terminal chat (commands, streaming output)
  openai_api    the OpenAI protocol in DeepSeek's reasoning shape
  serving       the OpenAI-compatible server

May import: the shared modules and r1_sft.model.
"""
