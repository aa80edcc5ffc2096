// The live calls board: follows /live/events (server-sent events) and keeps the table of
// calls and the chosen call's transcript up to date. Every text goes in as textContent.
"use strict";

(function () {
  const board = document.getElementById("live-board");
  if (!board) return;
  const rows = document.querySelector("#live-calls tbody");
  const empty = document.getElementById("live-empty");
  const count = document.getElementById("live-count");
  const status = document.getElementById("live-status");
  const title = document.getElementById("live-detail-title");
  const hint = document.getElementById("live-detail-hint");
  const facts = document.getElementById("live-facts");
  const transcript = document.getElementById("live-transcript");
  const ENDED_SHOWN_MS = 8000;

  const calls = new Map(); // call_id -> call, with .transcript (turns by seq) and .endedAt
  let clockOffset = 0; // server time - browser time, seconds
  let selected = null;

  function setStatus(text, kind) {
    status.textContent = text;
    status.className = "badge " + kind;
  }

  function now() { return Date.now() / 1000 + clockOffset; }

  function duration(call) {
    const end = call.state === "ended" ? call.updated_at : now();
    const seconds = Math.max(0, Math.round(end - call.started_at));
    const m = Math.floor(seconds / 60), s = seconds % 60;
    return m + ":" + String(s).padStart(2, "0");
  }

  function stateLabel(call) {
    if (call.state === "ended") return "ended (" + (call.end_reason || "?").replace(/_/g, " ") + ")";
    return { bot: "with the bot", queued: "queued", agent: "with an agent" }[call.state] || call.state;
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function renderCalls() {
    rows.textContent = "";
    const list = [...calls.values()].sort((a, b) => a.started_at - b.started_at);
    for (const call of list) {
      const tr = document.createElement("tr");
      tr.dataset.callId = call.call_id;
      tr.className = (call.call_id === selected ? "selected " : "") + (call.state === "ended" ? "ended" : "");
      cell(tr, call.transport);
      cell(tr, call.caller || "unknown");
      cell(tr, duration(call), "num duration");
      cell(tr, (call.last_intent || "—").replace(/_/g, " "));
      const state = cell(tr, "");
      const badge = document.createElement("span");
      badge.className = "badge " + (call.state === "ended" ? "abandoned" : call.state === "bot" ? "active" : "handed_off");
      badge.textContent = stateLabel(call);
      state.appendChild(badge);
      cell(tr, String(call.turns), "num");
      cell(tr, call.node);
      tr.addEventListener("click", () => { selected = call.call_id; renderCalls(); renderDetail(); });
      rows.appendChild(tr);
    }
    const up = list.filter((c) => c.state !== "ended").length;
    count.textContent = up === 1 ? "1 call up" : up + " calls up";
    empty.hidden = list.length > 0;
  }

  function renderDetail() {
    const call = selected && calls.get(selected);
    transcript.textContent = "";
    facts.textContent = "";
    facts.hidden = !call;
    hint.hidden = !!call;
    if (!call) { title.textContent = "Transcript"; return; }
    title.textContent = "Transcript · " + (call.caller || "unknown caller");
    const shown = { Channel: call.transport, Node: call.node, State: stateLabel(call) };
    for (const [name, value] of Object.entries(call.slots || {})) {
      if (value !== null && value !== "") shown[name.replace(/_/g, " ")] = String(value);
    }
    if (call.resumed_from) shown["Resumes"] = call.resumed_from;
    for (const [name, value] of Object.entries(shown)) {
      const dt = document.createElement("dt"); dt.textContent = name;
      const dd = document.createElement("dd"); dd.textContent = value;
      facts.append(dt, dd);
    }
    for (const turn of call.transcript) {
      const li = document.createElement("li");
      li.className = turn.speaker;
      li.dataset.seq = turn.seq;
      const meta = document.createElement("div");
      meta.className = "meta";
      const who = document.createElement("strong");
      who.textContent = turn.speaker;
      const at = document.createElement("span");
      at.textContent = new Date(turn.at * 1000).toISOString().slice(11, 19);
      meta.append(who, at);
      if (turn.intent) {
        const intent = document.createElement("span");
        intent.textContent = turn.intent.replace(/_/g, " ");
        meta.appendChild(intent);
      }
      const text = document.createElement("div");
      text.textContent = turn.text;
      li.append(meta, text);
      transcript.appendChild(li);
    }
    transcript.scrollTop = transcript.scrollHeight;
  }

  function addTurn(call, turn) {
    if (call.transcript.some((t) => t.seq === turn.seq)) return false;
    call.transcript.push(turn);
    call.transcript.sort((a, b) => a.seq - b.seq);
    return true;
  }

  function placeholder(callId) {
    return { call_id: callId, node: "", transport: "", caller: "", state: "bot", turns: 0,
      slots: {}, started_at: now(), updated_at: now(), transcript: [] };
  }

  function updateCall(update) {
    const known = calls.get(update.call_id);
    if (!known && update.state === "ended") return;
    const call = Object.assign(known || placeholder(update.call_id), update);
    calls.set(call.call_id, call);
    if (call.state === "ended" && !call.endedAt) {
      call.endedAt = Date.now();
      setTimeout(() => {
        calls.delete(call.call_id);
        if (selected === call.call_id) selected = null;
        renderCalls(); renderDetail();
      }, ENDED_SHOWN_MS);
    }
    if (!selected) selected = call.call_id;
  }

  function onSnapshot(data) {
    clockOffset = data.now - Date.now() / 1000;
    calls.clear();
    for (const call of data.calls) {
      call.transcript = call.transcript || [];
      calls.set(call.call_id, call);
    }
    if (!calls.has(selected)) selected = data.calls.length ? data.calls[0].call_id : null;
    setStatus("live", "resolved");
    renderCalls(); renderDetail();
  }

  function onUpdate(data) {
    if (data.kind === "call") {
      updateCall(data.call);
    } else if (data.kind === "turn") {
      const turn = data.turn;
      let call = calls.get(turn.call_id);
      if (!call) { call = placeholder(turn.call_id); calls.set(call.call_id, call); }
      if (addTurn(call, turn) && turn.emitted_at) {
        // the board's update delay: from the node having the turn to the page having it
        window.liveTurnDelays = window.liveTurnDelays || [];
        window.liveTurnDelays.push(now() - turn.emitted_at);
      }
      if (!selected) selected = call.call_id;
    }
    renderCalls();
    renderDetail();
  }

  const source = new EventSource(board.dataset.events);
  source.addEventListener("snapshot", (e) => onSnapshot(JSON.parse(e.data)));
  source.addEventListener("update", (e) => onUpdate(JSON.parse(e.data)));
  source.addEventListener("unavailable", (e) => setStatus(JSON.parse(e.data).error + " — retrying", "failed"));
  source.addEventListener("error", () => {
    if (status.className.indexOf("failed") < 0) setStatus("reconnecting…", "pending");
  });
  setInterval(() => {
    for (const td of rows.querySelectorAll("td.duration")) {
      const call = calls.get(td.parentElement.dataset.callId);
      if (call) td.textContent = duration(call);
    }
  }, 1000);
})();
