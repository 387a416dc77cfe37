// Follow a user's agent events in the browser: plain JavaScript, no library, no build.
//
//   const events = followAgentEvents({
//     url: "ws://127.0.0.1:8000/ws",
//     token: userToken,                    // sent as the "bearer.<token>" subprotocol
//     onEvent: (event) => render(event),   // each event once, in seq order per thread
//     onStatus: (status, detail) => {},    // "connecting" | "open" | "closed" | "gap"
//   });
//   events.close();                        // stop for good
//
// After a disconnect it reconnects with exponential backoff and resumes every thread
// it has seen with ?thread_id=T&after_seq=N, so events published meanwhile arrive
// from the thread's history, in order, before new ones. Events are deduplicated by
// event_id (delivery is at least once: a replayed dead letter may arrive twice).
"use strict";

function followAgentEvents({ url, token, onEvent, onStatus = () => {}, threads = [] }) {
  const lastSeq = new Map(threads.map((thread) => [thread, 0])); // thread_id -> last seq
  const followAll = threads.length === 0;
  const seen = new Set(); // event ids already handed to onEvent
  const seenOrder = [];
  let socket = null;
  let failures = 0;
  let timer = null;
  let stopped = false;

  function connectUrl() {
    const query = new URLSearchParams();
    for (const [thread, seq] of lastSeq) {
      query.append("thread_id", thread);
      query.append("after_seq", String(seq));
    }
    const text = query.toString();
    return text ? `${url}?${text}` : url;
  }

  function isNew(event) {
    const last = lastSeq.get(event.thread_id) || 0;
    lastSeq.set(event.thread_id, Math.max(last, event.seq));
    // Published twice (an agent retried) or delivered twice: hand it over once.
    if (seen.has(event.event_id) || event.seq <= last) return false;
    seen.add(event.event_id);
    seenOrder.push(event.event_id);
    if (seenOrder.length > 10000) seen.delete(seenOrder.shift());
    return true;
  }

  function onFrame(frame) {
    if (frame.op === "welcome") {
      failures = 0;
      onStatus("open", frame.connection_id);
      // A resume opens the connection on the listed threads only: ask for every
      // thread of the user again, so that new threads reach us too.
      if (followAll && lastSeq.size > 0) {
        socket.send(JSON.stringify({ op: "subscribe", thread_id: "*" }));
      }
    } else if (frame.op === "gap") {
      // History no longer holds these: say so rather than pretend nothing was missed.
      lastSeq.set(frame.thread_id, Math.max(lastSeq.get(frame.thread_id) || 0, frame.to_seq));
      onStatus("gap", frame);
    } else if (frame.op === "error") {
      console.warn("agent events:", frame.code, frame.detail);
    } else if (frame.op === undefined && isNew(frame)) {
      onEvent(frame);
    }
  }

  function connect() {
    onStatus("connecting", failures);
    // Browsers cannot set headers on a WebSocket: the token rides in a subprotocol
    // (not in the URL, so it stays out of access logs).
    socket = new WebSocket(connectUrl(), ["agent-router.v1", `bearer.${token}`]);
    socket.onmessage = (message) => onFrame(JSON.parse(message.data));
    socket.onclose = (event) => {
      socket = null;
      onStatus("closed", event.code);
      if (stopped || event.code === 4401 || event.code === 1008) return; // retrying cannot help
      const delay = Math.min(10000, 250 * 2 ** failures) * (0.5 + Math.random() / 2);
      failures += 1;
      timer = setTimeout(connect, delay);
    };
  }

  connect();
  return {
    close() {
      stopped = true;
      clearTimeout(timer);
      if (socket) socket.close(1000);
    },
    lastSeq,
  };
}
