"""Serve a model over the OpenAI-compatible chat API, with the reasoning apart from the answer, and a chat page.

Open http://HOST:PORT/ in a browser: the chat page (streamed reasoning and answer, stop, regenerate,
settings, base and tuned side by side, saved conversations) calls the same API as any client.
An adapter folder answers two model ids from one loaded model: its own (tuned) and `base` (adapter
layers switched off); --merge_adapter merges it instead (faster steps, tuned only).

Front-ends (Open WebUI, Chatbox, Cherry Studio, LobeChat) and the `openai` client connect to
http://HOST:PORT/v1. Responses follow DeepSeek's reasoner: `message.reasoning_content` holds the
think block, `message.content` the answer (streamed as `delta.reasoning_content`, then
`delta.content`). R1's rules hold as in the chat: a system message is folded into the first user
turn, earlier answers enter the prompt without their reasoning, generation starts inside <think>.
Generation runs `max_concurrency` at a time; `max_queue` more requests wait, then 429. Decoding
(top-k off, a request's `seed`), stop tokens and streaming are the chat's and the evaluation's
(r1_sft/inference/generation.py): the same request gives the same text as they do. A QLoRA adapter runs on
the unquantized base unless --use_4bit (one line says which).

Reads:  a model folder (--model: base, LoRA adapter -> its base is loaded, or merged)
Serves: GET / (chat page), POST /v1/chat/completions, GET /v1/models, GET /health (running / waiting counts)
Writes: conversations/<name>.json when the page saves (the terminal chat's format)

    python scripts/serve_model.py --model model/deepseek_r1_1.5b_lora/best_model
    API_KEY=secret python scripts/serve_model.py --model model/tiny_r1 --api_key_env API_KEY --port 8001
"""
from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import UserError, cli_main, parse_config, path_field  # noqa: E402
from r1_sft.inference.conversation import NOTICE, context_limit  # noqa: E402
from r1_sft.inference.generation import load_for_generation  # noqa: E402
from r1_sft.inference.serving import ServerSettings, bind_socket, create_app, run_server  # noqa: E402
from r1_sft.model.plan import make_plan  # noqa: E402
from r1_sft.model.precision import RunsOn  # noqa: E402
from r1_sft.paths import display_path, repo_path  # noqa: E402


@dataclass
class Config(RunsOn):
    model: str = path_field("model/deepseek_r1_1.5b_lora/best_model")  # model folder (base, LoRA adapter or merged)
    host: str = "127.0.0.1"  # address to listen on; 0.0.0.0 = every interface (set --api_key_env then)
    port: int = 8000  # TCP port; 0 = any free port (printed at start)
    api_key_env: str = ""  # name of the environment variable holding the API key; "" = no key required
    model_name: str = ""  # model id shown in /v1/models and responses; "" = the --model path
    max_tokens: int = 2048  # completion budget when a request names no max_tokens (tokens); R1 reasons long
    max_context: int = 0  # cap on prompt + completion tokens; 0 = the model's own limit
    max_concurrency: int = 1  # generations running at once on the one model
    max_queue: int = 8  # requests that may wait for a free slot; more get 429 with Retry-After
    max_body_bytes: int = 4 * 1024 * 1024  # largest request body (bytes); larger gets 413
    cors_origins: str = ""  # comma-separated browser origins allowed to call the API ("*" = any); "" = none
    use_4bit: bool = False  # load the weights in 4-bit NF4 (bitsandbytes) to save memory
    merge_adapter: bool = False  # merge an adapter into the base: faster steps, but no "base" id beside it
    conversations_dir: str = path_field("conversations")  # where the chat page saves and loads conversations


def check_config(cfg: Config) -> str | None:
    """Flag values a user can fix, checked before the model loads; returns the API key (or None)."""
    if not 0 <= cfg.port <= 65535:
        raise UserError(f"--port {cfg.port}: must be 0..65535 (0 = any free port)")
    for name in ("max_tokens", "max_concurrency", "max_body_bytes"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name} {getattr(cfg, name)}: must be at least 1")
    if cfg.max_queue < 0 or cfg.max_context < 0:
        raise UserError("--max_queue and --max_context must be >= 0")
    if not cfg.api_key_env:
        return None
    key = os.environ.get(cfg.api_key_env, "").strip()
    if not key:
        raise UserError(f"--api_key_env {cfg.api_key_env}: that environment variable is unset or empty "
                        f"(export {cfg.api_key_env}=<key>, or drop --api_key_env to serve without a key)")
    return key


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@cli_main
def main(cfg: Config) -> None:
    api_key = check_config(cfg)
    # Folder, device and precision decided once (a wrong path or setting is one line before anything loads).
    plan = make_plan(cfg.model, device=cfg.device, precision=cfg.precision, use_4bit=cfg.use_4bit)
    print(plan.describe(), flush=True)
    sock = bind_socket(cfg.host, cfg.port)
    model, tokenizer = load_for_generation(plan, merge=cfg.merge_adapter)
    limit = context_limit(model, tokenizer, cfg.max_context)
    if cfg.max_tokens >= limit:
        raise UserError(f"--max_tokens {cfg.max_tokens}: must be below the context limit {limit}")
    settings = ServerSettings(
        model_name=cfg.model_name or display_path(repo_path(cfg.model)), context_limit=limit,
        default_max_tokens=cfg.max_tokens, max_concurrency=cfg.max_concurrency, max_queue=cfg.max_queue,
        max_body_bytes=cfg.max_body_bytes, api_key=api_key,
        cors_origins=tuple(o.strip() for o in cfg.cors_origins.split(",") if o.strip()),
        conversations_dir=str(repo_path(cfg.conversations_dir)))
    app = create_app(model, tokenizer, settings)
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    print(NOTICE, flush=True)
    if not api_key and not is_loopback(cfg.host):
        print(f"[serve] warning: listening on {cfg.host} without --api_key_env: anyone who can reach this port "
              f"can use the model", flush=True)
    print(f"[serve] model {settings.model_name!r}, context {limit} tokens, default max_tokens {cfg.max_tokens}, "
          f"{cfg.max_concurrency} at a time + {cfg.max_queue} waiting, API key "
          f"{'required' if api_key else 'not required'}", flush=True)
    print(f"[serve] models: {', '.join(app.state.variants.ids)}", flush=True)
    print(f"[serve] chat page: http://{url_host}:{port}/", flush=True)
    print(f"[serve] listening on http://{url_host}:{port}/v1 (Ctrl-C stops)", flush=True)
    run_server(app, sock)


if __name__ == "__main__":
    main(parse_config(Config))
