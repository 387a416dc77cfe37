// agent-event-router demo page. Plain browser JavaScript: no build step, no CDN.
//
// One WebSocket per page, authenticated with the picked demo user's token. It opens
// with ?thread_id=T&after_seq=N for every thread the page knows (resume at connect),
// then subscribes to "*" so threads created later flow in too. Events are
// deduplicated by event_id and checked for seq continuity per thread.
// The dead-letter panel and the counters use the admin API with the demo admin token.
"use strict";

(() => {
  const $ = (selector) => document.querySelector(selector);

  /** el("td", {class: "x", title: "y"}, child, "text", ...): a DOM node, text escaped. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "style") node.style.cssText = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const FINAL = new Set(["agent_completed", "agent_error"]);
  const RUN_COLORS = ["#6ea8fe", "#b69cff", "#4fd1c5", "#f4a261", "#f78fb3", "#9ad36a"];

  const state = {
    users: [],
    adminToken: null,
    user: null,
    token: null,
    config: null,
    threads: new Map(), // thread_id -> {info, events, seen, lastSeq, live, items}
    selected: null,
    ws: null,
    connectionId: null,
    offlineByChoice: false,
    retries: 0,
    retryTimer: null,
    resume: null,
    pongs: [],
    rtt: null,
    eventFrames: 0,
    duplicates: 0,
    deadLetters: [],
    dlSelected: null,
    dlAll: false,
    lastReplay: null,
    runColors: new Map(),
  };

  // ------------------------------------------------------------------ HTTP

  async function api(path, options = {}) {
    const response = await fetch(path, {
      ...options,
      headers: {
        authorization: `Bearer ${state.token}`,
        "content-type": "application/json",
        ...(options.headers || {}),
      },
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
    return body;
  }

  function admin(path, options = {}) {
    return api(`${state.config.admin_path}${path}`, {
      ...options,
      headers: { authorization: `Bearer ${state.adminToken}` },
    });
  }

  // ------------------------------------------------------------------ formatting

  function shortId(id) {
    if (!id) return "–";
    return id.length > 34 ? `${id.slice(0, 14)}…${id.slice(-16)}` : id;
  }

  function clock(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return "";
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
  }

  function duration(ms) {
    if (ms === null || ms === undefined) return "";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  }

  function compact(value, limit = 140) {
    if (value === null || value === undefined) return "";
    let text;
    if (typeof value === "string") text = value;
    else if (typeof value === "object" && !Array.isArray(value)) {
      text = Object.entries(value)
        .map(([k, v]) => `${k}=${typeof v === "string" ? JSON.stringify(v) : JSON.stringify(v)}`)
        .join("  ");
    } else text = JSON.stringify(value);
    return text.length > limit ? `${text.slice(0, limit - 1)}…` : text;
  }

  function runColor(runId) {
    if (!state.runColors.has(runId)) {
      state.runColors.set(runId, RUN_COLORS[state.runColors.size % RUN_COLORS.length]);
    }
    return state.runColors.get(runId);
  }

  // ------------------------------------------------------------------ users

  function renderUsers() {
    const nav = $("#users");
    nav.replaceChildren(
      ...state.users.map((user) =>
        el(
          "a",
          {
            class: `user${user.user_id === state.user.user_id ? " active" : ""}`,
            href: `?user=${encodeURIComponent(user.user_id)}`,
            style: `--user-color: ${user.color}`,
            title: `Sign in as ${user.name} (open in a second window to compare)`,
            "data-user": user.user_id,
          },
          el("span", { class: "avatar" }, user.name[0]),
          user.name,
        ),
      ),
    );
    $("#footer-user").textContent = `signed in as ${state.user.user_id}`;
    document.title = `${state.user.name} · agent-event-router demo`;
  }

  // ------------------------------------------------------------------ threads

  function addThread(info) {
    let thread = state.threads.get(info.thread_id);
    if (!thread) {
      thread = { info, events: [], seen: new Set(), lastSeq: 0, live: false, items: [] };
      state.threads.set(info.thread_id, thread);
    } else {
      thread.info = { ...thread.info, ...info };
    }
    return thread;
  }

  async function loadThreads() {
    const { threads } = await api("/api/threads");
    for (const info of threads) addThread(info);
    renderThreads();
  }

  function sortedThreads() {
    return [...state.threads.values()].sort((a, b) =>
      (b.info.created_at || "").localeCompare(a.info.created_at || ""),
    );
  }

  function renderThreads() {
    const list = $("#threads");
    const threads = sortedThreads();
    list.replaceChildren(
      ...threads.map((thread) => {
        const events = thread.events.length;
        return el(
          "li",
          {
            class: `thread${thread.info.thread_id === state.selected ? " active" : ""}`,
            title: thread.info.thread_id,
            "data-thread": thread.info.thread_id,
            onclick: () => selectThread(thread.info.thread_id),
          },
          el("span", { class: "thread-title" }, thread.info.title || "Untitled"),
          el(
            "span",
            { class: `thread-count${thread.live ? " live" : ""}` },
            `${events} event${events === 1 ? "" : "s"}`,
          ),
          el("span", { class: "thread-id" }, thread.info.thread_id),
        );
      }),
    );
    $("#threads-empty").hidden = threads.length > 0;
  }

  function selectThread(threadId) {
    state.selected = threadId;
    renderThreads();
    renderTimeline();
  }

  async function newThread() {
    const info = await api("/api/threads", { method: "POST", body: "{}" });
    addThread(info);
    selectThread(info.thread_id);
    return info.thread_id;
  }

  // ------------------------------------------------------------------ timeline

  function toolCell(frame) {
    const p = frame.payload || {};
    if (frame.type === "tool_executing") return el("td", { class: "tool" }, p.tool_name);
    if (frame.type === "tool_completed") {
      return el(
        "td",
        { class: "tool" },
        p.tool_name,
        " ",
        p.success === false
          ? el("span", { class: "failed" }, "✗ failed")
          : el("span", { class: "ms" }, duration(p.execution_time_ms)),
      );
    }
    if (FINAL.has(frame.type) && p.execution_time_ms !== undefined) {
      return el("td", { class: "tool" }, el("span", { class: "ms" }, `run ${duration(p.execution_time_ms)}`));
    }
    return el("td", { class: "tool" });
  }

  function detailCell(frame, replayed) {
    const p = frame.payload || {};
    const parts = [];
    switch (frame.type) {
      case "agent_started":
        parts.push(p.context && p.context.prompt ? `“${p.context.prompt}”` : compact(p.context));
        break;
      case "agent_thinking":
        if (p.progress_percentage !== undefined) {
          parts.push(el("span", { class: "bar" }, el("span", { style: `width:${p.progress_percentage}%` })));
        }
        if (p.step_number !== undefined) parts.push(`step ${p.step_number} · `);
        parts.push(p.reasoning);
        break;
      case "tool_executing":
        parts.push(compact(p.parameters));
        break;
      case "tool_completed":
        parts.push(p.success === false && p.result && p.result.error
          ? `${p.result.error.type}: ${p.result.error.message}`
          : compact(p.result));
        break;
      case "agent_completed":
        parts.push(p.result && p.result.answer ? p.result.answer : compact(p.result));
        break;
      case "agent_error":
        parts.push(p.error);
        break;
      case "progress_update":
        if (p.progress && typeof p.progress.percentage === "number") {
          parts.push(el("span", { class: "bar" }, el("span", { style: `width:${p.progress.percentage}%` })));
        }
        parts.push(compact(p.progress));
        break;
      default:
        parts.push(`${p.notification_type || ""} ${compact(p.data)}`);
    }
    if (replayed) parts.push(el("span", { class: "tag", title: "delivered by the resume replay" }, "resumed"));
    const text = parts.filter((part) => typeof part === "string").join("");
    return el("td", { class: "detail", title: text }, el("span", { class: "clamp" }, ...parts));
  }

  function eventRows(item, previous) {
    const frame = item.frame;
    const rows = [];
    if (item.gap) {
      rows.push(
        el("tr", { class: "gap" },
          el("td", { colspan: 7 }, `gap: seq ${item.gap.from}–${item.gap.to} is no longer in the thread's history`)),
      );
      return rows;
    }
    if (!previous || previous.frame.run_id !== frame.run_id) {
      rows.push(
        el("tr", { class: "run-head", style: `--run-color: ${runColor(frame.run_id)}` },
          el("td", { colspan: 7 },
            el("span", { class: "run-chip" }),
            "run ", el("span", { class: "run-id", title: frame.run_id }, shortId(frame.run_id)),
            `  ·  ${frame.agent_name}`)),
      );
    }
    let delta = "";
    let slow = false;
    if (previous && previous.frame.timestamp) {
      const ms = new Date(frame.timestamp) - new Date(previous.frame.timestamp);
      delta = `+${duration(ms)}`;
      slow = ms > 1000;
    }
    const failed = frame.type === "tool_completed" && frame.payload && frame.payload.success === false;
    const row = el(
      "tr",
      {
        class: `event${item.fresh ? " fresh" : ""}`,
        "data-seq": frame.seq,
        "data-type": frame.type,
        "data-event-id": frame.event_id,
        title: "click for the raw frame",
      },
      el("td", { class: "seq" }, `#${frame.seq}`),
      el("td", { class: "time" }, clock(frame.timestamp)),
      el("td", { class: `delta${slow ? " slow" : ""}` }, delta),
      el("td", { class: "type" }, el("span", { class: `badge t-${frame.type}${failed ? " failed" : ""}` }, frame.type)),
      el("td", { class: "agent" }, frame.agent_name),
      toolCell(frame),
      detailCell(frame, item.replayed),
    );
    row.addEventListener("click", () => {
      const next = row.nextElementSibling;
      if (next && next.classList.contains("raw")) {
        next.remove();
        row.classList.remove("expanded");
        return;
      }
      row.classList.add("expanded");
      row.after(el("tr", { class: "raw" }, el("td", { colspan: 7 },
        el("pre", { class: "json" }, JSON.stringify(frame, null, 2)))));
    });
    rows.push(row);
    item.fresh = false;
    return rows;
  }

  function renderTimeline() {
    const body = $("#timeline");
    const thread = state.threads.get(state.selected);
    $("#timeline-title").textContent = thread ? thread.info.title : "Timeline";
    $("#timeline-thread").textContent = thread ? thread.info.thread_id : "";
    renderSummary();
    if (!thread) {
      body.replaceChildren();
      $("#timeline-empty").hidden = false;
      return;
    }
    const rows = [];
    let previous = null;
    for (const item of thread.items) {
      rows.push(...eventRows(item, previous));
      if (!item.gap) previous = item;
    }
    body.replaceChildren(...rows);
    $("#timeline-empty").hidden = thread.items.length > 0;
  }

  function renderSummary() {
    const thread = state.threads.get(state.selected);
    const box = $("#thread-summary");
    if (!thread) {
      box.replaceChildren();
      return;
    }
    const runs = new Set(thread.events.map((frame) => frame.run_id)).size;
    box.replaceChildren(
      el("b", {}, runs), ` run${runs === 1 ? "" : "s"} · `,
      el("b", {}, thread.events.length), ` event${thread.events.length === 1 ? "" : "s"} · last seq `,
      el("b", {}, thread.lastSeq ? `#${thread.lastSeq}` : "–"),
      thread.live ? el("span", { class: "thread-count live" }, " running") : "",
    );
  }

  function appendToTimeline(thread, item) {
    if (thread.info.thread_id !== state.selected) return;
    const events = thread.items.filter((i) => !i.gap);
    const previous = item.gap ? null : events.length > 1 ? events[events.length - 2] : null;
    $("#timeline").append(...eventRows(item, previous));
    $("#timeline-empty").hidden = true;
    renderSummary();
    const scroller = $("#timeline-scroll");
    scroller.scrollTop = scroller.scrollHeight;
  }

  // ------------------------------------------------------------------ WebSocket

  function setStatus(status, meta) {
    const pill = $("#conn-status");
    pill.dataset.state = status;
    pill.querySelector(".pill-text").textContent = status;
    $("#conn-meta").textContent = meta || "";
    $("#btn-disconnect").disabled = status === "offline";
  }

  function statusMeta() {
    const rtt = state.rtt === null ? "" : ` · ${state.rtt} ms`;
    return `${state.connectionId || ""}${rtt}`;
  }

  function connect(why) {
    clearTimeout(state.retryTimer);
    const params = new URLSearchParams({ token: state.token });
    const after = new Map();
    for (const thread of state.threads.values()) {
      params.append("thread_id", thread.info.thread_id);
      params.append("after_seq", String(thread.lastSeq));
      after.set(thread.info.thread_id, thread.lastSeq);
    }
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}${state.config.ws_path}?${params}`);
    state.ws = socket;
    state.pongs = [];
    state.resume = why === "initial"
      ? null
      : { after, lastSeq: new Map(), replayed: 0, gaps: 0, duplicates: 0, done: false };
    setStatus("connecting", why === "initial" ? "" : "resuming…");
    socket.onmessage = (message) => {
      if (state.ws === socket) onFrame(socket, JSON.parse(message.data), after.size > 0);
    };
    socket.onclose = (event) => {
      if (state.ws !== socket) return;
      state.ws = null;
      state.connectionId = null;
      for (const pong of state.pongs) pong.reject(new Error("closed"));
      state.pongs = [];
      if (state.offlineByChoice) {
        setStatus("offline", "disconnected: events published meanwhile stay in history");
        return;
      }
      const delay = Math.min(8000, 500 * 2 ** state.retries) * (0.75 + Math.random() / 2);
      state.retries += 1;
      setStatus("offline", `closed ${event.code}; retrying in ${(delay / 1000).toFixed(1)} s`);
      state.retryTimer = setTimeout(() => connect("retry"), delay);
    };
  }

  function onFrame(socket, frame, resumedThreads) {
    switch (frame.op) {
      case "welcome":
        state.connectionId = frame.connection_id;
        state.retries = 0;
        setStatus("connected", statusMeta());
        // In thread mode after a resume: ask for every thread of this user again,
        // so threads created after this point (here or in another window) flow in.
        if (resumedThreads) socket.send(JSON.stringify({ op: "subscribe", thread_id: "*" }));
        renderBanner();
        return;
      case "subscribed":
        if (state.resume && frame.thread_id !== "*") {
          state.resume.lastSeq.set(frame.thread_id, frame.last_seq || 0);
        }
        if (frame.thread_id === "*" && state.resume) state.resume.done = true;
        renderBanner();
        return;
      case "pong": {
        const pong = state.pongs.shift();
        if (pong) pong.resolve();
        return;
      }
      case "gap":
        onGap(frame);
        return;
      case "error":
        showBanner("info", `server: ${frame.code}: ${frame.detail}${frame.thread_id ? ` (${frame.thread_id})` : ""}`);
        return;
      case undefined:
        if (typeof frame.seq === "number") onEvent(frame);
        return;
      default:
    }
  }

  function ensureThread(threadId) {
    let thread = state.threads.get(threadId);
    if (!thread) {
      // A thread of ours created elsewhere (another window): fetch its title.
      thread = addThread({ thread_id: threadId, title: "…", created_at: new Date().toISOString() });
      loadThreads().catch(() => {});
    }
    return thread;
  }

  function onGap(frame) {
    const thread = ensureThread(frame.thread_id);
    const item = { gap: { from: frame.from_seq, to: frame.to_seq } };
    thread.items.push(item);
    thread.lastSeq = Math.max(thread.lastSeq, frame.to_seq);
    if (state.resume) state.resume.gaps += 1;
    appendToTimeline(thread, item);
    renderBanner();
  }

  function onEvent(frame) {
    state.eventFrames += 1;
    const thread = ensureThread(frame.thread_id);
    if (thread.seen.has(frame.event_id) || frame.seq <= thread.lastSeq) {
      // Published twice (an agent retried) or delivered twice: show it once. Its seq
      // is used up all the same, so the next one is no gap.
      thread.lastSeq = Math.max(thread.lastSeq, frame.seq);
      state.duplicates += 1;
      if (state.resume) state.resume.duplicates += 1;
      renderBanner();
      return;
    }
    if (frame.seq !== thread.lastSeq + 1) {
      const item = { gap: { from: thread.lastSeq + 1, to: frame.seq - 1 } };
      thread.items.push(item);
      if (state.resume) state.resume.gaps += 1;
      appendToTimeline(thread, item);
    }
    // Frames up to the last_seq the resume's "subscribed" reply named came from history.
    const resumeLast = state.resume ? state.resume.lastSeq.get(frame.thread_id) : undefined;
    const replayed = resumeLast !== undefined && frame.seq <= resumeLast;
    if (replayed) state.resume.replayed += 1;
    thread.seen.add(frame.event_id);
    thread.lastSeq = frame.seq;
    const item = { frame, replayed, fresh: true };
    thread.events.push(frame);
    thread.items.push(item);
    if (frame.type === "agent_started") thread.live = true;
    if (FINAL.has(frame.type)) thread.live = false;
    if (!state.selected) state.selected = frame.thread_id;
    appendToTimeline(thread, item);
    renderThreads();
    renderBanner();
    if (FINAL.has(frame.type)) scheduleRefresh();
  }

  function showBanner(kind, text) {
    const banner = $("#resume-banner");
    banner.className = `banner ${kind}`;
    banner.textContent = text;
    banner.hidden = false;
  }

  function renderBanner() {
    const resume = state.resume;
    if (!resume) return;
    if (!state.connectionId) return;
    const threads = [...resume.after.entries()];
    if (threads.length === 0) {
      showBanner("", "Reconnected. No threads to resume yet: the connection receives every thread of this user.");
      return;
    }
    const list = threads
      .map(([id, seq]) => `${(state.threads.get(id) || { info: { title: id } }).info.title} after #${seq}`)
      .join(", ");
    const missed = `${resume.replayed} missed event${resume.replayed === 1 ? "" : "s"} replayed`;
    const dups = resume.duplicates ? `, ${resume.duplicates} duplicate${resume.duplicates === 1 ? "" : "s"} dropped by event_id` : "";
    if (resume.gaps) {
      showBanner("bad", `Resumed with after_seq (${list}): ${missed}, ${resume.gaps} gap${resume.gaps === 1 ? "" : "s"}${dups}.`);
    } else {
      showBanner("", `Resumed with after_seq (${list}): ${missed}; seq continuous, no gap${dups}.`);
    }
  }

  function ping() {
    return new Promise((resolve, reject) => {
      if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
        reject(new Error("not connected"));
        return;
      }
      state.pongs.push({ resolve, reject });
      state.ws.send(JSON.stringify({ op: "ping" }));
    });
  }

  async function measureRtt() {
    if (!state.connectionId) return;
    const started = performance.now();
    try {
      await ping();
    } catch {
      return;
    }
    state.rtt = Math.max(1, Math.round(performance.now() - started));
    if (state.connectionId) setStatus("connected", statusMeta());
  }

  function disconnect() {
    state.offlineByChoice = true;
    clearTimeout(state.retryTimer);
    if (state.ws) state.ws.close(1000, "disconnected from the demo page");
    else setStatus("offline", "disconnected");
  }

  function reconnect() {
    state.offlineByChoice = false;
    clearTimeout(state.retryTimer);
    const old = state.ws;
    state.ws = null;
    state.connectionId = null;
    if (old) old.close(1000, "reconnecting");
    connect("reconnect");
  }

  // ------------------------------------------------------------------ actions

  async function startRun() {
    const button = $("#btn-run");
    button.disabled = true;
    try {
      const threadId = state.selected || (await newThread());
      await api("/api/runs", {
        method: "POST",
        body: JSON.stringify({ thread_id: threadId, scenario: $("#scenario").value }),
      });
      const thread = state.threads.get(threadId);
      if (thread) thread.live = true;
      renderThreads();
    } catch (error) {
      showBanner("bad", `could not start a run: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  async function sendBadEvent(kind) {
    try {
      const body = kind === "thread_mismatch"
        ? await api("/api/mismatch", { method: "POST", body: "{}" })
        : await api("/api/bad-events", {
          method: "POST",
          body: JSON.stringify({ kind, thread_id: state.selected }),
        });
      const result = body.result;
      $("#bad-result").textContent = result.accepted
        ? `accepted (seq ${result.seq})`
        : `rejected: ${result.reason}. ${result.detail}`;
      state.dlSelected = result.dead_letter_id || state.dlSelected;
      await refreshAdmin();
      if (result.dead_letter_id) await showDeadLetter(result.dead_letter_id);
    } catch (error) {
      $("#bad-result").textContent = `could not send: ${error.message}`;
    }
  }

  // ------------------------------------------------------------------ admin: stats

  function sum(counts) {
    return Object.values(counts || {}).reduce((a, b) => a + b, 0);
  }

  async function loadStats() {
    const stats = await admin("/stats");
    const values = {
      published: stats.published,
      accepted: stats.accepted,
      rejected: sum(stats.rejected),
      dead_letters: sum(stats.dead_letters),
      delivered: stats.delivered,
      connections: stats.connections,
    };
    for (const [key, value] of Object.entries(values)) {
      const node = document.querySelector(`[data-stat="${key}"]`);
      if (node) node.textContent = value === undefined ? "–" : String(value);
    }
    $("#stat-reasons").replaceChildren(
      ...Object.entries(stats.rejected || {}).map(([reason, n]) =>
        el("span", { class: `badge r r-${reason}`, title: "rejected, by reason" }, `${reason} ${n}`)),
    );
  }

  // ------------------------------------------------------------------ admin: dead letters

  async function loadDeadLetters() {
    const query = new URLSearchParams({ limit: "50" });
    if (!state.dlAll) query.set("user_id", state.user.user_id);
    let page;
    try {
      page = await admin(`/dead-letters?${query}`);
    } catch (error) {
      $("#dl-list").replaceChildren();
      $("#dl-empty").hidden = false;
      $("#dl-empty").textContent = `The dead-letter endpoints did not answer: ${error.message}`;
      return;
    }
    state.deadLetters = page.items || [];
    renderDeadLetters();
  }

  function renderDeadLetters() {
    const records = state.deadLetters;
    $("#dl-count").textContent = records.length ? String(records.length) : "";
    $("#dl-list").replaceChildren(
      ...records.map((record) =>
        el(
          "li",
          {
            class: `dl-item${record.id === state.dlSelected ? " active" : ""}`,
            "data-id": record.id,
            "data-reason": record.reason,
            "data-attempts": record.attempts,
            onclick: () => showDeadLetter(record.id),
          },
          el("span", { class: `badge r r-${record.reason}` }, record.reason),
          el("span", { class: "dl-type" }, record.event_type || "(unreadable)"),
          el("span", { class: "dl-when" },
            record.attempts > 1 ? el("span", { class: "attempts" }, `×${record.attempts} `) : "",
            clock(record.created_at)),
          el("span", { class: "dl-text", title: record.detail }, record.detail),
        ),
      ),
    );
    const empty = $("#dl-empty");
    empty.hidden = records.length > 0;
    empty.textContent = state.dlAll
      ? "No dead letters. Send a bad event to see one land here."
      : `No dead letters of ${state.user.user_id}. Send a bad event to see one land here.`;
  }

  async function showDeadLetter(id) {
    state.dlSelected = id;
    renderDeadLetters();
    let record;
    try {
      record = await admin(`/dead-letters/${encodeURIComponent(id)}`);
    } catch (error) {
      renderDeadLetter(null, `record ${id}: ${error.message}`);
      return;
    }
    if (state.lastReplay && state.lastReplay.id !== id) state.lastReplay = null;
    renderDeadLetter(record);
  }

  function renderDeadLetter(record, problem) {
    const box = $("#dl-detail");
    box.hidden = false;
    if (!record) {
      box.replaceChildren(el("p", { class: "hint" }, problem));
      return;
    }
    const kv = [
      ["id", record.id],
      ["event_id", record.event_id],
      ["type", record.event_type],
      ["run_id", record.run_id],
      ["thread_id", record.thread_id],
      ["user_id", record.user_id],
      ["created", record.created_at],
    ];
    const replay = state.lastReplay && state.lastReplay.id === record.id ? state.lastReplay : null;
    box.replaceChildren(...[
      el("div", { class: "detail-head" },
        el("span", { class: `badge r r-${record.reason}` }, record.reason),
        el("span", { class: "attempts", "data-testid": "dl-attempts" }, `attempts ${record.attempts}`),
        el("span", { class: "dl-actions" },
          el("button", { type: "button", class: "btn btn-primary btn-small", "data-testid": "dl-replay", onclick: () => replayDeadLetter(record.id) }, "Replay"),
          el("button", { type: "button", class: "btn btn-ghost btn-small", onclick: () => deleteDeadLetter(record.id) }, "Delete"))),
      replay ? el("div", { class: `replay-result ${replay.accepted ? "accepted" : "rejected"}`, "data-testid": "dl-replay-result" }, replay.text) : null,
      el("p", { class: "detail-text", "data-testid": "dl-detail-text" }, record.detail),
      el("dl", { class: "kv" }, ...kv.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v === null ? "null" : v)])),
      record.history && record.history.length
        ? el("div", {},
          el("h2", {}, "earlier attempts"),
          el("ol", { class: "history" },
            ...record.history.map((h) => el("li", {}, `${h.reason} at ${h.at}: ${h.detail}`))))
        : null,
      el("pre", { class: "json" }, record.event_raw ? record.event : JSON.stringify(record.event, null, 2)),
    ].filter(Boolean));
    box.scrollTop = 0;
  }

  async function replayDeadLetter(id) {
    let result;
    try {
      result = await admin(`/dead-letters/${encodeURIComponent(id)}/replay`, { method: "POST", body: "{}" });
    } catch (error) {
      state.lastReplay = { id, accepted: false, text: `replay failed: ${error.message}` };
      await showDeadLetter(id);
      return;
    }
    if (result.accepted && !result.dead_letter) {
      state.lastReplay = { id, accepted: true, text: `Accepted: seq ${result.seq}; the record is gone.` };
      state.dlSelected = null;
      await refreshAdmin();
      renderDeadLetter(null, state.lastReplay.text);
      return;
    }
    const record = result.dead_letter;
    state.lastReplay = {
      id,
      accepted: Boolean(result.accepted),
      text: result.accepted
        ? `Accepted (seq ${result.seq}); the record stays until someone is listening.`
        : `Rejected again: ${result.reason}. attempts ${record ? record.attempts : "?"}.`,
    };
    await refreshAdmin();
    if (record) renderDeadLetter(record);
    else await showDeadLetter(id);
  }

  async function deleteDeadLetter(id) {
    await admin(`/dead-letters/${encodeURIComponent(id)}`, { method: "DELETE" }).catch(() => {});
    state.dlSelected = null;
    state.lastReplay = null;
    $("#dl-detail").hidden = true;
    await refreshAdmin();
  }

  let refreshing = null;
  async function refreshAdmin() {
    if (refreshing) return refreshing;
    refreshing = Promise.all([loadStats().catch(() => {}), loadDeadLetters()]).finally(() => {
      refreshing = null;
    });
    return refreshing;
  }

  let refreshTimer = null;
  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => refreshAdmin(), 150);
  }

  // ------------------------------------------------------------------ start

  async function main() {
    const directory = await (await fetch("/api/users")).json();
    state.users = directory.users;
    state.adminToken = directory.admin_token;
    const wanted = new URLSearchParams(location.search).get("user");
    state.user = state.users.find((u) => u.user_id === wanted) || state.users[0];
    state.token = state.user.token;
    renderUsers();

    state.config = await api("/api/config");
    $("#scenario").replaceChildren(
      ...state.config.scenarios.map((s) => el("option", { value: s.name }, `${s.title} · ${s.agent_name}`)),
    );
    const hint = () => {
      const s = state.config.scenarios.find((x) => x.name === $("#scenario").value);
      $("#scenario-hint").textContent = s ? `“${s.prompt}”` : "";
    };
    $("#scenario").addEventListener("change", hint);
    hint();
    $("#mismatch-run").textContent = state.config.mismatch_event.run_id;
    $("#mismatch-thread").textContent = state.config.mismatch_event.thread_id;

    await loadThreads();
    const newest = sortedThreads()[0];
    if (newest) selectThread(newest.info.thread_id);
    else renderTimeline();

    $("#btn-new-thread").addEventListener("click", () => newThread().catch((e) => showBanner("bad", e.message)));
    $("#btn-run").addEventListener("click", startRun);
    $("#btn-mismatch").addEventListener("click", () => sendBadEvent("thread_mismatch"));
    for (const button of document.querySelectorAll("[data-bad]")) {
      button.addEventListener("click", () => sendBadEvent(button.dataset.bad));
    }
    $("#btn-disconnect").addEventListener("click", disconnect);
    $("#btn-reconnect").addEventListener("click", reconnect);
    $("#btn-dl-refresh").addEventListener("click", refreshAdmin);
    $("#dl-all").addEventListener("change", (event) => {
      state.dlAll = event.target.checked;
      loadDeadLetters();
    });

    connect("initial");
    await refreshAdmin();
    setInterval(() => loadStats().catch(() => {}), 1500);
    setInterval(() => loadDeadLetters(), 4000);
    setInterval(measureRtt, 5000);
    setTimeout(measureRtt, 300);
  }

  // For people poking at the page from the console, and for the browser test.
  window.demo = { state, ping, connect, disconnect, reconnect, refreshAdmin };

  main().catch((error) => showBanner("bad", `the demo could not start: ${error.message}`));
})();
