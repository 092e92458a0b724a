// phaseledger web view: live refresh of a page's fragment (no framework, no build step).
// An element with data-refresh="URL" and data-interval="SECONDS" is re-fetched and
// replaced while the "live" checkbox is ticked and the tab is visible.
(function () {
  "use strict";
  function start(el) {
    var seconds = parseFloat(el.getAttribute("data-interval") || "5");
    var toggle = document.getElementById("live-toggle");
    if (!(seconds > 0)) { return; }
    window.setInterval(function () {
      if (document.hidden || (toggle && !toggle.checked)) { return; }
      var url = el.getAttribute("data-refresh");
      fetch(url, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) { return; }
          var focused = document.activeElement && el.contains(document.activeElement);
          if (!focused) { el.innerHTML = html; el.setAttribute("data-refreshed", String(Date.now())); }
        })
        .catch(function () { /* the next tick tries again */ });
    }, seconds * 1000);
  }
  document.addEventListener("DOMContentLoaded", function () {
    var els = document.querySelectorAll("[data-refresh]");
    for (var i = 0; i < els.length; i++) { start(els[i]); }
  });
})();
