/* usertasks: live updates of the status page and the dashboard.
 * Status page: server-sent events (EventSource), falling back to polling the JSON API.
 * Dashboard: polls the JSON list for the active rows shown.
 * Every text goes through textContent: nothing from the server is parsed as HTML. */
(function () {
  "use strict";

  function strings() {
    var el = document.getElementById("ut-strings");
    try { return el ? JSON.parse(el.textContent) || {} : {}; } catch (e) { return {}; }
  }
  var S = strings();

  function fmt(template, values) {
    return String(template || "").replace(/%\((\w+)\)[sd]/g, function (_, k) { return values[k]; });
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) { return "–"; }
    var t = Math.max(0, Math.round(seconds));
    var h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60), s = t % 60;
    if (h) { return fmt(S.hm || "%(h)d h %(m)d min", {h: h, m: m}); }
    if (m) { return fmt(S.ms || "%(m)d min %(s)d s", {m: m, s: s}); }
    return fmt(S.s || "%(s)d s", {s: s});
  }

  /* One time format for the page: Intl.DateTimeFormat in the page's language and the server's
   * current time zone (the server renders the same elements with Django's locale formats when
   * there is no script). */
  var timeFormat = (function () {
    var lang = S.language || document.documentElement.lang || undefined;
    var options = {dateStyle: "medium", timeStyle: "medium"};
    try { return new Intl.DateTimeFormat(lang, Object.assign({timeZone: S.time_zone || undefined}, options)); }
    catch (e) {
      try { return new Intl.DateTimeFormat(lang, options); } catch (e2) { return null; }
    }
  })();

  function formatTime(iso) {
    var d = new Date(iso);
    if (isNaN(d.getTime())) { return iso; }
    return timeFormat ? timeFormat.format(d) : d.toLocaleString();
  }

  function machineTime(iso) {
    var d = new Date(iso);
    return isNaN(d.getTime()) ? iso : d.toISOString();
  }

  function timeElement(iso) {
    var t = document.createElement("time");
    t.setAttribute("datetime", machineTime(iso));
    t.textContent = formatTime(iso);
    return t;
  }

  function formatTimes(root) {
    Array.prototype.forEach.call(root.querySelectorAll("time[datetime]"), function (t) {
      var text = formatTime(t.getAttribute("datetime"));
      if (t.textContent !== text) { t.textContent = text; }
    });
  }

  /* User text goes into elements that isolate its direction (<bdi>, dir="auto"). */
  function userText(tag, className, text) {
    var el = document.createElement(tag);
    if (className) { el.className = className; }
    if (tag !== "bdi") { el.setAttribute("dir", "auto"); }
    el.textContent = text;
    return el;
  }

  function outcome(d) {
    if (d.state === "Succeeded" && d.elapsed_seconds !== null && d.elapsed_seconds !== undefined) {
      return fmt(S.succeeded_in, {duration: duration(d.elapsed_seconds)});
    }
    if (d.state === "Failed" && d.error) {
      var line = String(d.error).split(/\r?\n/).filter(function (l) { return l.trim(); })[0] || "";
      line = line.trim();
      if (line.length > 200) { line = line.slice(0, 199) + "\u2026"; }
      return fmt(S.failed_with, {error: line});
    }
    return d.state_text;
  }

  function field(root, name) { return root.querySelector('[data-field="' + name + '"]'); }

  function setText(root, name, value) {
    var el = field(root, name);
    if (el && el.textContent !== value) { el.textContent = value; }
  }

  function setTime(root, name, iso) {
    var el = field(root, name);
    if (!el) { return; }
    if (!iso) { el.textContent = "–"; return; }
    var t = el.querySelector("time");
    if (t && t.getAttribute("datetime") === machineTime(iso)) { return; }
    el.textContent = "";
    el.appendChild(timeElement(iso));
  }

  function updateBar(bar, data) {
    if (!bar) { return; }
    var inner = bar.querySelector(".ut-bar");
    bar.setAttribute("data-state", data.state);
    if (data.percent === null || data.percent === undefined) {
      bar.classList.add("ut-indeterminate");
      bar.removeAttribute("aria-valuenow");
      bar.removeAttribute("aria-valuetext");
      if (inner) { inner.style.width = "100%"; }
    } else {
      bar.classList.remove("ut-indeterminate");
      bar.setAttribute("aria-valuenow", String(Math.round(data.percent)));
      bar.setAttribute("aria-valuetext", Math.round(data.percent) + "%");
      if (inner) { inner.style.width = data.percent + "%"; }
    }
    if (!data.is_active) { bar.classList.remove("ut-indeterminate"); }
  }

  function setState(root, el, data) {
    if (!el) { return; }
    el.textContent = data.state_text;
    el.className = "ut-state ut-state-" + data.state.toLowerCase().replace(/\s+/g, "-");
  }

  function renderArtifacts(list, items) {
    if (!list) { return; }
    var key = JSON.stringify(items.map(function (a) { return [a.uuid, a.url]; }));
    if (list.getAttribute("data-key") === key) { return; }
    list.setAttribute("data-key", key);
    list.textContent = "";
    if (!items.length) {
      var none = document.createElement("li");
      none.className = "ut-none";
      none.textContent = S.none || "";
      list.appendChild(none);
      return;
    }
    items.forEach(function (a) {
      var li = document.createElement("li");
      li.className = "ut-artifact ut-artifact-" + a.kind;
      if (a.kind === "text") {
        li.appendChild(userText("bdi", "ut-artifact-name", a.name));
        li.appendChild(userText("pre", "ut-text", a.text));
      } else if (a.url) {
        var link = document.createElement("a");
        link.href = a.url;  /* always our own artifact URL */
        link.appendChild(userText("bdi", "", a.name || a.target || S.download || ""));
        if (a.kind === "file") { link.setAttribute("download", ""); }
        else { link.rel = "noopener noreferrer"; }
        li.appendChild(link);
      } else {
        li.appendChild(userText("bdi", "", a.name));
      }
      list.appendChild(li);
    });
  }

  function renderEvents(list, events) {
    if (!list || !events) { return; }
    var key = events.length ? events[events.length - 1].time + events.length : "0";
    if (list.getAttribute("data-key") === key) { return; }
    list.setAttribute("data-key", key);
    list.textContent = "";
    events.forEach(function (e) {
      var li = document.createElement("li");
      var t = timeElement(e.time);
      var kind = document.createElement("span");
      kind.className = "ut-event-kind";
      kind.textContent = e.text;
      li.appendChild(t);
      li.appendChild(document.createTextNode(" "));
      li.appendChild(kind);
      if (e.actor) {
        var by = document.createElement("span");
        by.className = "ut-event-actor";
        by.textContent = fmt(S.by, {name: e.actor});
        li.appendChild(document.createTextNode(" "));
        li.appendChild(by);
      }
      if (e.detail) {
        li.appendChild(document.createTextNode(" — "));
        li.appendChild(userText("bdi", "ut-event-detail", e.detail));
      }
      list.appendChild(li);
    });
  }

  // Outcome counters, failed subtasks and stages (includes/outcome.html), rebuilt when they change.
  function renderChild(li, c) {
    var name = document.createElement(c.url ? "a" : "span");
    if (c.url) { name.href = c.url; }
    name.textContent = c.name;
    li.appendChild(name);
    if (c.state_text) {
      var st = document.createElement("span");
      st.className = "ut-state ut-state-" + c.state.toLowerCase().replace(/\s+/g, "-");
      st.textContent = c.state_text;
      li.appendChild(document.createTextNode(" "));
      li.appendChild(st);
    }
    if (c.error) {
      var err = document.createElement("span");
      err.className = "ut-child-error";
      err.textContent = c.error;
      li.appendChild(document.createTextNode(" — "));
      li.appendChild(err);
    }
  }

  function rebuild(list, key, items, fill) {
    if (!list || list.getAttribute("data-key") === key) { return; }
    list.setAttribute("data-key", key);
    list.textContent = "";
    items.forEach(function (item) { fill(list, item); });
  }

  function renderOutcome(root, data) {
    var counts = data.counts || {};
    var names = Object.keys(counts);
    var box = field(root, "counts_box");
    if (box) { box.hidden = !names.length; }
    rebuild(field(root, "counts"), JSON.stringify(counts), names, function (dl, name) {
      var dt = document.createElement("dt");
      var label = (S.counters || {})[name] || name.replace(/_/g, " ");
      dt.textContent = label.charAt(0).toUpperCase() + label.slice(1);
      var dd = document.createElement("dd");
      dd.textContent = String(counts[name]);
      dl.appendChild(dt);
      dl.appendChild(dd);
    });
    var failed = data.failed_children;
    var fbox = field(root, "failed_box");
    if (failed && fbox) {
      fbox.hidden = !failed.count;
      setText(root, "failed_count", fmt(failed.count > failed.shown.length ? S.failed_some : S.failed_all,
        {count: failed.count, shown: failed.shown.length}));
      rebuild(field(root, "failed_children"), JSON.stringify(failed.shown), failed.shown, function (ul, c) {
        var li = document.createElement("li");
        renderChild(li, {name: c.name, url: c.url, error: c.error});
        ul.appendChild(li);
      });
    }
    if (data.stages) {
      rebuild(field(root, "stages"), JSON.stringify(data.stages), data.stages, function (ol, c) {
        var li = document.createElement("li");
        renderChild(li, {name: c.name, url: c.url, error: c.error, state: c.state, state_text: c.state_text});
        ol.appendChild(li);
      });
    }
  }

  function renderStatus(root, data) {
    root.setAttribute("data-state", data.state);
    root.setAttribute("data-active", data.is_active ? "1" : "0");
    setText(root, "name", data.name);
    setState(root, field(root, "state_text"), data);
    updateBar(root.querySelector("[data-ut-progress]"), data);
    setText(root, "percent", data.percent === null ? "" : Math.round(data.percent) + "%");
    setText(root, "steps", data.total_steps ? fmt(S.steps, {done: data.completed_steps, total: data.total_steps}) : "");
    setText(root, "message", data.message);
    setText(root, "elapsed", duration(data.elapsed_seconds));
    setText(root, "remaining", duration(data.remaining_seconds));
    setText(root, "attempts", String(data.attempts));
    setTime(root, "started", data.started);
    setTime(root, "finished", data.finished);
    var note = field(root, "cancel_note");
    if (note) { note.hidden = !(data.cancel_requested && data.is_active); }
    var box = field(root, "error_box");
    if (box) { box.hidden = !data.error; setText(root, "error", data.error); }
    var cancel = field(root, "cancel_form");
    if (cancel) { cancel.hidden = !data.can_cancel; }
    var del = field(root, "delete_form");
    if (del) { del.hidden = !data.can_delete; }
    var again = field(root, "rerun_form");
    if (again) { again.hidden = !data.can_rerun; }
    renderArtifacts(field(root, "artifacts"), data.artifacts || []);
    renderEvents(field(root, "events"), data.events);
    renderOutcome(root, data);
  }

  function poll(url, interval, onData, isDone) {
    var timer = null;
    function tick() {
      fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          if (data) { onData(data); }
          if (!data || !isDone(data)) { timer = setTimeout(tick, interval); }
        })
        .catch(function () { timer = setTimeout(tick, interval * 2); });
    }
    tick();
    return function () { clearTimeout(timer); };
  }

  function liveStatus(root) {
    var streamUrl = root.getAttribute("data-stream-url");
    var pollUrl = root.getAttribute("data-poll-url");
    var done = function (d) { return !d.is_active; };
    var onData = function (d) { renderStatus(root, d); };
    if (root.getAttribute("data-active") !== "1") { return; }
    if (!streamUrl || !window.EventSource) { poll(pollUrl, 2000, onData, done); return; }
    var got = false, failures = 0;
    var source = new EventSource(streamUrl);
    source.addEventListener("status", function (ev) {
      got = true;
      failures = 0;
      var data = JSON.parse(ev.data);
      onData(data);
      if (done(data)) { source.close(); }
    });
    source.addEventListener("gone", function () { source.close(); });
    source.onerror = function () {
      failures += 1;
      /* A stream that never worked, or keeps failing: poll instead. */
      if (!got || failures > 3 || source.readyState === EventSource.CLOSED) {
        if (root.getAttribute("data-active") === "1") {
          source.close();
          poll(pollUrl, 2000, onData, done);
        }
      }
    };
  }

  function liveDashboard(table) {
    var url = table.getAttribute("data-poll-url");
    var interval = parseInt(table.getAttribute("data-interval"), 10) || 2000;
    function activeRows() {
      return Array.prototype.slice.call(table.querySelectorAll('tr[data-uuid][data-active="1"]'));
    }
    function tick() {
      var rows = activeRows();
      if (!rows.length) { return; }
      var q = rows.map(function (r) { return "uuid=" + encodeURIComponent(r.getAttribute("data-uuid")); });
      fetch(url + "?" + q.join("&") + "&page_size=100", {credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          (data ? data.results : []).forEach(function (d) {
            var row = table.querySelector('tr[data-uuid="' + d.uuid + '"]');
            if (!row) { return; }
            row.setAttribute("data-active", d.is_active ? "1" : "0");
            setState(row, field(row, "state_text"), d);
            setText(row, "message", d.is_active ? d.message : outcome(d));
            setText(row, "percent", d.percent === null ? "" : Math.round(d.percent) + "%");
            updateBar(row.querySelector("[data-ut-progress]"), d);
          });
          setTimeout(tick, interval);
        })
        .catch(function () { setTimeout(tick, interval * 2); });
    }
    setTimeout(tick, interval);
  }

  function confirmForms() {
    Array.prototype.forEach.call(document.querySelectorAll("form[data-confirm]"), function (form) {
      form.addEventListener("submit", function (ev) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { ev.preventDefault(); return; }
        var input = form.querySelector('input[name="confirm"]');
        if (input) { input.value = "yes"; }
      });
    });
  }

  function init() {
    confirmForms();
    formatTimes(document);
    var root = document.querySelector("[data-ut-status]");
    if (root) { liveStatus(root); }
    var table = document.querySelector("[data-ut-dashboard]");
    if (table) { liveDashboard(table); }
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); }
  else { init(); }
})();
