// The chat page: a client of the server's own /v1/chat/completions (streamed server-sent events),
// as any OpenAI client is. One transcript of exchanges; each exchange holds one answer per model
// asked (two in side-by-side mode, same question, same seed). Earlier answers go back to a model
// without their reasoning, and only that model's own answers (as the terminal chat does).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const ERRORS = { 400: "请求有误", 401: "需要正确的 API key（设置里填写）", 404: "未找到", 413: "请求太大",
                   429: "服务器繁忙", 499: "已取消", 500: "生成失败", 503: "服务器正在停止" };
  const state = { models: [], tuned: null, exchanges: [], controllers: new Set(), busy: false, defaults: {} };

  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = $("api_key").value.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  // One readable line for an HTTP error: status, what it means, the server's message.
  async function errorLine(resp) {
    let message = "";
    try { message = (await resp.json()).error.message; } catch (e) { message = resp.statusText; }
    const retry = resp.headers.get("Retry-After");
    return `${resp.status} ${ERRORS[resp.status] || "错误"}: ${message}` + (retry ? `（${retry} 秒后重试）` : "");
  }

  async function api(path, options) {
    const resp = await fetch(path, { ...(options || {}), headers: headers() });
    if (!resp.ok) throw new Error(await errorLine(resp));
    return resp.json();
  }

  // Stream one completion; onPart("reasoning" | "answer", text). Resolves to
  // {done, finish, error, stopped}: done = the server's [DONE] arrived.
  async function streamChat({ model, messages, settings, onPart, signal }) {
    const body = { model, messages, stream: true, temperature: settings.temperature, top_p: settings.top_p,
                   max_tokens: settings.max_tokens };
    if (settings.seed !== null) body.seed = settings.seed;
    const result = { done: false, finish: null, error: null, stopped: false, status: 0 };
    let resp;
    try {
      resp = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
    } catch (e) {
      if (e.name === "AbortError") { result.stopped = true; return result; }
      result.error = "无法连接服务器: " + e.message; return result;
    }
    result.status = resp.status;
    if (!resp.ok) { result.error = await errorLine(resp); return result; }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data: ")) continue;
            const data = line.slice(6);
            if (data === "[DONE]") { result.done = true; continue; }
            const chunk = JSON.parse(data);
            if (chunk.error) { result.error = "500 生成失败: " + chunk.error.message; continue; }
            for (const choice of chunk.choices || []) {
              const delta = choice.delta || {};
              if (delta.reasoning_content) onPart("reasoning", delta.reasoning_content);
              if (delta.content) onPart("answer", delta.content);
              if (choice.finish_reason) result.finish = choice.finish_reason;
            }
          }
        }
      }
    } catch (e) {
      if (e.name === "AbortError") { result.stopped = true; return result; }
      result.error = "连接中断: " + e.message; return result;
    }
    if (!result.done && !result.error) result.error = "连接中断: 回答没有完整传完";
    return result;
  }

  function settings() {
    const number = (id, fallback) => { const v = parseFloat($(id).value); return Number.isFinite(v) ? v : fallback; };
    const seedText = $("seed").value.trim();
    return { temperature: number("temperature", state.defaults.temperature), top_p: number("top_p", state.defaults.top_p),
             max_tokens: Math.round(number("max_tokens", state.defaults.max_tokens)),
             seed: seedText === "" ? null : parseInt(seedText, 10) };
  }

  function showError(text) { $("error").textContent = text || ""; $("error").hidden = !text; }

  // ------------------------------------------------------------------ the transcript

  function context(model, upTo) {
    const messages = [];
    for (const ex of state.exchanges.slice(0, upTo)) {
      const a = ex.answers[model];
      if (!a || a.phase !== "done") continue;  // a model hears its own finished answers only
      messages.push({ role: "user", content: ex.question }, { role: "assistant", content: a.content });
    }
    return messages;
  }

  function renderAnswer(view, a) {
    view.dataset.phase = a.phase;
    view.querySelector(".reasoning").hidden = !a.reasoning;
    view.querySelector(".reasoning-text").textContent = a.reasoning;
    view.querySelector(".reasoning summary").textContent = `思考过程（${a.reasoning.length} 字）`;
    const text = view.querySelector(".answer-text");
    text.replaceChildren(window.renderMarkdown(a.content));
    const status = view.querySelector(".status");
    status.classList.toggle("bad", Boolean(a.error));
    status.textContent = a.error || a.note || "";
  }

  function answerView(model) {
    const view = document.createElement("section");
    view.className = "answer";
    view.dataset.model = model;
    const label = document.createElement("div");
    label.className = "model-label";
    label.textContent = model === "base" ? "base（未微调）" : `${model}（微调后）`;
    const details = document.createElement("details");
    details.className = "reasoning";
    details.open = true;
    details.append(document.createElement("summary"));
    const reasoning = document.createElement("div");
    reasoning.className = "reasoning-text";
    details.append(reasoning);
    const text = document.createElement("div");
    text.className = "answer-text";
    const status = document.createElement("div");
    status.className = "status";
    view.append(label, details, text, status);
    return view;
  }

  function exchangeView(ex) {
    const view = document.createElement("article");
    view.className = "exchange";
    const q = document.createElement("div");
    q.className = "question";
    q.textContent = ex.question;
    const answers = document.createElement("div");
    answers.className = "answers" + (Object.keys(ex.answers).length > 1 ? " pair" : "");
    for (const model of Object.keys(ex.answers)) {
      const a = answersView(answers, model);
      renderAnswer(a, ex.answers[model]);
    }
    view.append(q, answers);
    return view;
  }

  function answersView(container, model) {
    const view = answerView(model);
    container.append(view);
    return view;
  }

  function redraw() {
    $("transcript").replaceChildren(...state.exchanges.map(exchangeView));
    updateButtons();
  }

  function updateButtons() {
    $("send").disabled = state.busy;
    $("stop").disabled = !state.busy;
    $("regenerate").disabled = state.busy || state.exchanges.length === 0;
  }

  async function ask(question) {
    const models = $("side-by-side").checked ? [state.tuned, "base"] : [$("model").value];
    const values = settings();
    if (values.seed === null) values.seed = Math.floor(Math.random() * 2 ** 31);  // one seed for both columns
    const ex = { question, seed: values.seed, answers: {} };
    for (const m of models) ex.answers[m] = { reasoning: "", content: "", error: null, note: "", phase: "waiting" };
    const index = state.exchanges.push(ex) - 1;
    const view = exchangeView(ex);
    $("transcript").append(view);
    view.scrollIntoView({ block: "end" });
    state.busy = true;
    updateButtons();
    showError("");
    await Promise.all(models.map(async (model) => {
      const a = ex.answers[model];
      const node = view.querySelector(`.answer[data-model="${CSS.escape(model)}"]`);
      const controller = new AbortController();
      state.controllers.add(controller);
      const messages = [...context(model, index), { role: "user", content: question }];
      const result = await streamChat({ model, messages, settings: values, signal: controller.signal, onPart: (kind, text) => {
        if (kind === "reasoning") { a.reasoning += text; a.phase = "reasoning"; }
        else {
          if (a.phase !== "answer") node.querySelector(".reasoning").open = false;  // thinking done: fold it
          a.content += text; a.phase = "answer";
        }
        renderAnswer(node, a);
      } });
      state.controllers.delete(controller);
      if (result.stopped) { a.phase = "stopped"; a.note = "已停止 (stopped)"; }
      else if (result.error) { a.phase = "error"; a.error = result.error; }
      else {
        a.phase = "done";
        a.note = `seed ${values.seed} · ` + (result.finish === "length" ? "达到 max new tokens 上限，回答被截断" : "完成")
          + (a.content ? "" : "（思考未结束，没有回答）");
      }
      renderAnswer(node, a);
    }));
    state.busy = false;
    updateButtons();
  }

  function send() {
    const question = $("input").value.trim();
    if (!question || state.busy) return;
    $("input").value = "";
    ask(question);
  }

  function stop() { for (const c of state.controllers) c.abort(); }

  function regenerate() {
    if (state.busy || !state.exchanges.length) return;
    const last = state.exchanges.pop();
    redraw();
    ask(last.question);
  }

  // ------------------------------------------------------------------ saved conversations

  async function refreshSaved() {
    try {
      const { conversations } = await api("/api/conversations");
      $("saved_list").replaceChildren(...conversations.map((c) => {
        const o = document.createElement("option");
        o.value = c.name; o.textContent = `${c.name}（${c.turns} 轮）`;
        return o;
      }));
    } catch (e) { showError(e.message); }
  }

  async function save() {
    const model = $("side-by-side").checked ? state.tuned : $("model").value;
    const conversation = [];
    for (const ex of state.exchanges) {
      const a = ex.answers[model];
      if (!a || a.phase !== "done") continue;  // finished answers, as the terminal chat keeps them
      conversation.push({ role: "user", content: ex.question, reasoning: "" },
                        { role: "assistant", content: a.content, reasoning: a.reasoning });
    }
    const s = settings();
    try {
      const { name } = await api("/api/conversations", { method: "POST", body: JSON.stringify({
        name: $("save_name").value.trim(), model, conversation,
        settings: { temperature: s.temperature, top_p: s.top_p, max_new_tokens: s.max_tokens } }) });
      showError("");
      $("notice").textContent = `已保存 ${name}（conversations/${name}.json）`;
      await refreshSaved();
    } catch (e) { showError(e.message); }
  }

  async function load() {
    const name = $("saved_list").value;
    if (!name || state.busy) return;
    try {
      const record = await api("/api/conversations/" + encodeURIComponent(name));
      const model = $("side-by-side").checked ? state.tuned : $("model").value;
      state.exchanges = [];
      const turns = record.conversation;
      for (let i = 0; i + 1 < turns.length; i += 2) {
        state.exchanges.push({ question: turns[i].content, answers: { [model]: {
          reasoning: turns[i + 1].reasoning || "", content: turns[i + 1].content, error: null, note: "", phase: "done" } } });
      }
      showError("");
      $("notice").textContent = `已加载 ${name}（${state.exchanges.length} 轮）`;
      redraw();
    } catch (e) { showError(e.message); }
  }

  // ------------------------------------------------------------------ start

  async function loadModels() {
    try {
      const { data } = await api("/v1/models");
      state.models = data.map((m) => m.id);
      state.tuned = state.models[0];
      $("model").replaceChildren(...state.models.map((id) => {
        const o = document.createElement("option"); o.value = o.textContent = id; return o;
      }));
      $("side-by-side").disabled = !state.models.includes("base") || state.models.length < 2;
      showError("");
      await refreshSaved();
    } catch (e) { showError(e.message); }
  }

  async function start() {
    const info = await (await fetch("/api/info")).json();
    state.defaults = { temperature: info.defaults.temperature, top_p: info.defaults.top_p, max_tokens: info.defaults.max_tokens };
    $("temperature").value = info.defaults.temperature;
    $("top_p").value = info.defaults.top_p;
    $("max_tokens").value = info.defaults.max_tokens;
    $("max_tokens").max = info.context_limit - 1;
    $("notice").textContent = info.notice;
    $("api_key").value = sessionStorage.getItem("r1_api_key") || "";
    $("api_key").addEventListener("change", () => { sessionStorage.setItem("r1_api_key", $("api_key").value.trim()); loadModels(); });
    $("send").addEventListener("click", send);
    $("stop").addEventListener("click", stop);
    $("regenerate").addEventListener("click", regenerate);
    $("clear").addEventListener("click", () => { if (!state.busy) { state.exchanges = []; redraw(); } });
    $("save").addEventListener("click", save);
    $("load").addEventListener("click", load);
    let composing = false;
    $("input").addEventListener("compositionstart", () => { composing = true; });
    $("input").addEventListener("compositionend", () => { composing = false; });
    $("input").addEventListener("keydown", (e) => {
      if (e.key !== "Enter" || e.shiftKey) return;           // Shift+Enter: a new line
      if (e.isComposing || composing || e.keyCode === 229) return;  // Enter confirms an IME candidate
      e.preventDefault();
      send();
    });
    updateButtons();
    await loadModels();
    document.body.dataset.ready = "1";
  }

  window.R1Chat = { streamChat, errorLine };
  start();
})();
