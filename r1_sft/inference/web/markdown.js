// A small markdown renderer for model answers: headings, paragraphs, lists, tables, quotes, code,
// bold, italic, inline code. It builds DOM nodes and sets only textContent: model text can never
// become HTML (no innerHTML anywhere), so "<img onerror=...>" in an answer shows as those characters.
"use strict";
(function () {
  const FENCE = /^\s*```/;
  const HEADING = /^\s{0,3}(#{1,6})\s+(.*)$/;
  const LIST = /^\s*([-*+]|\d+[.)、])\s+(.*)$/;
  const TABLE_RULE = /^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$/;
  const QUOTE = /^\s*>\s?(.*)$/;
  const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/;
  const INLINE = /(`[^`\n]+`)|(\*\*[^\n]+?\*\*)|(__[^\n]+?__)|(~~[^\n]+?~~)|(\*[^*\s\n](?:[^*\n]*[^*\s\n])?\*)/;

  function el(tag, children) {
    const node = document.createElement(tag);
    for (const child of children || []) node.append(child);
    return node;
  }

  function inline(text) {
    const out = [];
    let rest = text;
    while (rest) {
      const m = INLINE.exec(rest);
      if (!m) { out.push(document.createTextNode(rest)); break; }
      if (m.index > 0) out.push(document.createTextNode(rest.slice(0, m.index)));
      const token = m[0];
      if (m[1]) { const code = el("code"); code.textContent = token.slice(1, -1); out.push(code); }
      else if (m[2] || m[3]) out.push(el("strong", inline(token.slice(2, -2))));
      else if (m[4]) out.push(el("del", inline(token.slice(2, -2))));
      else out.push(el("em", inline(token.slice(1, -1))));
      rest = rest.slice(m.index + token.length);
    }
    return out;
  }

  function cells(line) {
    let s = line.trim();
    if (s.startsWith("|")) s = s.slice(1);
    if (s.endsWith("|")) s = s.slice(0, -1);
    return s.split("|").map((c) => c.trim());
  }

  function render(text) {
    const root = document.createDocumentFragment();
    const lines = String(text || "").replace(/\r\n?/g, "\n").split("\n");
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (!line.trim()) { i++; continue; }
      if (FENCE.test(line)) {
        const body = [];
        for (i++; i < lines.length && !FENCE.test(lines[i]); i++) body.push(lines[i]);
        i++;
        const code = el("code"); code.textContent = body.join("\n");
        root.append(el("pre", [code]));
        continue;
      }
      let m = HEADING.exec(line);
      if (m) { root.append(el("h" + Math.min(6, m[1].length + 2), inline(m[2]))); i++; continue; }
      if (RULE.test(line)) { root.append(el("hr")); i++; continue; }
      if (line.includes("|") && i + 1 < lines.length && TABLE_RULE.test(lines[i + 1])) {
        const head = el("tr", cells(line).map((c) => el("th", inline(c))));
        const body = el("tbody");
        for (i += 2; i < lines.length && lines[i].includes("|") && lines[i].trim(); i++) {
          body.append(el("tr", cells(lines[i]).map((c) => el("td", inline(c)))));
        }
        root.append(el("table", [el("thead", [head]), body]));
        continue;
      }
      if (QUOTE.test(line)) {
        const body = [];
        for (; i < lines.length && (m = QUOTE.exec(lines[i])); i++) body.push(m[1]);
        root.append(el("blockquote", [render(body.join("\n"))]));
        continue;
      }
      if ((m = LIST.exec(line))) {
        const ordered = /\d/.test(m[1]);
        const list = el(ordered ? "ol" : "ul");
        if (ordered) list.start = parseInt(m[1], 10) || 1;
        for (; i < lines.length && (m = LIST.exec(lines[i])) && /\d/.test(m[1]) === ordered; i++) {
          list.append(el("li", inline(m[2])));
        }
        root.append(list);
        continue;
      }
      const para = el("p");
      for (let first = true; i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) && !HEADING.test(lines[i])
           && !LIST.test(lines[i]) && !QUOTE.test(lines[i]); i++, first = false) {
        if (!first) para.append(el("br"));
        para.append(...inline(lines[i]));
      }
      root.append(para);
    }
    return root;
  }

  window.renderMarkdown = render;
})();
