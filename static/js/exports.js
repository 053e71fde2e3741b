/*
 * Suifang export job page (exports/templates/exports/export_job.html).
 *
 * The server renders the whole page; this script:
 *   - polls the JSON API (GET /api/v1/exports/<id>/, with the session) every 2 s while the
 *     job is queued or running, and moves the progress bar, its text percentage and the
 *     status; when the job ends it reloads the page, which then lists the files and the
 *     manifest (rendered by the server, in the user's language);
 *   - downloads a file: POST .../files/<fid>/link/ (CSRF header), then navigates to the
 *     short-lived URL returned (the browser saves the attachment, the page stays);
 *   - copies a file's full SHA-256.
 */
(function () {
  "use strict";

  var root = document.getElementById("export-job");
  if (!root) return;
  var messagesNode = document.getElementById("exports-messages");
  var M = messagesNode ? JSON.parse(messagesNode.textContent) : {};
  var csrfInput = document.querySelector("input[name=csrfmiddlewaretoken]");
  var csrfToken = csrfInput ? csrfInput.value : "";
  var notices = document.getElementById("export-notices");
  var POLL_MS = 2000;
  var RUNNING = {queued: true, running: true};

  function notice(text, kind) {
    if (!notices) return;
    notices.textContent = "";
    if (!text) return;
    var p = document.createElement("p");
    p.className = "notice notice-" + (kind || "error");
    p.textContent = text;
    notices.appendChild(p);
  }

  function size(bytes) {
    var n = Number(bytes) || 0;
    if (n >= 1048576) return (n / 1048576).toFixed(1) + " MB";
    if (n >= 1024) return Math.round(n / 1024) + " KB";
    return n + " B";
  }

  function showProgress(state) {
    var percent = Math.round(100 * (Number(state.progress) || 0));
    var bar = document.getElementById("export-progress");
    var text = document.getElementById("export-percent");
    var status = document.getElementById("export-status");
    if (bar) {
      bar.value = percent;
      bar.textContent = percent + " %";
    }
    if (text) text.textContent = percent + " %";
    var writing = document.getElementById("export-writing");
    if (writing) {
      writing.textContent = state.writing && M.writing
        ? M.writing.replace("%(file)s", state.writing.file).replace("%(size)s", size(state.writing.bytes)) : "";
    }
    var rows = document.getElementById("export-rows");
    if (rows && M.rows && state.rows_total !== undefined) {
      rows.textContent = M.rows.replace("%(done)s", String(state.rows_done || 0))
        .replace("%(total)s", String(state.rows_total || 0));
    }
    if (status && state.status) {
      status.textContent = (M.statuses && M.statuses[state.status]) || state.status;
      status.className = "badge status-" + state.status;
    }
  }

  function poll() {
    fetch(root.getAttribute("data-api"), {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(function (response) {
        if (response.status === 401 || response.status === 403 || response.status === 404) {
          // Signed out, or the export is gone: asking again every few seconds cannot help.
          notice(M.poll_gone, "error");
          return null;
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (state) {
        if (state === null) return;
        notice("");
        showProgress(state);
        if (RUNNING[state.status]) {
          window.setTimeout(poll, POLL_MS);
        } else {
          // Finished or failed: the server renders the files, manifest or retry button.
          window.location.reload();
        }
      })
      .catch(function () {
        notice(M.poll_failed, "warning");
        window.setTimeout(poll, POLL_MS);
      });
  }

  if (RUNNING[root.getAttribute("data-status")]) window.setTimeout(poll, POLL_MS);

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (!(target instanceof Element)) return;
    var download = target.closest("button.download");
    if (download) {
      download.disabled = true;
      fetch(download.getAttribute("data-link"), {
        method: "POST", credentials: "same-origin",
        headers: {Accept: "application/json", "X-CSRFToken": csrfToken}
      })
        .then(function (response) {
          // The server says why (role, file no longer stored); signed out: the poll's wording.
          return response.json().catch(function () { return {}; }).then(function (body) {
            if (response.ok) return body;
            var refused = new Error(response.status === 401 ? M.poll_gone : (body.error && body.error.message) || "");
            refused.fromServer = true;
            throw refused;
          });
        })
        .then(function (link) {
          notice("");
          window.location.assign(link.url);
        })
        // The server's reason when it gave one; a network failure's own text is the browser's.
        .catch(function (error) { notice((error && error.fromServer && error.message) || M.download_failed, "error"); })
        .then(function () { download.disabled = false; });
      return;
    }
    var copy = target.closest("button.copy-sha");
    if (copy && navigator.clipboard) {
      navigator.clipboard.writeText(copy.getAttribute("data-copy")).then(function () {
        copy.textContent = M.copied || copy.textContent;
      }, function () { /* the full value stays readable in the title */ });
    }
  });
})();
