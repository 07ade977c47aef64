// The forge's page script: copy buttons, confirmations, live run logs with
// ANSI colours (server-sent events), and the browser terminal (xterm.js
// over the forge's WebSocket terminal). No framework, no build step.
"use strict";

function csrf() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

// Copy buttons: data-copy="#input".
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const input = document.querySelector(button.dataset.copy);
  input.select();
  const done = () => { button.textContent = "Copied"; };
  if (navigator.clipboard) navigator.clipboard.writeText(input.value).then(done, () => document.execCommand("copy") && done());
  else if (document.execCommand("copy")) done();
});

// Forms that ask first: data-confirm="question".
document.addEventListener("submit", (event) => {
  const question = event.target.dataset && event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});

// ANSI SGR sequences to styled spans; everything else is plain text.
function appendAnsi(pre, text, style) {
  const pattern = /\x1b\[([0-9;]*)m/g;
  let last = 0, match;
  const flush = (chunk) => {
    if (!chunk) return;
    if (!style.bold && !style.color) { pre.appendChild(document.createTextNode(chunk)); return; }
    const span = document.createElement("span");
    span.className = [style.bold ? "a-b" : "", style.color ? "a-" + style.color : ""].join(" ").trim();
    span.textContent = chunk;
    pre.appendChild(span);
  };
  while ((match = pattern.exec(text)) !== null) {
    flush(text.slice(last, match.index));
    last = pattern.lastIndex;
    for (const code of (match[1] || "0").split(";").map(Number)) {
      if (code === 0) { style.bold = false; style.color = 0; }
      else if (code === 1) style.bold = true;
      else if (code === 22) style.bold = false;
      else if (code >= 30 && code <= 37) style.color = code;
      else if (code >= 90 && code <= 97) style.color = code - 60;
      else if (code === 39) style.color = 0;
    }
  }
  // Other escape sequences (cursor moves) are dropped from logs.
  flush(text.slice(last).replace(/\x1b\[[0-9;?]*[A-Za-z]/g, ""));
}

function badge(state) {
  const span = document.createElement("span");
  const cls = { running: "ok", passed: "ok", failed: "bad", error: "bad", queued: "wait", cancelled: "wait", pending: "wait" }[state] || "none";
  span.className = "badge " + cls;
  span.textContent = state;
  return span;
}

function followRun(section) {
  const steps = section.querySelector("ol.steps");
  const styles = {};
  const stepItem = (data) => {
    let li = steps.querySelector('[data-step="' + data.position + '"]');
    if (!li) {
      li = document.createElement("li");
      li.className = "step";
      li.dataset.step = data.position;
      li.innerHTML = '<details open><summary><span class="name"></span> <span class="status"></span> <span class="duration"></span></summary><pre class="log"></pre></details>';
      li.querySelector(".name").textContent = data.name || "step " + data.position;
      li.querySelector("pre").setAttribute("aria-label", "Log of " + (data.name || "step"));
      steps.appendChild(li);
      const none = document.getElementById("no-steps");
      if (none) none.remove();
    }
    return li;
  };
  // The stream replays every log from the start: clear what was shown.
  steps.querySelectorAll("pre.log").forEach((pre) => { pre.textContent = ""; });
  const source = new EventSource(section.dataset.events);
  source.addEventListener("step", (event) => {
    const data = JSON.parse(event.data);
    const li = stepItem(data);
    const status = li.querySelector(".status");
    status.replaceChildren(badge(data.status));
    if (data.duration_ms != null) {
      li.querySelector(".duration").textContent = data.duration_ms < 1000 ? data.duration_ms + " ms" : (data.duration_ms / 1000).toFixed(1) + " s";
    }
  });
  source.addEventListener("log", (event) => {
    const data = JSON.parse(event.data);
    const pre = stepItem(data).querySelector("pre.log");
    styles[data.position] = styles[data.position] || { bold: false, color: 0 };
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    appendAnsi(pre, data.text, styles[data.position]);
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  });
  source.addEventListener("end", (event) => {
    const data = JSON.parse(event.data);
    document.getElementById("run-state").replaceChildren(badge(data.state));
    if (data.error) {
      let p = document.getElementById("run-error");
      if (!p) { p = document.createElement("p"); p.id = "run-error"; p.className = "error"; section.before(p); }
      p.textContent = data.error;
    }
    section.dataset.ended = "true";
    source.close();
  });
}

async function openTerminal(element) {
  const status = document.getElementById("terminal-status");
  const term = new Terminal({ cols: 100, rows: 30, cursorBlink: true, convertEol: false });
  term.open(element);
  term.focus();
  let answer;
  try {
    answer = await fetch(element.dataset.ticket, { method: "POST", headers: { "X-CSRF-Token": csrf() } });
  } catch (error) {
    status.textContent = "Could not reach the forge: " + error;
    return;
  }
  if (!answer.ok) { status.textContent = "Could not open the terminal: HTTP " + answer.status; return; }
  const { ticket } = await answer.json();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = scheme + "//" + location.host + "/v1/vms/" + encodeURIComponent(element.dataset.vm) +
    "/terminal?cols=" + term.cols + "&rows=" + term.rows + "&ticket=" + encodeURIComponent(ticket);
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  socket.onopen = () => { status.textContent = "Connected."; element.dataset.connected = "true"; };
  socket.onmessage = (event) => {
    term.write(typeof event.data === "string" ? event.data : new Uint8Array(event.data));
  };
  socket.onclose = (event) => { status.textContent = "Disconnected" + (event.reason ? ": " + event.reason : "."); };
  term.onData((data) => { if (socket.readyState === 1) socket.send(encoder.encode(data)); });
  term.onResize(({ cols, rows }) => {
    if (socket.readyState === 1) socket.send(JSON.stringify({ resize: { cols, rows } }));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const run = document.getElementById("run");
  if (run && window.EventSource) followRun(run);
  const terminal = document.getElementById("terminal");
  if (terminal && window.Terminal) openTerminal(terminal);
});
