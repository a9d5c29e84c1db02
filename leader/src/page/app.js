// Kiln's status page: keeps the live part of the page current by asking the leader
// for it again every two seconds (server-rendered HTML, so this is all the script
// there is). Without JavaScript the page still works; it just does not update.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live || !live.dataset.src) return;
  let busy = false;
  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const response = await fetch(live.dataset.src, { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401) { window.location.reload(); return; }
      if (!response.ok) return;
      const html = await response.text();
      if (html === live.dataset.last) return;
      // Keep the keyboard where it was: the focused element is found again by id.
      const focused = document.activeElement && live.contains(document.activeElement) ? document.activeElement.id : "";
      live.innerHTML = html;
      live.dataset.last = html;
      if (focused) {
        const again = document.getElementById(focused);
        if (again) again.focus();
      }
      document.body.dataset.updated = String(Date.now());
    } catch (e) {
      // The leader may be restarting: try again at the next tick.
    } finally {
      busy = false;
    }
  }
  live.dataset.last = live.innerHTML;
  setInterval(refresh, 2000);
  document.addEventListener("visibilitychange", refresh);
})();
