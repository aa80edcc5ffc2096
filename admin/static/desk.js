// The agents' desk: presence, the queue of calls waiting for an agent, taking one and
// talking with the caller in the browser (WebRTC), listening in and barging in. Follows
// /live/events like the live board; every text goes in as textContent.
"use strict";

(function () {
  const desk = document.getElementById("desk");
  if (!desk) return;
  const csrf = desk.dataset.csrf;
  const me = desk.dataset.me;
  const status = document.getElementById("desk-status");
  const queueList = document.getElementById("queue");
  const queueCount = document.getElementById("queue-count");
  const queueAway = document.getElementById("queue-away");
  const queueEmpty = document.getElementById("queue-empty");
  const presenceNow = document.getElementById("presence-now");
  const monitorRows = document.querySelector("#monitor-calls tbody");
  const panel = document.getElementById("in-call");
  const panelTitle = document.getElementById("in-call-title");
  const panelState = document.getElementById("in-call-state");
  const panelFacts = document.getElementById("in-call-facts");
  const transcript = document.getElementById("in-call-transcript");
  const remoteAudio = document.getElementById("remote-audio");
  const HEARTBEAT_MS = 20000;

  const calls = new Map();
  const notes = new Map(); // call_id -> message shown on its queue card
  let clockOffset = 0;
  let presence = (document.querySelector("input[name=presence]:checked") || {}).value
    || presenceNow.textContent.trim().replace(/ /g, "_");
  let leg = null; // {callId, mode, pc, channel, stream}
  let wrapping = null; // the call id whose wrap-up is due
  const wrapForm = document.getElementById("wrap-up");

  function now() { return Date.now() / 1000 + clockOffset; }
  function setStatus(text, kind) { status.textContent = text; status.className = "badge " + kind; }
  function clock(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    return Math.floor(seconds / 60) + ":" + String(seconds % 60).padStart(2, "0");
  }
  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (cls) node.className = cls;
    return node;
  }

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await response.json(); } catch (e) { /* not JSON */ }
    return { ok: response.ok, status: response.status, data };
  }

  // ---------------------------------------------------------------- presence

  async function setPresence(value) {
    const result = await post("/desk/presence", { status: value });
    if (result.ok) presence = value;
    presenceNow.textContent = presence.replace(/_/g, " ");
    presenceNow.className = "badge " + (presence === "available" ? "resolved" : presence === "on_call" ? "active" : "pending");
    for (const radio of document.querySelectorAll("input[name=presence]")) radio.checked = radio.value === presence;
    renderQueue();
  }
  for (const radio of document.querySelectorAll("input[name=presence]")) {
    radio.addEventListener("change", () => setPresence(radio.value));
  }
  setInterval(() => post("/desk/presence", { status: presence }), HEARTBEAT_MS);

  // ---------------------------------------------------------------- the queue

  function waiting() {
    return [...calls.values()].filter((c) => c.state === "queued" && c.queue)
      .sort((a, b) => a.queue.queued_at - b.queue.queued_at);
  }

  function renderQueue() {
    const list = waiting();
    const show = presence === "available";
    queueAway.hidden = show || presence === "on_call";
    queueEmpty.hidden = !show || list.length > 0;
    queueCount.textContent = list.length ? "(" + list.length + ")" : "";
    queueList.textContent = "";
    if (!show) return;
    list.forEach((call, i) => {
      const q = call.queue;
      const li = el("li");
      li.dataset.callId = call.call_id;
      const head = el("header");
      head.append(el("span", "#" + (i + 1), "badge pending"), el("strong", call.caller || "unknown caller"),
        el("span", "waiting " + clock(now() - q.queued_at), "wait"));
      const accept = el("button", "Accept", "accept");
      accept.type = "button";
      accept.addEventListener("click", () => acceptCall(call.call_id, accept));
      head.appendChild(accept);
      li.append(head, el("p", q.summary || "", "summary"));
      const facts = el("div", null, "facts");
      facts.append(el("span", call.transport));
      if (q.intents && q.intents.length) facts.append(el("span", "intents: " + q.intents.join(" → ").replace(/_/g, " ")));
      for (const [name, value] of Object.entries(q.slots || {})) {
        if (value !== null && value !== "") facts.append(el("span", name.replace(/_/g, " ") + ": " + value, "slot"));
      }
      if (q.sentiment) facts.append(el("span", "sentiment: " + q.sentiment, "sentiment"));
      li.appendChild(facts);
      if (notes.has(call.call_id)) li.appendChild(el("p", notes.get(call.call_id), "flash error"));
      queueList.appendChild(li);
    });
  }

  async function acceptCall(callId, button) {
    button.disabled = true;
    const result = await post("/desk/calls/" + encodeURIComponent(callId) + "/accept");
    if (!result.ok) {
      notes.set(callId, result.data.error || "could not take this call (" + result.status + ")");
      button.disabled = false;
      renderQueue();
      return;
    }
    presence = "on_call";
    presenceNow.textContent = "on call";
    await startLeg(callId, "talk");
  }

  // ---------------------------------------------------------------- the browser leg

  function iceGathered(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") resolve();
      });
    });
  }

  async function startLeg(callId, mode) {
    if (leg) endLeg("replaced");
    const pc = new RTCPeerConnection({ iceServers: [] });
    const current = leg = { callId, mode, pc, channel: null, stream: null };
    window.deskLeg = current;
    document.getElementById("call-actions").hidden = false;
    showPanel();
    panelState.textContent = "connecting audio…";
    try {
      if (mode === "listen") {
        pc.addTransceiver("audio", { direction: "recvonly" }); // never the microphone
      } else {
        current.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
        for (const track of current.stream.getAudioTracks()) pc.addTrack(track, current.stream);
      }
      current.channel = pc.createDataChannel("desk");
      pc.ontrack = (e) => { remoteAudio.srcObject = e.streams[0] || new MediaStream([e.track]); };
      pc.onconnectionstatechange = () => {
        if (leg !== current) return;
        if (pc.connectionState === "connected") panelState.textContent = label(mode) + " · connected";
        if (pc.connectionState === "failed") panelState.textContent = "the call's audio was lost";
      };
      await pc.setLocalDescription(await pc.createOffer());
      await iceGathered(pc);
      const result = await post("/desk/calls/" + encodeURIComponent(callId) + "/connect",
        { sdp: pc.localDescription.sdp, type: pc.localDescription.type, mode });
      if (!result.ok) throw new Error(result.data.error || "HTTP " + result.status);
      await pc.setRemoteDescription(result.data);
    } catch (err) {
      panelState.textContent = "could not connect: " + err.message;
      endLeg("failed", true);
    }
  }

  function label(mode) {
    return { talk: "talking with the caller", listen: "listening in", barge: "barged in" }[mode];
  }

  function endLeg(why, keepPanel) {
    const current = leg;
    if (!current) return;
    leg = null;
    document.getElementById("call-actions").hidden = true;
    if (current.stream) current.stream.getTracks().forEach((t) => t.stop());
    current.pc.close();
    if (!keepPanel) panelState.textContent = why;
  }

  function send(message) {
    if (leg && leg.channel && leg.channel.readyState === "open") leg.channel.send(JSON.stringify(message));
  }
  document.getElementById("hangup").addEventListener("click", () => send({ type: "hangup" }));
  document.getElementById("to-bot").addEventListener("click", () => send({ type: "bot" }));
  document.getElementById("transfer").addEventListener("click", () => {
    send({ type: "transfer", target: document.getElementById("transfer-target").value.trim() });
  });
  document.getElementById("leave").addEventListener("click", () => endLeg("stopped listening"));

  function showPanel() {
    panel.hidden = false;
    renderPanel();
  }

  function renderPanel() {
    if (!leg) return;
    const call = calls.get(leg.callId);
    const talking = leg.mode === "talk";
    for (const id of ["hangup", "to-bot", "transfer", "transfer-target"]) document.getElementById(id).hidden = !talking;
    document.getElementById("leave").hidden = talking;
    panelTitle.textContent = (talking ? "On a call · " : label(leg.mode) + " · ") + ((call && call.caller) || "caller");
    panelFacts.textContent = "";
    if (call) {
      const shown = { Channel: call.transport, Node: call.node };
      for (const [name, value] of Object.entries(call.slots || {})) {
        if (value !== null && value !== "") shown[name.replace(/_/g, " ")] = String(value);
      }
      for (const [name, value] of Object.entries(shown)) panelFacts.append(el("dt", name), el("dd", value));
    }
    transcript.textContent = "";
    for (const turn of (call && call.transcript) || []) {
      const li = el("li", null, turn.speaker);
      const meta = el("div", null, "meta");
      meta.append(el("strong", turn.speaker), el("span", new Date(turn.at * 1000).toISOString().slice(11, 19)));
      li.append(meta, el("div", turn.text));
      transcript.appendChild(li);
    }
    transcript.scrollTop = transcript.scrollHeight;
  }

  // ---------------------------------------------------------------- wrap-up

  function startWrapUp(callId) {
    wrapping = callId;
    wrapForm.hidden = false;
    if (presence === "on_call") setPresence("wrap_up");
  }

  wrapForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!wrapping) return;
    const status = document.getElementById("wrap-up-status");
    const result = await post("/desk/calls/" + encodeURIComponent(wrapping) + "/wrapup", {
      disposition: document.getElementById("disposition").value,
      notes: document.getElementById("notes").value,
    });
    if (!result.ok) { status.textContent = result.data.error || "not saved (" + result.status + ")"; return; }
    status.textContent = "saved";
    wrapping = null;
    wrapForm.hidden = true;
    document.getElementById("notes").value = "";
    presence = "wrap_up";
    await setPresence("available");
    panel.hidden = true;
  });

  // ---------------------------------------------------------------- supervisors

  function renderMonitor() {
    if (!monitorRows) return;
    monitorRows.textContent = "";
    for (const call of [...calls.values()].filter((c) => c.state !== "ended")) {
      const tr = el("tr");
      tr.dataset.callId = call.call_id;
      tr.append(el("td", call.caller || "unknown"), el("td", call.state + (call.agent ? " (" + call.agent + ")" : "")),
        el("td", clock(now() - call.started_at), "num"));
      const actions = el("td");
      for (const mode of ["listen", "barge"]) {
        const b = el("button", mode === "listen" ? "Listen" : "Barge in", mode);
        b.type = "button";
        b.addEventListener("click", () => startLeg(call.call_id, mode));
        actions.appendChild(b);
      }
      tr.appendChild(actions);
      monitorRows.appendChild(tr);
    }
  }

  // ---------------------------------------------------------------- events

  function render() { renderQueue(); renderMonitor(); renderPanel(); }

  function onCall(update) {
    const known = calls.get(update.call_id);
    if (!known && update.state === "ended") return;
    const call = Object.assign(known || { transcript: [] }, update);
    calls.set(call.call_id, call);
    if (leg && leg.callId === call.call_id) {
      const talked = leg.mode === "talk";
      if (call.state === "ended") {
        endLeg("the call ended (" + (call.end_reason || "").replace(/_/g, " ") + ")");
        if (talked) startWrapUp(call.call_id);
      } else if (talked && call.state === "bot") {
        endLeg("the caller is back with the bot");
        startWrapUp(call.call_id);
      }
    }
    if (call.state === "ended") setTimeout(() => { calls.delete(call.call_id); render(); }, 5000);
  }

  const source = new EventSource(desk.dataset.events);
  source.addEventListener("snapshot", (e) => {
    const data = JSON.parse(e.data);
    clockOffset = data.now - Date.now() / 1000;
    calls.clear();
    for (const call of data.calls) { call.transcript = call.transcript || []; calls.set(call.call_id, call); }
    setStatus("live", "resolved");
    render();
  });
  source.addEventListener("update", (e) => {
    const data = JSON.parse(e.data);
    if (data.kind === "call") onCall(data.call);
    else if (data.kind === "turn") {
      const call = calls.get(data.turn.call_id);
      if (call && !call.transcript.some((t) => t.seq === data.turn.seq)) {
        call.transcript.push(data.turn);
        call.transcript.sort((a, b) => a.seq - b.seq);
      }
    }
    render();
  });
  source.addEventListener("unavailable", (e) => setStatus(JSON.parse(e.data).error + " — retrying", "failed"));
  source.addEventListener("error", () => { if (status.className.indexOf("failed") < 0) setStatus("reconnecting…", "pending"); });
  setInterval(() => {
    for (const span of queueList.querySelectorAll("span.wait")) {
      const call = calls.get(span.closest("li").dataset.callId);
      if (call && call.queue) span.textContent = "waiting " + clock(now() - call.queue.queued_at);
    }
  }, 1000);
})();
