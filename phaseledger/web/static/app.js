// phaseledger web view: live refresh of a page's fragment (no framework, no build step).
// An element with data-refresh="URL" and data-interval="SECONDS" is re-fetched and
// replaced while the "live" checkbox is ticked and the tab is visible. When the fresh
// content says another data-status than before (a run finished, or began waiting), the
// whole page is loaded again, so its other parts show the change too.
(function () {
  "use strict";
  function reload() {
    // Load the page again without the one-off notice or error of an action.
    var params = new URLSearchParams(window.location.search);
    params.delete("notice");
    params.delete("error");
    var query = params.toString();
    window.location.replace(window.location.pathname + (query ? "?" + query : "") + window.location.hash);
  }
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
          if (focused) { return; }
          var before = el.querySelector("[data-status]");
          var was = before ? before.getAttribute("data-status") : null;
          el.innerHTML = html;
          el.setAttribute("data-refreshed", String(Date.now()));
          var after = el.querySelector("[data-status]");
          if (was !== null && after && after.getAttribute("data-status") !== was) { reload(); }
        })
        .catch(function () { /* the next tick tries again */ });
    }, seconds * 1000);
  }
  document.addEventListener("DOMContentLoaded", function () {
    var els = document.querySelectorAll("[data-refresh]");
    for (var i = 0; i < els.length; i++) { start(els[i]); }
  });
})();
