// modelreg UI: follow the registry live. Every two seconds ask for the newest audit seq of this
// page's model (or of any model on the index); when it moved, fetch the page again and swap
// its <main> in place. No framework, nothing fetched from elsewhere.
(function () {
  "use strict";
  var POLL_MS = 2000;
  var body = document.body;
  var live = document.getElementById("live");
  var seq = body.getAttribute("data-seq");
  var model = body.getAttribute("data-model");
  if (seq === "") return; // error and sign-in pages do not follow anything

  function setState(name) {
    if (!live) return;
    live.classList.remove("offline", "updated");
    if (name) live.classList.add(name);
    live.querySelector(".live-text").textContent = name === "offline" ? "offline" : name === "updated" ? "updated" : "live";
  }

  function localTimes(root) {
    var nodes = root.querySelectorAll("time[datetime]");
    for (var i = 0; i < nodes.length; i++) {
      var at = new Date(nodes[i].getAttribute("datetime"));
      if (!isNaN(at)) nodes[i].title = at.toLocaleString();
    }
  }

  function refresh() {
    return fetch(window.location.href, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("main");
        if (!fresh) return;
        document.getElementById("main").replaceWith(fresh);
        seq = doc.body.getAttribute("data-seq");
        body.setAttribute("data-seq", seq);
        localTimes(fresh);
        setState("updated");
        setTimeout(function () { setState(null); }, 1200);
      });
  }

  function poll() {
    var url = "/ui/state" + (model ? "?model=" + encodeURIComponent(model) : "");
    fetch(url, { headers: { "Accept": "application/json" }, credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(function (state) {
        if (String(state.seq) !== String(seq)) return refresh();
        setState(null);
      })
      .catch(function () { setState("offline"); })
      .then(function () { setTimeout(poll, POLL_MS); });
  }

  localTimes(document);
  setTimeout(poll, POLL_MS);
})();
