// Re-fetch the live fragment every 2 s; back to the login form when the session ends.
(function () {
  var live = document.getElementById("live");
  var conn = document.getElementById("conn");
  function tick() {
    fetch(live.dataset.src, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/ui/login"); return null; }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (text) {
        if (text === null) { return; }
        live.innerHTML = text;
        conn.textContent = "live"; conn.className = "conn";
      })
      .catch(function () { conn.textContent = "offline"; conn.className = "conn off"; })
      .finally(function () { setTimeout(tick, 2000); });
  }
  setTimeout(tick, 2000);
})();
