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

// A step's log as numbered lines, each with an anchor (#s<step>-L<n>),
// ANSI SGR colours turned into styled spans; other escape sequences
// (cursor moves) are dropped. A lone carriage return starts the line over,
// as a terminal shows a progress bar.
function logWriter(pre, position) {
  const style = { bold: false, dim: false, color: 0 };
  let row = null, text = null, count = 0;
  const newRow = () => {
    count += 1;
    const id = "s" + position + "-L" + count;
    row = document.createElement("span");
    row.className = "row";
    row.id = id;
    const number = document.createElement("a");
    number.className = "ln";
    number.href = "#" + id;
    number.textContent = count;
    number.setAttribute("aria-hidden", "true");
    number.tabIndex = -1;
    text = document.createElement("span");
    text.className = "lt";
    row.append(number, text);
    pre.appendChild(row);
    if (location.hash === "#" + id) showTarget(row);
  };
  const put = (chunk) => {
    if (!chunk) return;
    if (!row) newRow();
    if (!style.bold && !style.dim && !style.color) { text.appendChild(document.createTextNode(chunk)); return; }
    const span = document.createElement("span");
    span.className = [style.bold ? "a-b" : "", style.dim ? "a-d" : "", style.color ? "a-" + style.color : ""].join(" ").trim();
    span.textContent = chunk;
    text.appendChild(span);
  };
  const sgr = (params) => {
    const codes = (params || "0").split(";").map(Number);
    for (let i = 0; i < codes.length; i++) {
      const code = codes[i];
      if (code === 0) { style.bold = false; style.dim = false; style.color = 0; }
      else if (code === 1) style.bold = true;
      else if (code === 2) style.dim = true;
      else if (code === 22) { style.bold = false; style.dim = false; }
      else if (code >= 30 && code <= 37) style.color = code;
      else if (code >= 90 && code <= 97) style.color = code - 60;
      else if (code === 39) style.color = 0;
      // 256 colours and true colour: their arguments are not codes.
      else if (code === 38 || code === 48) i += codes[i + 1] === 5 ? 2 : 4;
    }
  };
  const plain = (chunk) => {
    const lines = chunk.replace(/\r\n/g, "\n").split("\n");
    lines.forEach((line, index) => {
      if (index > 0) { if (!row) newRow(); row = null; }
      const parts = line.split("\r");
      parts.forEach((part, at) => {
        if (at > 0 && row) text.textContent = "";
        put(part.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "").replace(/\x1b[()][A-Z0-9]/g, ""));
      });
    });
  };
  let carry = "";
  return {
    write(data) {
      // A CRLF split across two writes is still one line end.
      data = carry + data;
      carry = data.endsWith("\r") ? "\r" : "";
      if (carry) data = data.slice(0, -1);
      const pattern = /\x1b\[([0-9;]*)m/g;
      let last = 0, match;
      while ((match = pattern.exec(data)) !== null) {
        plain(data.slice(last, match.index));
        last = pattern.lastIndex;
        sgr(match[1]);
      }
      plain(data.slice(last));
    },
  };
}

// The line a link points at: its step opened, scrolled to, marked.
function showTarget(row) {
  document.querySelectorAll(".row.target").forEach((r) => r.classList.remove("target"));
  row.classList.add("target");
  const details = row.closest("details");
  if (details) details.open = true;
  row.scrollIntoView({ block: "center" });
}

window.addEventListener("hashchange", () => {
  const row = location.hash && document.getElementById(location.hash.slice(1));
  if (row && row.classList.contains("row")) showTarget(row);
});

function badge(state) {
  const span = document.createElement("span");
  const cls = { running: "ok", passed: "ok", failed: "bad", error: "bad", queued: "wait", cancelled: "wait", pending: "wait" }[state] || "none";
  span.className = "badge " + cls;
  span.textContent = state;
  return span;
}

function formatMs(ms) {
  if (ms < 1000) return ms + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  return Math.floor(ms / 60000) + " min " + Math.floor((ms % 60000) / 1000) + " s";
}

function followRun(section) {
  const steps = section.querySelector("ol.steps");
  const writers = {};
  const stepItem = (data) => {
    let li = steps.querySelector('[data-step="' + data.position + '"]');
    if (!li) {
      li = document.createElement("li");
      li.className = "step";
      li.dataset.step = data.position;
      li.innerHTML = '<details><summary><span class="name"></span> <span class="status"></span> <span class="duration"></span> <span class="exit"></span></summary><pre class="log"></pre></details>';
      li.querySelector(".name").textContent = data.name || "step " + data.position;
      li.querySelector("pre").setAttribute("aria-label", "Log of " + (data.name || "step"));
      steps.appendChild(li);
      const none = document.getElementById("no-steps");
      if (none) none.remove();
    }
    return li;
  };
  // A step the reader opened or closed stays as they left it.
  steps.addEventListener("click", (event) => {
    const summary = event.target.closest("summary");
    if (summary) summary.parentElement.dataset.touched = "true";
  });
  // A running run's duration counts up until it ends. When the run
  // starts or ends, the page's facts (start time, duration) are read again.
  let ticking = null;
  const startClock = () => {
    clearInterval(ticking);
    const clock = document.getElementById("run-duration");
    if (!clock || !clock.dataset.started) return;
    const started = Date.parse(clock.dataset.started);
    ticking = setInterval(() => {
      clock.textContent = formatMs(Math.max(0, Date.now() - started)) + " so far";
    }, 1000);
  };
  const refreshFacts = async () => {
    try {
      const answer = await fetch(location.pathname, { headers: { Accept: "text/html" } });
      if (!answer.ok) return;
      const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
      const times = fresh.getElementById("run-times");
      if (times) document.getElementById("run-times").replaceWith(times);
      startClock();
    } catch (error) {
      // The page keeps what it shows.
    }
  };
  // Only a page drawn before the run ended has facts to bring up to date.
  const drawnLive = Boolean(document.getElementById("cancel"));
  const initial = document.getElementById("run-duration");
  let sawStart = Boolean(initial && initial.dataset.started);
  startClock();
  // The stream replays every log from the start: clear what was shown.
  steps.querySelectorAll("pre.log").forEach((pre) => { pre.textContent = ""; });
  const source = new EventSource(section.dataset.events);
  source.addEventListener("step", (event) => {
    const data = JSON.parse(event.data);
    const li = stepItem(data);
    li.querySelector(".status").replaceChildren(badge(data.status));
    if (data.duration_ms != null) li.querySelector(".duration").textContent = formatMs(data.duration_ms);
    li.querySelector(".exit").textContent = data.exit_code != null ? "exit " + data.exit_code : "";
    const details = li.querySelector("details");
    if (!details.dataset.touched) details.open = data.status === "running" || data.status === "failed";
    if (!sawStart && data.status === "running") { sawStart = true; refreshFacts(); }
  });
  source.addEventListener("log", (event) => {
    const data = JSON.parse(event.data);
    const pre = stepItem(data).querySelector("pre.log");
    writers[data.position] = writers[data.position] || logWriter(pre, data.position);
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    writers[data.position].write(data.text);
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
    clearInterval(ticking);
    if (drawnLive) refreshFacts();
    const cancel = document.getElementById("cancel");
    if (cancel) cancel.remove();
    section.dataset.ended = "true";
    source.close();
  });
}

async function openTerminal(element) {
  const status = document.getElementById("terminal-status");
  const term = new Terminal({ cursorBlink: true, convertEol: false });
  // The terminal fills its box, and follows it when the window resizes;
  // each new size is sent to the sandbox's PTY (onResize below).
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(element);
  fit.fit();
  element.dataset.size = term.cols + "x" + term.rows;
  new ResizeObserver(() => fit.fit()).observe(element);
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
    element.dataset.size = cols + "x" + rows;
    if (socket.readyState === 1) socket.send(JSON.stringify({ resize: { cols, rows } }));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const run = document.getElementById("run");
  if (run && window.EventSource) followRun(run);
  const terminal = document.getElementById("terminal");
  if (terminal && window.Terminal && window.FitAddon) openTerminal(terminal);
});
