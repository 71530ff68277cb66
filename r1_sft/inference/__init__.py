"""Stage 5, inference: one generation path for evaluation, the terminal chat and the server.

  decoding      the R1 decoding protocol: values, top-k off, seed + batch index
  generation    batched / left-padded or streamed generation (reasoning apart), stop on request,
                torchrun sharding, loading for generation (optional vLLM backend)
  conversation  a chat's settings, history without reasoning, context window
  chat_store    saved conversations (conversations/)
  chat          the terminal chat (commands, streaming output)
  openai_api    the OpenAI protocol in DeepSeek's reasoning shape
  model_variants  base and tuned from one loaded adapter (adapter layers on / off)
  serving       the OpenAI-compatible server
  web_page      the chat page at / (files in web/: HTML, script, styles, a safe markdown renderer)
                and its saved conversations

May import: the shared modules and r1_sft.model.
"""
