// LINE相談コンソール, the case page: 既読 and "入力中…" in the student's LINE.
// - 既読: when a new message of the student appears on this page while it is in view (or once
//   the page comes back into view), the page tells the console, which marks it read on LINE.
//   Opening the case marks what it shows (the server does that when it draws the page).
// - 入力中…: while keys are pressed in the reply box, the page tells the console at most every
//   RENEW_MS; the console shows LINE's loading animation for a few seconds more each time.
//   Focusing, scrolling or reading sends nothing.
"use strict";

(function () {
  const area = document.getElementById("live-area");
  if (!area || !area.dataset.caseId) return;
  const csrf = document.body.dataset.csrf || "";
  const base = "/cases/" + encodeURIComponent(area.dataset.caseId);
  const RENEW_MS = 5000;

  function post(path, background) {
    const headers = { "X-CSRF-Token": csrf };
    if (background) headers["X-Soudan-Background"] = "1";
    return fetch(base + path, { method: "POST", headers: headers, credentials: "same-origin" })
      .catch(function () { /* nothing to do: the next look or keystroke asks again */ });
  }

  // -- 既読 ------------------------------------------------------------------------------------
  function lastIncoming() {
    const all = area.querySelectorAll(".msg.in");
    const last = all.length ? all[all.length - 1].querySelector(".meta") : null;
    return all.length + "|" + (last ? last.textContent : "");
  }
  let shown = lastIncoming();  // drawn with the page: the server marked these read
  let unseen = false;
  function look() {
    const now = lastIncoming();
    if (now !== shown) { unseen = true; shown = now; }
    if (unseen && document.visibilityState === "visible") {
      unseen = false;
      post("/seen", true);
    }
  }
  new MutationObserver(look).observe(area, { childList: true, subtree: true });
  document.addEventListener("visibilitychange", look);

  // -- 入力中… -----------------------------------------------------------------------------------
  const form = document.getElementById("reply-form");
  if (!form) return;  // only whoever may reply has the box
  let last = 0;
  form.addEventListener("input", function (e) {
    if (!e.target || e.target.tagName !== "TEXTAREA") return;
    const now = Date.now();
    if (now - last < RENEW_MS) return;
    last = now;
    post("/typing", false);
  });
})();
