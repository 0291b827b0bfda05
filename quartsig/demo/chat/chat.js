// The demo chat page (quartsig.demo.telegramchat): post its forms in place and follow the
// conversation by long polling. The page works without this script; the server renders
// (and escapes) every message, so this only swaps in what it sent.
"use strict";

(() => {
  const log = document.querySelector('[data-testid="log"]');
  let version = log.dataset.version;

  const scrollDown = () => window.scrollTo(0, document.body.scrollHeight);
  const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function follow() {
    for (;;) {
      try {
        const answer = await fetch(`${log.dataset.poll}?since=${encodeURIComponent(version)}`,
          { headers: { Accept: "application/json" }, cache: "no-store" });
        if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
        const body = await answer.json();
        if (body.version !== version) {
          version = body.version;
          log.innerHTML = body.html;
          document.body.dataset.version = version;
          scrollDown();
        }
      } catch (error) {
        await pause(2000); // the stand-in stopped, or a hiccup: try again, gently
      }
    }
  }

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || form.method.toLowerCase() !== "post") return;
    event.preventDefault();
    const body = new URLSearchParams(new FormData(form));
    const box = form.querySelector('input[name="text"]:not([type="hidden"])');
    if (box) box.value = "";
    try {
      await fetch(form.action, { method: "POST", body, headers: { Accept: "application/json" } });
    } catch (error) {
      form.submit(); // let the browser post it and show what happened
    }
    if (box) box.focus();
  });

  scrollDown();
  follow();
})();
