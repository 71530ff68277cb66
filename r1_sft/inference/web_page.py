"""The chat page on the server: ``/`` and its files (``web/``), and saved conversations for it.

The page is a client of the same ``/v1/chat/completions`` every other client calls (streamed,
with the key in ``Authorization`` when the server has one). Its files are the project's own
(``r1_sft/inference/web/``: HTML, one script, one style sheet, a small markdown renderer that
escapes all model text): no build step, nothing fetched from elsewhere.

Conversations go through ``chat_store``, the terminal chat's code and format, inside the
server's conversations folder only:

  GET  /api/conversations          saved files, newest first: [{"name", "timestamp", "turns"}]
  GET  /api/conversations/NAME     one file's record (400 with the reason when it is damaged)
  POST /api/conversations          {"name", "model", "settings": {...}, "conversation": [...]} -> {"name"}

These, like /v1, need the key when the server has one; the page's own files do not (they hold no data).
"""
from __future__ import annotations

from pathlib import Path

from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from r1_sft.inference.chat_store import (
    ConversationFileError,
    check_conversation,
    conversation_record,
    load_conversation,
    safe_conversation_path,
    save_conversation,
    saved_conversations,
)
from r1_sft.inference.conversation import NOTICE, ChatSettings, set_setting
from r1_sft.inference.decoding import TEMPERATURE, TOP_P
from r1_sft.inference.openai_api import ApiError, bad_request, check_api_key

WEB_DIR = Path(__file__).resolve().parent / "web"


def page_settings(body: dict, context_limit: int) -> ChatSettings:
    """The page's settings as the terminal chat's (checked by the chat's own ``set`` rules)."""
    settings = ChatSettings()
    values = body.get("settings") or {}
    if not isinstance(values, dict):
        raise bad_request("settings must be an object", "settings")
    for name in ("temperature", "top_p", "max_new_tokens"):
        if values.get(name) is not None:
            try:
                set_setting(settings, name, str(values[name]), context_limit)
            except ValueError as exc:
                raise bad_request(f"settings.{name}: {exc}", f"settings.{name}") from None
    return settings


def add_page_routes(app, settings) -> None:
    """``/`` (the page), ``/static/`` (its files), ``/api/info`` and ``/api/conversations``."""
    folder = Path(settings.conversations_dir)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/info")
    async def info():
        # What the page needs before the key is typed: no model data, only whether a key is needed.
        return {"key_required": settings.api_key is not None, "notice": NOTICE,
                "defaults": {"temperature": TEMPERATURE, "top_p": TOP_P,
                             "max_tokens": settings.default_max_tokens},
                "context_limit": settings.context_limit}

    @app.get("/api/conversations")
    async def list_saved(request: Request):
        check_api_key(request.headers.get("authorization"), settings.api_key)
        rows = []
        for path in saved_conversations(folder):
            try:
                record = load_conversation(path)
            except ConversationFileError:
                continue  # a damaged file is listed by the terminal chat, which says why; the page skips it
            rows.append({"name": path.stem, "timestamp": record.get("timestamp", ""),
                         "turns": len(record["conversation"]) // 2})
        return {"conversations": rows}

    @app.get("/api/conversations/{name}")
    async def load_saved(name: str, request: Request):
        check_api_key(request.headers.get("authorization"), settings.api_key)
        path = safe_conversation_path(folder, name)
        if not path.is_file():
            raise ApiError(404, f"no saved conversation named {name!r}", code="not_found")
        try:
            return load_conversation(path)
        except ConversationFileError as exc:
            raise bad_request(f"{path.name}: {exc}") from None

    @app.post("/api/conversations")
    async def save(request: Request):
        check_api_key(request.headers.get("authorization"), settings.api_key)
        try:
            body = await request.json()
        except ValueError:
            raise bad_request("the request body is not valid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("name", ""), str):
            raise bad_request("send {\"name\", \"model\", \"settings\", \"conversation\"}")
        try:
            turns = check_conversation({"conversation": body.get("conversation")})["conversation"]
        except ConversationFileError as exc:
            raise bad_request(f"conversation: {exc}", "conversation") from None
        if not turns:
            raise bad_request("nothing to save: the conversation has no turns yet", "conversation")
        record = conversation_record(str(body.get("model") or settings.model_name),
                                     page_settings(body, settings.context_limit), turns)
        path = save_conversation(safe_conversation_path(folder, body.get("name", "")), record)
        print(f"[serve] conversation saved: {path.name} ({len(turns) // 2} turns)", flush=True)
        return JSONResponse({"name": path.stem}, status_code=201)
