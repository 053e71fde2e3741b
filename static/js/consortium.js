// The consortium page: while a pooled run on it is queued or running, ask the API for the
// runs every few seconds and reload the page when one of them has moved on, so the
// coordinator sees it finish (with its files) without reloading by hand.
(function () {
  "use strict";
  var table = document.getElementById("run-table");
  if (!table) return;
  var api = table.getAttribute("data-api");
  var waiting = {};
  Array.prototype.forEach.call(table.querySelectorAll("tr.run-row"), function (row) {
    var status = row.getAttribute("data-status");
    if (status === "queued" || status === "running") waiting[row.getAttribute("data-run")] = status;
  });
  if (!api || !Object.keys(waiting).length) return;
  var POLL_MS = 3000;

  function poll() {
    fetch(api, {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(function (response) {
        if (response.status === 401 || response.status === 403 || response.status === 404) return null;
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (body) {
        if (body === null) return;  // signed out or no longer a member: the next click says so
        var moved = (body.results || []).some(function (run) {
          var before = waiting[String(run.id)];
          return before !== undefined && before !== run.status;
        });
        if (moved) {
          window.location.reload();
          return;
        }
        window.setTimeout(poll, POLL_MS);
      })
      .catch(function () { window.setTimeout(poll, POLL_MS * 2); });
  }

  window.setTimeout(poll, POLL_MS);
})();
