// LINE相談コンソール: live updates (Server-Sent Events), alerts with sound, the reply box.
// No inline script anywhere (CSP script-src 'self'); everything is wired up from here.
"use strict";

(function () {
  const body = document.body;
  const csrf = body.dataset.csrf || "";
  const live = body.dataset.live || "";
  const area = document.getElementById("live-area");

  // -- sound: a short beep made with the Web Audio API (no audio files) ----------------------
  let audio = null;
  function unlockAudio() {
    try {
      if (!audio) audio = new (window.AudioContext || window.webkitAudioContext)();
      if (audio.state === "suspended") audio.resume();
    } catch (e) { audio = null; }
    const hint = document.getElementById("sound-hint");
    if (hint && audio && audio.state !== "suspended") hint.hidden = true;
  }
  document.addEventListener("click", unlockAudio);
  document.addEventListener("keydown", unlockAudio);

  function beep(times, freq) {
    if (!audio || audio.state !== "running") {
      const hint = document.getElementById("sound-hint");
      if (hint) hint.hidden = false;
      return;
    }
    const start = audio.currentTime;
    for (let i = 0; i < times; i++) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = "sine";
      osc.frequency.value = freq;
      const t = start + i * 0.35;
      gain.gain.setValueAtTime(0.0001, t);
      gain.gain.exponentialRampToValueAtTime(0.4, t + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + 0.25);
      osc.connect(gain).connect(audio.destination);
      osc.start(t);
      osc.stop(t + 0.3);
    }
  }
  window.soudanBeep = beep;

  // -- the alert bar ---------------------------------------------------------------------------
  const title = document.title;
  function showAlert(text, link, kind) {
    const bar = document.getElementById("alert");
    if (!bar) return;
    document.getElementById("alert-text").textContent = text;
    const a = document.getElementById("alert-link");
    if (link) { a.href = link; a.hidden = false; } else { a.hidden = true; }
    bar.classList.toggle("info", kind === "info");
    bar.hidden = false;
    bar.classList.remove("flash");
    void bar.offsetWidth;
    bar.classList.add("flash");
    document.title = "● " + title;
  }
  const closeButton = document.getElementById("alert-close");
  if (closeButton) {
    closeButton.addEventListener("click", function () {
      document.getElementById("alert").hidden = true;
      document.title = title;
    });
  }

  // -- fragments: the server draws, the page swaps ----------------------------------------------
  let refreshTimer = null;
  let refreshing = false;
  function refresh() {
    if (!area || !area.dataset.fragment) return;
    if (refreshTimer) return;
    refreshTimer = setTimeout(async function () {
      refreshTimer = null;
      if (refreshing) { refresh(); return; }
      refreshing = true;
      try {
        const response = await fetch(area.dataset.fragment, {
          headers: { "X-Soudan-Background": "1" }, credentials: "same-origin",
        });
        if (response.status === 401) { window.location.href = "/login"; return; }
        if (response.ok) {
          const openDetails = Array.from(area.querySelectorAll("details[open] summary")).map(s => s.textContent);
          area.innerHTML = await response.text();
          area.querySelectorAll("details summary").forEach(function (s) {
            if (openDetails.indexOf(s.textContent) >= 0) s.parentElement.open = true;
          });
          area.dataset.version = String(Number(area.dataset.version || "0") + 1);
        }
      } catch (e) { /* the next event or the reconnect redraws */ }
      refreshing = false;
    }, 250);
  }

  // -- the live stream -------------------------------------------------------------------------
  const caseRoles = ["counselor", "supervisor", "admin"];
  const overdueSeen = new Set();
  const failedSeen = new Set();
  function connect() {
    if (!live || caseRoles.indexOf(body.dataset.role) < 0 || !window.EventSource) return;
    const source = new EventSource("/events");
    source.addEventListener("open", function () { body.dataset.liveState = "open"; refresh(); });
    source.addEventListener("case", function (e) {
      const data = JSON.parse(e.data);
      if (live === "queue" || live === "supervise") refresh();
      if (live === "case" && area && data.case_id === area.dataset.caseId) refresh();
      if (data.alert === "urgent") {
        showAlert("緊急キーワードのある相談が届きました。待ち行列のいちばん上を見てください。", "/queue", "urgent");
        beep(3, 880);
      } else if (data.alert === "new" && live === "queue") {
        showAlert("新しい相談が届きました。", "/queue", "info");
        beep(1, 660);
      }
    });
    source.addEventListener("emergency", function (e) {
      const data = JSON.parse(e.data);
      showAlert("緊急対応が始まりました。内容を確認してください。", "/emergencies/" + data.emergency_id, "urgent");
      beep(5, 988);
      if (live === "supervise") refresh();
    });
    source.addEventListener("emergency_update", function () { if (live === "supervise") refresh(); });
    source.addEventListener("overdue", function (e) {
      const data = JSON.parse(e.data);
      const fresh = data.case_ids.filter(id => !overdueSeen.has(id));
      data.case_ids.forEach(id => overdueSeen.add(id));
      if (live === "supervise") refresh();
      if (fresh.length) {
        showAlert("緊急の相談が " + data.minutes + " 分以上だれにも受けられていません（" + data.count + "件）。", "/supervise", "urgent");
        beep(3, 880);
      }
    });
    source.addEventListener("failed_replies", function (e) {
      const data = JSON.parse(e.data);
      const fresh = data.command_ids.filter(id => !failedSeen.has(id));
      data.command_ids.forEach(id => failedSeen.add(id));
      if (live === "supervise") refresh();
      if (fresh.length) {
        showAlert("相談員の返信が " + data.minutes + " 分以上相談者に届いていません（" + data.count + "件）。", "/supervise", "urgent");
        beep(2, 520);
      }
    });
    source.addEventListener("broadcast", function () { if (live === "broadcasts") refresh(); });
    source.addEventListener("notice", function (e) {
      const data = JSON.parse(e.data);
      showAlert(data.text, data.case_id ? "/cases/" + data.case_id : null, "urgent");
      beep(2, 520);
    });
    source.addEventListener("session", function () { source.close(); window.location.href = "/login"; });
    source.addEventListener("error", function () { body.dataset.liveState = "reconnecting"; });
  }
  connect();

  // -- keep the session while the page is in use -------------------------------------------------
  let lastTouch = Date.now();
  function touch() {
    if (!csrf || Date.now() - lastTouch < 60000) return;
    lastTouch = Date.now();
    fetch("/session/touch", { method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" })
      .catch(function () {});
  }
  ["keydown", "click", "input"].forEach(ev => document.addEventListener(ev, touch, { passive: true }));

  // -- confirmations -----------------------------------------------------------------------------
  document.addEventListener("submit", function (e) {
    const form = e.target;
    // A button's own question (e.g. the broadcast's 送る) wins over the form's.
    const question = (e.submitter && e.submitter.dataset.confirm) || form.dataset.confirm;
    if (question && !window.confirm(question)) {
      e.preventDefault();
      return;
    }
    form.querySelectorAll("button").forEach(function (b) {
      if (!b.name) setTimeout(function () { b.disabled = true; }, 0);
    });
  });

  // -- the reply box: counters, more bubbles, canned responses ------------------------------------
  const MAX = 5000;
  let lastText = null;
  function count(textarea) {
    const counter = document.querySelector('.counter[data-for="' + textarea.id + '"]');
    if (!counter) return;
    const n = textarea.value.length;  // UTF-16 code units, as LINE counts
    counter.textContent = n + " / " + MAX;
    counter.classList.toggle("over", n > MAX);
  }
  document.querySelectorAll(".bubble-input textarea").forEach(function (t) {
    count(t);
    t.addEventListener("input", function () { count(t); });
    t.addEventListener("focus", function () { lastText = t; });
  });
  const add = document.getElementById("add-bubble");
  if (add) {
    add.addEventListener("click", function () {
      const hidden = document.querySelector(".bubble-input[hidden]");
      if (hidden) { hidden.hidden = false; hidden.querySelector("textarea").focus(); }
      if (!document.querySelector(".bubble-input[hidden]")) add.disabled = true;
    });
  }
  document.querySelectorAll(".canned-insert").forEach(function (button) {
    button.addEventListener("click", function () {
      const target = lastText || document.querySelector(".bubble-input:not([hidden]) textarea");
      if (!target) return;
      const start = target.selectionStart || target.value.length;
      target.value = target.value.slice(0, start) + button.dataset.text + target.value.slice(target.selectionEnd || start);
      target.focus();
      count(target);
    });
  });
})();
