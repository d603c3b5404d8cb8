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

// Rollout buttons: ask why (required, it goes to the audit log), post it with the session
// cookie, say what happened. Delegated from #live, whose content is replaced every 2 s.
(function () {
  var live = document.getElementById("live");
  var notice = document.getElementById("notice");
  function say(text, bad) {
    notice.textContent = text;
    notice.className = bad ? "notice bad" : "notice";
  }
  live.addEventListener("click", function (ev) {
    var button = ev.target.closest("button.control");
    if (!button) { return; }
    var action = button.dataset.action, name = button.dataset.release;
    var reason = window.prompt("Why " + action + " the rollout of " + name + "? (kept in the audit log)");
    if (reason === null) { return; }
    if (!reason.trim()) { say(action + " " + name + ": a reason is required", true); return; }
    button.disabled = true;
    fetch("/ui/rollouts/" + encodeURIComponent(name) + "/" + encodeURIComponent(action), {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ reason: reason })
    })
      .then(function (r) { return r.json().then(function (doc) { return [r.status, doc]; }); })
      .then(function (pair) {
        if (pair[0] === 200) {
          say(action + " " + name + " " + pair[1].version + " recorded (control #" + pair[1].seq + ")", false);
        } else {
          say(action + " " + name + " refused: " + (pair[1].message || ("HTTP " + pair[0])), true);
        }
      })
      .catch(function (e) { say(action + " " + name + " failed: " + e, true); })
      .finally(function () { button.disabled = false; });
  });
})();
