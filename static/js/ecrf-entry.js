/*
 * Suifang data entry (ecrf/templates/ecrf/entry.html) and ePRO (epro.html).
 *
 * The server renders every item (read-only without JavaScript). This script:
 *   - enables the inputs (when the user may edit);
 *   - evaluates branching (show_if) and calculations live with window.SuifangLogic, in the
 *     same order and with the same data shape as ecrf/validation.py (the other forms'
 *     data come from the server's entry_context, embedded with json_script);
 *   - keeps every change as a local draft in localStorage, keyed by
 *     (host, page kind, task, form, entry version), restored after a reload;
 *   - saves the whole form: staff pages PUT it to the JSON API with If-Match (412 when
 *     someone else saved in between), the ePRO page POSTs it to its own address;
 *   - shows the server's errors next to the items, and swaps in the queries raised;
 *   - uploads a chosen file at once (POST /api/v1/tasks/<task>/forms/<form>/files/); the
 *     returned {"id", "name", "size", "type"} becomes the item's value, saved with the form
 *     (a save pressed during an upload waits for it).
 * Hidden items are cleared before saving: the server refuses values of hidden items.
 */
(function () {
  "use strict";

  // --- the signature page: show the chosen meaning in the manifestation ----------------------
  var signForm = document.getElementById("sign-form");
  if (signForm) {
    signForm.addEventListener("change", function (event) {
      var target = event.target;
      if (target && target.name === "meaning") {
        var label = target.closest("label");
        var shown = document.getElementById("manifest-meaning");
        if (label && shown) shown.textContent = label.textContent.trim();
      }
    });
  }

  var configNode = document.getElementById("ecrf-config");
  var root = document.getElementById("entry-form");
  if (!configNode || !root) return;
  var config = JSON.parse(configNode.textContent);
  var M = config.messages || {};
  var Logic = window.SuifangLogic;
  var definition = config.definition || {};
  var items = definition.items || [];
  var codeLists = definition.code_lists || {};
  var VALUELESS = {section: true, group: true};
  var MAX_PASSES = 5;
  var notices = document.getElementById("entry-notices");
  var csrfInput = document.querySelector("input[name=csrfmiddlewaretoken]");
  var csrfToken = csrfInput ? csrfInput.value : "";
  var busy = false;
  var rowCounter = 0;

  function fmt(text, params) {
    return String(text || "").replace(/%\((\w+)\)s/g, function (_m, key) {
      return params && key in params ? String(params[key]) : "";
    });
  }

  function cssEscape(text) {
    return window.CSS && CSS.escape ? CSS.escape(text) : String(text).replace(/["\\\]\[.]/g, "\\$&");
  }

  // --- DOM access ------------------------------------------------------------------------------

  function wrapperOf(path) {
    return root.querySelector('.item[data-path="' + cssEscape(path) + '"]');
  }

  function ownInput(wrapper, selector) {
    // The wrapper's own controls (not those of a nested group row).
    var found = wrapper.querySelectorAll(selector);
    for (var i = 0; i < found.length; i += 1) {
      if (found[i].closest(".item") === wrapper) return found[i];
    }
    return null;
  }

  function ownInputs(wrapper, selector) {
    return Array.prototype.filter.call(wrapper.querySelectorAll(selector), function (node) {
      return node.closest(".item") === wrapper;
    });
  }

  function isEmpty(value) {
    return value === null || value === undefined || value === "" || (Array.isArray(value) && value.length === 0);
  }

  function itemType(wrapper) {
    return wrapper.getAttribute("data-type");
  }

  function missingSelect(wrapper) {
    return ownInput(wrapper, "select.missing");
  }

  // The raw value as it is sent to the server (strings as typed; lists for checkboxes).
  function readRaw(wrapper) {
    var type = itemType(wrapper);
    var node;
    if (type === "single_choice" || type === "yes_no") {
      node = ownInput(wrapper, "select.value");
      if (node) return node.value || null;
      var checked = ownInputs(wrapper, "input[type=radio]").filter(function (r) { return r.checked; });
      return checked.length ? checked[0].value : null;
    }
    if (type === "multiple_choice") {
      return ownInputs(wrapper, "input[type=checkbox]").filter(function (c) { return c.checked; })
        .map(function (c) { return c.value; });
    }
    if (type === "date" && ownInput(wrapper, ".part-year")) {
      var year = ownInput(wrapper, ".part-year").value.trim();
      var month = ownInput(wrapper, ".part-month").value;
      var day = ownInput(wrapper, ".part-day").value.trim();
      if (!year) return (month || day) ? (month ? "-" + month : "") + (day ? "-" + day : "") : null;
      if (!month) return day ? year + "--" + day : year;
      if (!day) return year + "-" + month;
      return year + "-" + month + "-" + (day.length === 1 ? "0" + day : day);
    }
    if (type === "scale") {
      node = ownInput(wrapper, "input[type=range]");
      return !node || node.hasAttribute("data-empty") ? null : node.value;
    }
    if (type === "file") {
      node = ownInput(wrapper, ".file-value");
      try { return node ? JSON.parse(node.getAttribute("data-file") || "null") : null; } catch (e) { return null; }
    }
    node = ownInput(wrapper, ".value");
    if (!node) return null;
    var text = node.value;
    if (type === "integer" || type === "decimal") text = text.trim();
    return text === "" ? null : text;
  }

  function writeRaw(wrapper, value) {
    var type = itemType(wrapper);
    var node;
    if (type === "single_choice" || type === "yes_no") {
      node = ownInput(wrapper, "select.value");
      if (node) { node.value = isEmpty(value) ? "" : String(value); return; }
      ownInputs(wrapper, "input[type=radio]").forEach(function (r) { r.checked = !isEmpty(value) && r.value === String(value); });
      return;
    }
    if (type === "multiple_choice") {
      var wanted = Array.isArray(value) ? value.map(String) : [];
      ownInputs(wrapper, "input[type=checkbox]").forEach(function (c) { c.checked = wanted.indexOf(c.value) >= 0; });
      return;
    }
    if (type === "date" && ownInput(wrapper, ".part-year")) {
      var text = isEmpty(value) ? "" : String(value);
      ownInput(wrapper, ".part-year").value = text.slice(0, 4);
      ownInput(wrapper, ".part-month").value = text.slice(5, 7);
      ownInput(wrapper, ".part-day").value = text.slice(8, 10);
      return;
    }
    if (type === "scale") {
      node = ownInput(wrapper, "input[type=range]");
      if (!node) return;
      if (isEmpty(value)) { node.setAttribute("data-empty", ""); node.value = node.min; }
      else { node.removeAttribute("data-empty"); node.value = String(value); }
      showScale(wrapper);
      return;
    }
    if (type === "file") {
      if (isEmpty(value)) cancelUpload(wrapper);
      showFile(wrapper, value);
      return;
    }
    if (type === "calculated") return;
    node = ownInput(wrapper, ".value");
    if (node) node.value = isEmpty(value) ? "" : String(value);
  }

  function showScale(wrapper) {
    var node = ownInput(wrapper, "input[type=range]");
    var out = ownInput(wrapper, "output.scale-value");
    if (node && out) out.textContent = node.hasAttribute("data-empty") ? "—" : node.value;
  }

  // --- file items: uploaded as soon as chosen, the returned value kept as the item's -----------

  var uploading = [];  // uploads in flight: promises of {outcome: "ok"|"failed"|"aborted", wrapper}

  function formatSize(bytes) {
    // As Django's filesizeformat (the server renders stored files' sizes with it).
    var n = Number(bytes) || 0;
    var text;
    if (n < 1024) text = fmt(n === 1 ? M.file_byte : M.file_bytes, {n: n});
    else if (n < 1048576) text = (n / 1024).toFixed(1) + " KB";
    else if (n < 1073741824) text = (n / 1048576).toFixed(1) + " MB";
    else text = (n / 1073741824).toFixed(1) + " GB";
    return text.replace(/ /g, "\u00a0");
  }

  function fileUrl(id) {
    return config.file_url ? config.file_url.replace("__id__", encodeURIComponent(id)) : null;
  }

  function isFileValue(value) {
    return !!value && typeof value === "object" && !Array.isArray(value) && typeof value.id === "string";
  }

  // The stored value (data-file, what readRaw sends) and what the user sees of it.
  function showFile(wrapper, value) {
    var node = ownInput(wrapper, ".file-value");
    if (!node) return;
    var file = isFileValue(value) ? {id: value.id} : null;
    if (file) {
      ["name", "size", "type"].forEach(function (key) { if (key in value) file[key] = value[key]; });
    }
    node.setAttribute("data-file", JSON.stringify(file));
    node.textContent = "";
    if (file) {
      var name = String(file.name || file.id);
      var url = fileUrl(file.id);
      var shown = document.createElement(url ? "a" : "span");
      shown.className = url ? "file-link" : "file-name";
      if (url) { shown.href = url; shown.setAttribute("download", name); }
      shown.textContent = name;
      node.appendChild(shown);
      if (file.size) {
        var size = document.createElement("span");
        size.className = "muted file-size";
        size.textContent = "(" + formatSize(file.size) + ")";
        node.appendChild(document.createTextNode(" "));
        node.appendChild(size);
      }
    } else {
      node.textContent = "\u2014";
    }
    var remove = ownInput(wrapper, ".file-remove");
    if (remove) remove.hidden = !file;
    var pick = ownInput(wrapper, ".file-pick");
    if (pick) pick.textContent = file ? M.file_replace : M.file_choose;
  }

  function fileStatus(wrapper, text) {
    var status = ownInput(wrapper, ".file-status");
    if (status) status.textContent = text || "";
  }

  function clearFileErrors(wrapper) {
    var ul = errorList(wrapper);
    if (!ul) return;
    Array.prototype.slice.call(ul.querySelectorAll(".file-error")).forEach(function (li) { li.remove(); });
    if (!ul.children.length) wrapper.classList.remove("has-error");
  }

  function fileErrors(wrapper, messages) {
    clearFileErrors(wrapper);
    var ul = errorList(wrapper);
    if (ul) addErrors(ul, messages, "file-error");
    wrapper.classList.add("has-error");
  }

  function showUploading(wrapper, state) {
    var progress = ownInput(wrapper, ".file-progress");
    var cancel = ownInput(wrapper, ".file-cancel");
    if (progress) {
      progress.hidden = !state;
      if (state) progress.removeAttribute("value");  // indeterminate until the first progress event
    }
    if (cancel) cancel.hidden = !state;
    wrapper.classList.toggle("uploading", state);
    if (state) wrapper.setAttribute("aria-busy", "true");
    else wrapper.removeAttribute("aria-busy");
  }

  function cancelUpload(wrapper) {
    if (wrapper.suifangUpload) wrapper.suifangUpload.abort();
  }

  // What the API said, as messages for the item (ecrf/api/views.py EntryFileUploadView).
  function uploadProblems(status, body, max) {
    var error = (body && body.error) || {};
    if (status === 400) {
      var fields = error.fields || {};
      var messages = [];
      Object.keys(fields).forEach(function (key) { messages = messages.concat(fields[key] || []); });
      return messages.length ? messages : [error.message || fmt(M.file_error, {status: status})];
    }
    if (status === 401 || status === 403) return [M.file_forbidden];
    if (status === 404) return [M.file_not_found];
    if (status === 413) return [fmt(M.file_too_large_here, {max: formatSize(max)})];
    return [fmt(M.file_error, {status: status})];
  }

  function uploadFile(wrapper, input) {
    var file = input.files && input.files[0];
    if (!file || !config.files_url) return;
    cancelUpload(wrapper);
    clearFileErrors(wrapper);
    var max = Number(input.getAttribute("data-max-bytes")) || 0;
    if (max && file.size > max) {  // spare the upload: the server would refuse it
      input.value = "";
      fileStatus(wrapper, "");
      fileErrors(wrapper, [fmt(M.file_too_large, {size: formatSize(file.size), max: formatSize(max)})]);
      return;
    }
    var data = new FormData();
    data.append("item", wrapper.getAttribute("data-code"));
    data.append("file", file, file.name);
    var xhr = new XMLHttpRequest();
    var progress = ownInput(wrapper, ".file-progress");
    var promise = new Promise(function (resolve) {
      function finish(outcome, messages, value) {
        uploading = uploading.filter(function (p) { return p !== promise; });
        if (wrapper.suifangUpload === xhr) {  // not replaced by a newer choice
          wrapper.suifangUpload = null;
          showUploading(wrapper, false);
          input.value = "";  // the same file can be chosen again
          if (outcome === "ok") {
            showFile(wrapper, value);
            fileStatus(wrapper, fmt(M.file_uploaded, {name: value.name || file.name}));
            apply(evaluateForm());
            saveDraft();
          } else if (outcome === "failed") {
            fileStatus(wrapper, "");
            fileErrors(wrapper, messages);
          } else {
            fileStatus(wrapper, M.file_cancelled);
          }
        }
        resolve({outcome: outcome, wrapper: wrapper});
      }
      xhr.upload.addEventListener("progress", function (event) {
        if (progress && event.lengthComputable && event.total) {
          progress.value = Math.round(event.loaded / event.total * 100);
        }
      });
      xhr.addEventListener("load", function () {
        var body = null;
        try { body = xhr.responseText ? JSON.parse(xhr.responseText) : null; } catch (e) { body = null; }
        if (xhr.status === 201 && isFileValue(body)) finish("ok", null, body);
        else finish("failed", uploadProblems(xhr.status, body, max));
      });
      xhr.addEventListener("error", function () { finish("failed", [M.file_network]); });
      xhr.addEventListener("abort", function () { finish("aborted"); });
    });
    uploading.push(promise);
    wrapper.suifangUpload = xhr;
    showUploading(wrapper, true);
    fileStatus(wrapper, fmt(M.file_uploading, {name: file.name}));
    xhr.open("POST", config.files_url);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("X-CSRFToken", csrfToken);
    xhr.setRequestHeader("X-Requested-With", "fetch");
    xhr.send(data);
  }

  // Saving while a file is still uploading waits for it (the value arrives with the
  // upload's answer); a failed upload stops the save, so nothing is saved without it.
  function waitForUploads(complete) {
    setBusy(true);
    var box = notice(M.file_wait, "info", "save-notice");
    Promise.all(uploading.slice()).then(function (results) {
      box.remove();
      setBusy(false);
      var failed = results.filter(function (r) { return r.outcome === "failed" && root.contains(r.wrapper); });
      if (failed.length) {
        notice(M.file_failed, "error", "save-notice");
        focusWrapper(failed[0].wrapper);
        return;
      }
      save(complete);
    });
  }

  // The value as the server's logic sees it after parsing (ecrf/validation.py _parse).
  function forLogic(item, raw) {
    if (isEmpty(raw)) return null;
    if (item.type === "integer" || item.type === "decimal" || item.type === "scale") {
      var number = Number(raw);
      return typeof raw === "string" && raw.trim() !== "" && isFinite(number) ? number : raw;
    }
    if (item.type === "multiple_choice" && Array.isArray(raw)) {
      var order = (codeLists[item.code_list] || []).map(function (e) { return e.value; });
      return raw.slice().sort(function (a, b) { return order.indexOf(a) - order.indexOf(b); });
    }
    return raw;
  }

  // --- groups -----------------------------------------------------------------------------------

  function groupRows(wrapper) {
    var body = ownInput(wrapper, "tbody");
    return body ? Array.prototype.slice.call(body.children) : [];
  }

  function cellOf(row, code) {
    return row.querySelector('.item[data-code="' + cssEscape(code) + '"]');
  }

  function renumber(wrapper) {
    var code = wrapper.getAttribute("data-code");
    var rows = groupRows(wrapper);
    rows.forEach(function (row, index) {
      row.setAttribute("data-row", String(index));
      var number = row.querySelector(".row-no");
      if (number) number.textContent = String(index + 1);
      // Heard as "Remove row 2", not one of many identical "Remove row" buttons.
      var remove = row.querySelector(":scope > .row-actions > .remove-row");
      if (remove) remove.setAttribute("aria-label", (M.remove_row || "") + " " + (index + 1));
      Array.prototype.forEach.call(row.querySelectorAll(".item"), function (cell) {
        var path = code + "[" + index + "]." + cell.getAttribute("data-code");
        cell.setAttribute("data-path", path);
        var queries = cell.querySelector(".queries");
        if (queries) queries.setAttribute("data-queries-for", path);
      });
    });
    var max = Number(wrapper.querySelector(".group").getAttribute("data-max-rows")) || 50;
    var add = ownInput(wrapper, ".add-row");
    if (add && config.can_edit) add.disabled = rows.length >= max;
    var none = ownInput(wrapper, ".no-rows");
    if (none) none.hidden = rows.length > 0;
  }

  function addRow(wrapper) {
    var template = ownInput(wrapper, "template.row-template");
    var body = ownInput(wrapper, "tbody");
    if (!template || !body) return null;
    rowCounter += 1;
    var marker = "n" + rowCounter;
    var html = template.innerHTML.replace(/__row__/g, marker);
    var holder = document.createElement("tbody");
    holder.innerHTML = html.trim();
    var row = holder.firstElementChild;
    body.appendChild(row);
    enableInputs(row);
    renumber(wrapper);
    return row;
  }

  // --- evaluation (the server's order: ecrf/validation.py entry_evaluate) ----------------------

  function visibleBy(item, data) {
    if (item.show_if === undefined || item.show_if === null) return true;
    try {
      return Logic.truthy(Logic.evaluate(item.show_if, data));
    } catch (e) {
      return true;  // as the server: a runtime failure shows the item
    }
  }

  function calculate(item, data) {
    try {
      var result = Logic.evaluate(item.calc, data);
      return result === undefined ? null : result;
    } catch (e) {
      return null;
    }
  }

  function missingCode(wrapper) {
    var select = missingSelect(wrapper);
    return select && select.value ? select.value : "";
  }

  function parsedRows(item, wrapper) {
    var children = (item.items || []).filter(function (c) { return !VALUELESS[c.type]; });
    return groupRows(wrapper).map(function (row) {
      var clean = {};
      children.forEach(function (child) {
        if (child.type === "calculated") return;
        var cell = cellOf(row, child.code);
        if (!cell) return;
        clean[child.code] = missingCode(cell) ? null : forLogic(child, readRaw(cell));
      });
      return clean;
    });
  }

  function evaluateForm() {
    var parsed = {};
    items.forEach(function (item) {
      var wrapper = wrapperOf(item.code);
      if (!wrapper) return;
      if (item.type === "group") parsed[item.code] = parsedRows(item, wrapper);
      else if (!VALUELESS[item.type] && item.type !== "calculated") {
        parsed[item.code] = missingCode(wrapper) ? null : forLogic(item, readRaw(wrapper));
      }
    });
    var data = Object.assign({}, config.context || {}, parsed);
    for (var pass = 0; pass < MAX_PASSES; pass += 1) {
      var before = JSON.stringify(data);
      items.forEach(function (item) {
        var shown = visibleBy(item, data);
        if (item.type === "calculated") data[item.code] = shown ? calculate(item, data) : null;
        else if (!shown) data[item.code] = null;
      });
      if (JSON.stringify(data) === before) break;
    }
    var visible = {};
    var rows = {};
    items.forEach(function (item) {
      visible[item.code] = visibleBy(item, data);
      if (item.type === "group" && visible[item.code]) {
        rows[item.code] = (parsed[item.code] || []).map(function (row) {
          var rowData = Object.assign({}, data, row);
          var shownCells = {};
          var calculated = {};
          (item.items || []).forEach(function (child) {
            shownCells[child.code] = visibleBy(child, rowData);
            if (shownCells[child.code] && child.type === "calculated") {
              rowData[child.code] = calculate(child, rowData);
              calculated[child.code] = rowData[child.code];
            }
          });
          return {shown: shownCells, calculated: calculated};
        });
      }
    });
    return {data: data, visible: visible, rows: rows};
  }

  function showCalculated(wrapper, value) {
    var out = ownInput(wrapper, "output.calc");
    if (out) out.textContent = value === null || value === undefined ? "—" : String(value);
  }

  function apply(state) {
    items.forEach(function (item) {
      var wrapper = wrapperOf(item.code);
      if (!wrapper) return;
      wrapper.hidden = !state.visible[item.code];
      if (item.type === "calculated") showCalculated(wrapper, state.data[item.code]);
      if (item.type === "group" && state.rows[item.code]) {
        groupRows(wrapper).forEach(function (row, index) {
          var info = state.rows[item.code][index];
          if (!info) return;
          (item.items || []).forEach(function (child) {
            var cell = cellOf(row, child.code);
            if (!cell) return;
            cell.hidden = !info.shown[child.code];
            if (child.type === "calculated") showCalculated(cell, info.calculated[child.code]);
          });
        });
      }
    });
  }

  // --- what is saved -----------------------------------------------------------------------------

  function clearItem(wrapper) {
    writeRaw(wrapper, null);
    var select = missingSelect(wrapper);
    if (select) select.value = "";
  }

  // Values and missing-data codes of the visible items (hidden ones are cleared first).
  function payload(state, clearHidden) {
    var values = {};
    var missing = {};
    items.forEach(function (item) {
      var wrapper = wrapperOf(item.code);
      if (!wrapper || item.type === "section" || item.type === "calculated") return;
      if (!state.visible[item.code]) {
        if (clearHidden) {
          if (item.type === "group") groupRows(wrapper).forEach(function (row) { row.remove(); });
          else clearItem(wrapper);
          if (item.type === "group") renumber(wrapper);
        }
        return;
      }
      if (item.type === "group") {
        var rows = [];
        groupRows(wrapper).forEach(function (row, index) {
          var info = (state.rows[item.code] || [])[index] || {shown: {}};
          var out = {};
          (item.items || []).forEach(function (child) {
            if (VALUELESS[child.type] || child.type === "calculated") return;
            var cell = cellOf(row, child.code);
            if (!cell) return;
            if (info.shown[child.code] === false) {
              if (clearHidden) clearItem(cell);
              return;
            }
            var code = missingCode(cell);
            if (code) { missing[cell.getAttribute("data-path")] = code; return; }
            var raw = readRaw(cell);
            if (!isEmpty(raw)) out[child.code] = raw;
          });
          rows.push(out);
        });
        if (rows.length) values[item.code] = rows;
        return;
      }
      var code = missingCode(wrapper);
      if (code) { missing[item.code] = code; return; }
      var raw = readRaw(wrapper);
      if (!isEmpty(raw)) values[item.code] = raw;
    });
    return {values: values, missing: missing};
  }

  // Everything typed, hidden items included (a draft restores exactly what was on screen).
  function snapshot() {
    var values = {};
    var missing = {};
    items.forEach(function (item) {
      var wrapper = wrapperOf(item.code);
      if (!wrapper || VALUELESS[item.type] && item.type !== "group" || item.type === "calculated") return;
      if (item.type === "group") {
        values[item.code] = groupRows(wrapper).map(function (row) {
          var out = {};
          (item.items || []).forEach(function (child) {
            var cell = cellOf(row, child.code);
            if (!cell || child.type === "calculated" || VALUELESS[child.type]) return;
            var code = missingCode(cell);
            if (code) out["__missing__" + child.code] = code;
            out[child.code] = readRaw(cell);
          });
          return out;
        });
        return;
      }
      values[item.code] = readRaw(wrapper);
      if (missingCode(wrapper)) missing[item.code] = missingCode(wrapper);
    });
    var reason = document.getElementById("change-reason");
    return {values: values, missing: missing, reason: reason ? reason.value : ""};
  }

  function restore(saved) {
    items.forEach(function (item) {
      var wrapper = wrapperOf(item.code);
      if (!wrapper || !(item.code in saved.values)) return;
      if (item.type === "group") {
        groupRows(wrapper).forEach(function (row) { row.remove(); });
        (saved.values[item.code] || []).forEach(function (rowValues) {
          var row = addRow(wrapper);
          if (!row) return;
          (item.items || []).forEach(function (child) {
            var cell = cellOf(row, child.code);
            if (!cell) return;
            writeRaw(cell, rowValues[child.code]);
            var select = missingSelect(cell);
            if (select) select.value = rowValues["__missing__" + child.code] || "";
            syncMissing(cell);
          });
        });
        renumber(wrapper);
        return;
      }
      writeRaw(wrapper, saved.values[item.code]);
      var select = missingSelect(wrapper);
      if (select) select.value = (saved.missing || {})[item.code] || "";
      syncMissing(wrapper);
    });
    var reason = document.getElementById("change-reason");
    if (reason && saved.reason) reason.value = saved.reason;
  }

  // --- local drafts ------------------------------------------------------------------------------

  var draftPrefix = ["suifang.draft", location.host, config.mode, config.task, config.form, ""].join("|");

  function storage() {
    try { return window.localStorage; } catch (e) { return null; }
  }

  function draftKeys() {
    var store = storage();
    var keys = [];
    if (!store) return keys;
    for (var i = 0; i < store.length; i += 1) {
      var key = store.key(i);
      if (key && key.indexOf(draftPrefix) === 0) keys.push(key);
    }
    return keys;
  }

  function saveDraft(extra) {
    var store = storage();
    if (!store || !config.can_edit) return;
    var draft = Object.assign(snapshot(), {savedAt: new Date().toISOString(), version: config.version}, extra || {});
    var previous = readDraft(draftPrefix + config.version);
    if (previous && previous.conflicts && !draft.conflicts) draft.conflicts = previous.conflicts;
    try {
      store.setItem(draftPrefix + config.version, JSON.stringify(draft));
    } catch (e) { /* storage full or disabled: the page still holds the data */ }
  }

  function readDraft(key) {
    var store = storage();
    try { return store ? JSON.parse(store.getItem(key) || "null") : null; } catch (e) { return null; }
  }

  function clearDrafts() {
    var store = storage();
    if (!store) return;
    draftKeys().forEach(function (key) { store.removeItem(key); });
  }

  // A draft of this version, else one typed on an older version (after a 412 and a reload).
  function restoreDraft() {
    var best = null;
    draftKeys().forEach(function (key) {
      var draft = readDraft(key);
      var version = Number(key.slice(draftPrefix.length));
      if (!draft || !(version <= config.version)) return;
      if (!best || version > best.version) best = {version: version, draft: draft, key: key};
    });
    if (!best) return;
    restore(best.draft);
    var older = best.version < config.version;
    var box = notice(M.restored + (older ? " " + M.restored_older : ""), "info", "draft-notice");
    if (older) {
      var store = storage();
      if (store) store.removeItem(best.key);
      saveDraft({conflicts: best.draft.conflicts || []});
      (best.draft.conflicts || []).forEach(function (path) { markConflict(path); });
      if (best.draft.conflicts && best.draft.conflicts.length) listItems(box, M.conflict_items, best.draft.conflicts);
    }
    var discard = document.createElement("button");
    discard.type = "button";
    discard.className = "discard-draft";
    discard.textContent = M.discard;
    discard.addEventListener("click", function () {
      clearDrafts();
      location.reload();
    });
    box.appendChild(discard);
  }

  // --- messages and errors ---------------------------------------------------------------------

  function notice(text, kind, id) {
    if (!notices) return document.createElement("div");
    if (id) {
      var old = document.getElementById(id);
      if (old) old.remove();
    }
    var box = document.createElement("div");
    box.className = "notice notice-" + (kind || "info");
    if (id) box.id = id;
    box.setAttribute("role", kind === "error" ? "alert" : "status");
    var p = document.createElement("p");
    p.textContent = text;
    box.appendChild(p);
    notices.appendChild(box);
    return box;
  }

  function clearNotices(keepDraft) {
    if (!notices) return;
    Array.prototype.slice.call(notices.children).forEach(function (child) {
      if (!(keepDraft && child.id === "draft-notice")) child.remove();
    });
  }

  function labelOf(path) {
    var match = /^([a-z][a-z0-9_]*)\[(\d+)\]\.([a-z][a-z0-9_]*)$/.exec(path);
    if (match) {
      return (config.labels[match[3]] || match[3]) + " (" + (config.labels[match[1]] || match[1]) + ", " +
        (M.row || "#") + " " + (Number(match[2]) + 1) + ")";
    }
    return (config.labels || {})[path] || path;
  }

  function listItems(box, title, paths) {
    var p = document.createElement("p");
    p.textContent = title;
    var ul = document.createElement("ul");
    ul.className = "conflicts";
    paths.forEach(function (path) {
      var li = document.createElement("li");
      var wrapper = wrapperOf(path);
      if (wrapper) {
        var a = document.createElement("a");
        a.href = "#" + wrapper.id;
        a.textContent = labelOf(path);
        li.appendChild(a);
      } else {
        li.textContent = labelOf(path);
      }
      ul.appendChild(li);
    });
    box.appendChild(p);
    box.appendChild(ul);
  }

  function markConflict(path) {
    var wrapper = wrapperOf(path);
    if (wrapper) wrapper.classList.add("conflict");
  }

  function clearErrors() {
    Array.prototype.forEach.call(root.querySelectorAll(".errors"), function (ul) { ul.innerHTML = ""; });
    Array.prototype.forEach.call(root.querySelectorAll(".has-error, .conflict"), function (node) {
      node.classList.remove("has-error");
      node.classList.remove("conflict");
    });
    var reasonErrors = document.getElementById("change-reason-errors");
    if (reasonErrors) reasonErrors.innerHTML = "";
  }

  function errorList(wrapper) {
    var own = ownInputs(wrapper, "ul.errors");
    return own.length ? own[own.length - 1] : null;
  }

  function addErrors(ul, messages, kind) {
    (messages || []).forEach(function (message) {
      var li = document.createElement("li");
      li.className = "error" + (kind ? " " + kind : "");
      li.textContent = message;
      ul.appendChild(li);
    });
  }

  // Messages by item path next to their items; the rest (version, reason, ...) returned.
  function showFieldErrors(fields, kind) {
    var rest = {};
    var first = null;
    Object.keys(fields || {}).forEach(function (path) {
      var wrapper = wrapperOf(path);
      if (path === "reason" || path === "reasons") {
        var reasonErrors = document.getElementById("change-reason-errors");
        if (reasonErrors) { addErrors(reasonErrors, fields[path]); first = first || document.getElementById("change-reason"); return; }
      }
      if (!wrapper) { rest[path] = fields[path]; return; }
      if (wrapper.hidden) wrapper.hidden = false;
      wrapper.classList.add("has-error");
      var ul = errorList(wrapper);
      if (ul) addErrors(ul, fields[path], kind);
      first = first || wrapper;
    });
    return {rest: rest, first: first};
  }

  function focusWrapper(wrapper) {
    if (!wrapper) return;
    var input = wrapper.querySelector("input:not([disabled]), select:not([disabled]), textarea:not([disabled])");
    if (input) input.focus({preventScroll: true});
    wrapper.scrollIntoView({block: "center"});
  }

  function showRest(box, rest) {
    var paths = Object.keys(rest);
    if (!paths.length) return;
    var ul = document.createElement("ul");
    paths.forEach(function (path) {
      rest[path].forEach(function (message) {
        var li = document.createElement("li");
        li.textContent = (path === "values" || path === "version" ? "" : labelOf(path) + ": ") + message;
        ul.appendChild(li);
      });
    });
    box.appendChild(ul);
  }

  // --- saving ------------------------------------------------------------------------------------

  function setBusy(state) {
    busy = state;
    ["save-button", "complete-button"].forEach(function (id) {
      var button = document.getElementById(id);
      if (button) button.disabled = state || !config.can_edit;
    });
  }

  function request(url, method, body, headers) {
    return fetch(url, {
      method: method, credentials: "same-origin",
      headers: Object.assign({"Content-Type": "application/json", "Accept": "application/json",
        "X-CSRFToken": csrfToken, "X-Requested-With": "fetch"}, headers || {}),
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.text().then(function (text) {
        var parsed = null;
        try { parsed = text ? JSON.parse(text) : null; } catch (e) { parsed = null; }
        return {status: response.status, body: parsed || {}};
      });
    });
  }

  function updateHeader(body) {
    var version = document.getElementById("entry-version");
    if (version) version.textContent = String(body.version);
    var status = document.getElementById("entry-status");
    var labels = config.status_labels || {};
    if (status && labels[body.status]) status.textContent = labels[body.status];
    var saved = document.getElementById("entry-saved");
    if (saved) saved.hidden = true;
    var count = document.querySelector(".hard-count");
    if (count) count.hidden = true;
  }

  function refreshQueries() {
    if (!config.queries_url) return Promise.resolve();
    return fetch(config.queries_url, {credentials: "same-origin", headers: {"X-Requested-With": "fetch"}})
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var doc = new DOMParser().parseFromString("<div>" + html + "</div>", "text/html");
        var fresh = {};
        Array.prototype.forEach.call(doc.querySelectorAll("[data-queries-for]"), function (node) {
          fresh[node.getAttribute("data-queries-for")] = node.innerHTML;
        });
        Array.prototype.forEach.call(root.querySelectorAll(".queries[data-queries-for]"), function (node) {
          var html = fresh[node.getAttribute("data-queries-for")];
          node.innerHTML = html || "";
        });
      })
      .catch(function () { /* the queries show after the next reload */ });
  }

  function save(complete) {
    if (busy || !config.can_edit) return;
    if (uploading.length) { waitForUploads(complete); return; }
    clearErrors();
    clearNotices(true);
    var state = evaluateForm();
    var data = payload(state, true);
    apply(evaluateForm());
    saveDraft();
    if (config.mode === "epro") return saveEpro(data, complete);
    var body = {values: data.values, missing: data.missing, complete: complete, version: config.version};
    if (config.reason_required) {
      var reason = document.getElementById("change-reason");
      var text = reason ? reason.value.trim() : "";
      if (!text) {
        addErrors(document.getElementById("change-reason-errors"), [M.reason_needed]);
        notice(M.reason_needed, "error", "save-notice");
        if (reason) { reason.focus(); reason.scrollIntoView({block: "center"}); }
        return;
      }
      body.reason = text;
    }
    setBusy(true);
    var progress = notice(M.saving, "info", "save-notice");
    request(config.save_url, "PUT", body, {"If-Match": '"' + config.version + '"'}).then(function (result) {
      progress.remove();
      handleSaved(result, complete);
    }).catch(function () {
      progress.remove();
      notice(M.network, "error", "save-notice");
    }).then(function () { setBusy(false); });
  }

  function handleSaved(result, complete) {
    var body = result.body;
    var error = body.error || {};
    if (result.status === 200) {
      clearDrafts();
      clearNotices(false);
      config.version = body.version;
      config.status = body.status;
      config.entry = body.entry;
      updateHeader(body);
      if (body.status === "complete" && !config.reason_required) {
        config.reason_required = true;
        var box = document.getElementById("reason-box");
        if (box) box.hidden = false;
      }
      var reason = document.getElementById("change-reason");
      if (reason) reason.value = "";
      Array.prototype.forEach.call(root.querySelectorAll(".file-status"), function (node) { node.textContent = ""; });
      var hard = body.hard_errors || {};
      var text = body.status === "complete" && complete ? M.completed
        : (Object.keys(hard).length ? M.hard_left : M.saved);
      var shown = showFieldErrors(hard, "hard");
      var box2 = notice(text, Object.keys(hard).length ? "warning" : "success", "save-notice");
      if (body.queries_raised) box2.appendChild(paragraph(fmt(M.queries_raised, {n: body.queries_raised})));
      if (body.queries_closed) box2.appendChild(paragraph(fmt(M.queries_closed, {n: body.queries_closed})));
      showRest(box2, shown.rest);
      refreshQueries();
      return;
    }
    if (result.status === 412) {
      var conflicts = Object.keys(error.fields || {}).filter(function (p) { return p !== "version"; });
      saveDraft({conflicts: conflicts});
      conflicts.forEach(markConflict);
      var box3 = notice(M.conflict, "error", "save-notice");
      if (conflicts.length) listItems(box3, M.conflict_items, conflicts);
      else if (error.message) box3.appendChild(paragraph(error.message));
      var reload = document.createElement("button");
      reload.type = "button";
      reload.className = "primary reload";
      reload.textContent = M.reload;
      reload.addEventListener("click", function () { location.reload(); });
      box3.appendChild(reload);
      box3.scrollIntoView({block: "center"});
      return;
    }
    if (result.status === 400) {
      var shown2 = showFieldErrors(error.fields || {});
      var box4 = notice(error.message || M.invalid, "error", "save-notice");
      box4.appendChild(paragraph(M.invalid));
      showRest(box4, shown2.rest);
      focusWrapper(shown2.first);
      return;
    }
    notice(error.message || fmt(M.error, {status: result.status}), "error", "save-notice");
  }

  function paragraph(text) {
    var p = document.createElement("p");
    p.textContent = text;
    return p;
  }

  function saveEpro(data, complete) {
    setBusy(true);
    var progress = notice(M.saving, "info", "save-notice");
    request(config.save_url, "POST", {values: data.values, missing: data.missing, draft: !complete})
      .then(function (result) {
        progress.remove();
        var body = result.body;
        var error = body.error || {};
        if (result.status === 200) {
          clearDrafts();
          clearNotices(false);
          if (body.version) config.version = body.version;
          if (body.status === "submitted") {
            notice(M.submitted, "success", "save-notice");
            if (body.redirect) location.assign(body.redirect);
            return;
          }
          notice(M.draft_saved, "success", "save-notice");
          return;
        }
        if (result.status === 400) {
          var shown = showFieldErrors(error.fields || {});
          var box = notice(error.message || M.invalid, "error", "save-notice");
          showRest(box, shown.rest);
          focusWrapper(shown.first);
          return;
        }
        notice(error.message || fmt(M.error, {status: result.status}), "error", "save-notice");
      })
      .catch(function () {
        progress.remove();
        notice(M.network, "error", "save-notice");
      })
      .then(function () { setBusy(false); });
  }

  // --- ePRO link (staff page) ------------------------------------------------------------------

  function issueLink() {
    var channel = document.getElementById("epro-channel");
    var ttl = document.getElementById("epro-ttl");
    var result = document.getElementById("epro-result");
    ["epro-channel-errors", "epro-ttl-errors", "epro-errors"].forEach(function (id) {
      var node = document.getElementById(id);
      if (node) node.innerHTML = "";
    });
    var button = document.getElementById("epro-send");
    if (button && button.disabled) return;  // one link per click: a double click must not send two
    if (button) button.disabled = true;
    request(config.epro_url, "POST", {channel: channel.value, ttl_hours: Number(ttl.value)}).then(function (response) {
      var body = response.body;
      if (response.status === 201) {
        result.hidden = false;
        result.querySelector(".epro-until").textContent = fmt(M.epro_created, {until: body.expires_display || body.expires_at});
        result.querySelector(".epro-url").value = body.url;
        return;
      }
      var error = body.error || {};
      var fields = error.fields || {};
      Object.keys(fields).forEach(function (name) {
        var target = document.getElementById(name === "channel" ? "epro-channel-errors"
          : (name === "ttl" || name === "ttl_hours") ? "epro-ttl-errors" : "epro-errors");
        addErrors(target, fields[name]);
      });
      if (!Object.keys(fields).length) addErrors(document.getElementById("epro-errors"), [error.message || fmt(M.error, {status: response.status})]);
    }).catch(function () {
      addErrors(document.getElementById("epro-errors"), [M.network]);
    }).then(function () { if (button) button.disabled = false; });
  }

  // --- queries (answer / close / re-open without leaving the page) -----------------------------

  root.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.classList || !form.classList.contains("query-form")) return;
    event.preventDefault();
    var error = form.querySelector(".error");
    var text = form.querySelector("textarea");
    if (!text.value.trim()) {
      error.hidden = false;
      error.textContent = text.validationMessage || "";
      text.focus();
      return;
    }
    var submit = form.querySelector("button[type=submit]");
    if (submit && submit.disabled) return;  // already on its way
    if (submit) submit.disabled = true;
    var done = {answer: M.answer_sent, close: M.query_closed, reopen: M.query_reopened}[form.dataset.action];
    fetch(form.action, {method: "POST", credentials: "same-origin", body: new FormData(form),
      headers: {"X-Requested-With": "fetch", "X-CSRFToken": csrfToken, "Accept": "application/json"}})
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (submit) submit.disabled = false;
          if (response.ok) {
            notice(done || M.answer_sent, "success", "query-notice");
            return refreshQueries();
          }
          var problem = body.error || {};
          var messages = [problem.message].concat.apply([], Object.keys(problem.fields || {}).map(function (k) {
            return problem.fields[k];
          })).filter(Boolean);
          error.hidden = false;
          error.textContent = messages.join(" ");
        });
      })
      .catch(function () {
        if (submit) submit.disabled = false;
        error.hidden = false;
        error.textContent = M.network;
      });
  });

  // --- wiring ------------------------------------------------------------------------------------

  function enableInputs(scope) {
    if (!config.can_edit) return;
    Array.prototype.forEach.call(scope.querySelectorAll("[data-input]"), function (node) {
      if (!node.hasAttribute("data-readonly")) node.disabled = false;
    });
    Array.prototype.forEach.call(scope.querySelectorAll(".item"), syncMissing);
  }

  // A missing-data code replaces the value: the value's inputs are cleared and disabled.
  function syncMissing(wrapper) {
    var select = missingSelect(wrapper);
    if (!select || !config.can_edit) return;
    var coded = !!select.value;
    ownInputs(wrapper, "[data-input]").forEach(function (node) {
      if (node === select || node.hasAttribute("data-readonly")) return;
      node.disabled = coded;
    });
  }

  function onChange(event) {
    var target = event.target;
    if (!target || target.closest(".query-form")) return;
    var wrapper = target.closest(".item");
    if (target.type === "file") {
      if (event.type === "change" && wrapper) uploadFile(wrapper, target);
      return;
    }
    if (wrapper) {
      if (target.type === "range") {
        target.removeAttribute("data-empty");
        showScale(wrapper);
      }
      if (target.classList.contains("missing")) {
        if (target.value) writeRaw(wrapper, null);
        syncMissing(wrapper);
      }
    }
    apply(evaluateForm());
    saveDraft();
  }

  root.addEventListener("input", onChange);
  root.addEventListener("change", onChange);
  root.addEventListener("keydown", function (event) {
    // Enter never saves by accident (inputs of a text area keep their new lines).
    var target = event.target;
    if (event.key === "Enter" && target && target.tagName === "INPUT" && target.type !== "button" &&
        target.type !== "submit" && target.type !== "file") {
      event.preventDefault();
    }
  });
  root.addEventListener("click", function (event) {
    var target = event.target;
    if (!target || target.tagName !== "BUTTON") return;
    var wrapper = target.closest(".item");
    if (target.classList.contains("add-row") && wrapper) {
      var max = Number(wrapper.querySelector(".group").getAttribute("data-max-rows")) || 50;
      if (groupRows(wrapper).length >= max) { notice(fmt(M.max_rows, {n: max}), "error", "save-notice"); return; }
      var row = addRow(wrapper);
      var first = row && row.querySelector("input:not([disabled]), select:not([disabled]), textarea:not([disabled])");
      if (first) first.focus();
    } else if (target.classList.contains("remove-row")) {
      var group = target.closest(".item-group");
      var removed = target.closest("tr");
      Array.prototype.forEach.call(removed.querySelectorAll(".item-file"), cancelUpload);
      removed.remove();
      if (group) {
        renumber(group);
        var add = ownInput(group, ".add-row");
        if (add) add.focus();
      }
    } else if (target.classList.contains("clear-choice") && wrapper) {
      writeRaw(wrapper, null);
    } else if (target.classList.contains("file-cancel") && wrapper) {
      cancelUpload(wrapper);
      var picker = ownInput(wrapper, ".file-input");
      if (picker) picker.focus();
      return;
    } else if (target.classList.contains("file-remove") && wrapper) {
      clearFileErrors(wrapper);
      writeRaw(wrapper, null);
      fileStatus(wrapper, M.file_removed);
      var input = ownInput(wrapper, ".file-input");
      if (input) input.focus();
    } else {
      return;
    }
    apply(evaluateForm());
    saveDraft();
  });

  var saveButton = document.getElementById("save-button");
  var completeButton = document.getElementById("complete-button");
  if (saveButton) saveButton.addEventListener("click", function () { save(false); });
  if (completeButton) completeButton.addEventListener("click", function () { save(true); });
  var eproButton = document.getElementById("epro-send");
  if (eproButton) eproButton.addEventListener("click", issueLink);

  Array.prototype.forEach.call(root.querySelectorAll(".item-group"), function (wrapper) {
    rowCounter += groupRows(wrapper).length;
  });
  if (!Logic) {
    notice(fmt(M.error, {status: "SuifangLogic"}), "error");
    return;
  }
  enableInputs(document);
  Array.prototype.forEach.call(root.querySelectorAll(".item-group"), renumber);
  if (config.can_edit) restoreDraft();
  apply(evaluateForm());
  root.setAttribute("data-ready", "true");
}());
