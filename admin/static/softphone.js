"use strict";
// The softphone page: one WebRTC call to the bot, its transcript, keypad and latency.
// Signalling: POST /softphone/offer with the complete offer (ICE gathered), answer back.
// The DataChannel "events" carries turns from the server and digits/hangup to it.
(() => {
  const root = document.getElementById("softphone");
  const config = JSON.parse(root.dataset.config);
  const TOKEN_KEY = "switchboard.conversation";
  const SPEECH_LEVEL = 0.02;       // mic RMS (0..1) counted as the caller speaking
  const HEARD_LEVEL = 0.01;        // inbound audioLevel (0..1) counted as bot audio
  const RECONNECT_AFTER_MS = 2500; // a "disconnected" connection this long is redialled
  const MAX_RECONNECTS = 3;
  const $ = (id) => document.getElementById(id);

  const phone = {
    pc: null, channel: null, stream: null, audioCtx: null, analyser: null,
    active: false, reconnects: 0, reconnectTimer: null, statsTimer: null, otherNodes: [],
    micSpeechEnd: null, micSpeaking: false, inboundLoud: false, lastOnset: 0,
  };
  window.softphone = phone; // the tests read phone.pc.getStats()

  // ---------------------------------------------------------------- conversation token
  function storedToken() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(TOKEN_KEY) || "null");
      if (saved && Date.now() - saved.alive < config.reconnectWindowS * 1000) return saved.token;
    } catch (e) { /* a damaged entry is dropped below */ }
    sessionStorage.removeItem(TOKEN_KEY);
    return null;
  }
  function keepToken(token) {
    sessionStorage.setItem(TOKEN_KEY, JSON.stringify({ token, alive: Date.now() }));
  }
  function dropToken() { sessionStorage.removeItem(TOKEN_KEY); }

  // ---------------------------------------------------------------- page state
  function setState(text, kind) {
    $("state").textContent = text;
    $("state-dot").className = "dot " + (kind || "");
  }
  function notice(text, error) {
    $("notice").textContent = text || "";
    $("notice").className = "notice" + (error ? " error" : "");
  }
  function setButtons(inCall) {
    $("call").disabled = inCall;
    $("hangup").disabled = !inCall;
  }
  function addLine(kind, who, text, meta) {
    const li = document.createElement("li");
    li.className = kind;
    if (who) {
      const label = document.createElement("span");
      label.className = "who";
      label.textContent = who;
      li.appendChild(label);
    }
    li.appendChild(document.createTextNode(text));
    if (meta) {
      const small = document.createElement("span");
      small.className = "meta";
      small.textContent = meta;
      li.appendChild(small);
    }
    const list = $("transcript");
    list.appendChild(li);
    list.scrollTop = list.scrollHeight;
  }

  // ---------------------------------------------------------------- audio meters
  function startMicMeter(stream) {
    if (phone.audioCtx) return;
    phone.audioCtx = new AudioContext();
    const source = phone.audioCtx.createMediaStreamSource(stream);
    phone.analyser = phone.audioCtx.createAnalyser();
    phone.analyser.fftSize = 1024;
    source.connect(phone.analyser);
    const samples = new Float32Array(phone.analyser.fftSize);
    setInterval(() => {
      phone.analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (const s of samples) sum += s * s;
      const rms = Math.sqrt(sum / samples.length);
      $("mic-level").style.width = Math.min(100, rms * 400) + "%";
      if (!phone.active) return;
      if (rms > SPEECH_LEVEL) {
        phone.micSpeaking = true;
      } else if (phone.micSpeaking) {
        phone.micSpeaking = false;
        phone.micSpeechEnd = performance.now();
      }
    }, 20);
  }

  function watchInbound(pc) {
    clearInterval(phone.statsTimer);
    phone.statsTimer = setInterval(async () => {
      if (pc.connectionState !== "connected") return;
      const stats = await pc.getStats();
      stats.forEach((report) => {
        if (report.type !== "inbound-rtp" || report.kind !== "audio") return;
        const loud = (report.audioLevel || 0) > HEARD_LEVEL;
        if (loud && !phone.inboundLoud && phone.micSpeechEnd !== null &&
            phone.micSpeechEnd > phone.lastOnset && !phone.micSpeaking) {
          const heard = Math.round(performance.now() - phone.micSpeechEnd);
          $("latency-heard").textContent = heard + " ms";
          phone.lastOnset = performance.now();
        }
        phone.inboundLoud = loud;
      });
    }, 50);
  }

  // ---------------------------------------------------------------- events from the server
  function onEvent(message) {
    if (message.type === "turn") {
      const bot = message.speaker === "bot";
      const meta = [];
      if (bot && message.response_ms != null) meta.push(`replied in ${Math.round(message.response_ms)} ms`);
      if (message.barge_in) meta.push(bot ? "interrupted" : "spoke over the bot");
      addLine(bot ? "bot" : "caller", bot ? "Bot" : "You", message.text, meta.join(" · "));
      if (bot && message.response_ms != null) {
        $("latency-server").textContent = Math.round(message.response_ms) + " ms";
      }
    } else if (message.type === "call") {
      phone.callId = message.call_id;
      addLine("system", "", message.resumed ? "Reconnected: the conversation continues."
                                            : "Connected to the bot.");
    } else if (message.type === "ended") {
      if (!message.resumable) dropToken();
      finish(`Call ended (${message.reason.replace(/_/g, " ")}).`);
    } else if (message.type === "error") {
      notice(message.message, true);
    }
  }

  // ---------------------------------------------------------------- call control
  function waitForIce(pc, ms) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
      });
    });
  }

  async function dial() {
    const token = storedToken();
    setState(token ? "reconnecting" : "connecting", "connecting");
    setButtons(true);
    phone.active = true;
    if (!phone.stream) {
      phone.stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
    }
    startMicMeter(phone.stream);
    if (phone.audioCtx.state === "suspended") await phone.audioCtx.resume();
    const pc = new RTCPeerConnection({ iceServers: config.iceServers });
    phone.pc = pc;
    phone.stream.getAudioTracks().forEach((track) => pc.addTrack(track, phone.stream));
    const channel = pc.createDataChannel("events");
    phone.channel = channel;
    channel.onmessage = (event) => onEvent(JSON.parse(event.data));
    pc.ontrack = (event) => {
      const audio = $("remote-audio");
      audio.srcObject = event.streams[0] || new MediaStream([event.track]);
      audio.play().catch(() => notice("Click the page to hear the bot (autoplay blocked)."));
    };
    pc.onconnectionstatechange = () => onConnectionState(pc);
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIce(pc, 3000);
    const response = await postOffer(
      JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", token }));
    const body = await response.json();
    if (!response.ok) {
      pc.close();
      if (token && (response.status === 409 || response.status === 410)) {
        dropToken();
        throw new Error("The earlier conversation cannot be resumed; press Call for a new one.");
      }
      throw new Error(body.error || `the server answered ${response.status}`);
    }
    keepToken(body.token);
    phone.otherNodes = body.nodes || [];
    await pc.setRemoteDescription({ type: body.type, sdp: body.sdp });
    watchInbound(pc);
  }

  // This page's own server first; when it does not answer (its node is lost) or is
  // draining (503), the other nodes the last answer named, which resume the conversation.
  async function postOffer(body) {
    const servers = [""].concat(phone.otherNodes || []);
    let failure = null;
    for (const [index, server] of servers.entries()) {
      try {
        const response = await fetch(`${server}/softphone/offer`, {
          method: "POST", headers: { "Content-Type": "application/json" }, body,
        });
        if (response.status !== 503 || index === servers.length - 1) return response;
      } catch (error) {
        failure = error;
      }
    }
    throw failure || new Error("no server answered the call");
  }

  function onConnectionState(pc) {
    if (pc !== phone.pc) return;
    const state = pc.connectionState;
    if (state === "connected") {
      phone.reconnects = 0;
      clearTimeout(phone.reconnectTimer);
      setState("connected", "connected");
      notice("");
    } else if (state === "disconnected") {
      setState("connection unstable", "connecting");
      phone.reconnectTimer = setTimeout(() => {
        if (phone.pc === pc && pc.connectionState !== "connected") reconnect();
      }, RECONNECT_AFTER_MS);
    } else if (state === "failed") {
      reconnect();
    }
  }

  async function reconnect() {
    if (!phone.active) return;
    phone.pc.close();
    if (phone.reconnects >= MAX_RECONNECTS || !storedToken()) {
      finish("The connection was lost.");
      return;
    }
    phone.reconnects += 1;
    notice("Connection lost: reconnecting…");
    try {
      await dial();
    } catch (error) {
      finish(error.message, true);
    }
  }

  function finish(message, error) {
    phone.active = false;
    clearTimeout(phone.reconnectTimer);
    clearInterval(phone.statsTimer);
    if (phone.pc) phone.pc.close();
    setState("ended", error ? "failed" : "");
    setButtons(false);
    notice(message, error);
  }

  $("call").addEventListener("click", async () => {
    notice("");
    try {
      await dial();
    } catch (error) {
      finish(`Could not call: ${error.message}`, true);
    }
  });

  $("hangup").addEventListener("click", () => {
    if (phone.channel && phone.channel.readyState === "open") {
      phone.channel.send(JSON.stringify({ type: "hangup" }));
    }
    dropToken();
    phone.active = false;
    setTimeout(() => finish("You hung up."), 150);
    $("hangup").disabled = true;
  });

  $("keypad").addEventListener("click", (event) => {
    const digit = event.target.dataset && event.target.dataset.digit;
    if (!digit) return;
    if (!phone.channel || phone.channel.readyState !== "open") {
      notice("The keypad works during a call.", true);
      return;
    }
    phone.channel.send(JSON.stringify({ type: "dtmf", digit }));
    $("keyed").textContent = digit === "#" ? "" : $("keyed").textContent + digit;
  });

  // Keep the token fresh while the call is up, so a reload can resume it.
  setInterval(() => {
    const token = storedToken();
    if (token && phone.pc && phone.pc.connectionState === "connected") keepToken(token);
  }, 1000);

  if (storedToken()) notice("Press Call to continue your earlier conversation.");
})();
