// TaskFlow's staff dashboard: reads GET /api/stats every few seconds and draws it. No framework,
// no build: plain DOM. Everything that comes from the API is set as text, never as HTML.
"use strict";

(function () {
  const root = document.getElementById("dashboard");
  const statsUrl = root.dataset.statsUrl;
  const taskUrl = root.dataset.taskUrl;
  const adminTaskUrl = root.dataset.adminTaskUrl;
  const refreshMs = Number(root.dataset.refreshSeconds || 3) * 1000;
  const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
  const STATUSES = ["postponed", "queued", "running", "retrying", "succeeded", "failed", "cancelled"];
  let searchedId = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function replace(id, ...nodes) {
    document.getElementById(id).replaceChildren(...nodes.flat());
  }

  function time(iso) {
    return iso ? new Date(iso).toLocaleTimeString() : "";
  }

  function hhmm(iso) {
    return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value < 1) return `${Math.round(value * 1000)} ms`;
    if (value < 120) return `${value.toFixed(value < 10 ? 2 : 1)} s`;
    return `${(value / 60).toFixed(1)} min`;
  }

  function table(headers, rows, emptyText) {
    if (!rows.length) return el("p", { class: "empty" }, emptyText);
    return el(
      "table",
      {},
      el("thead", {}, el("tr", {}, headers.map(([label, cls]) => el("th", { class: cls }, label)))),
      el("tbody", {}, rows),
    );
  }

  function progressBar(percent, message) {
    return el(
      "div",
      { class: "bar", title: message || "" },
      el("span", { style: `width:${Math.max(0, Math.min(100, percent))}%` }),
      el("em", {}, `${percent}%${message ? " · " + message : ""}`),
    );
  }

  function taskLink(id) {
    return el("a", { href: "#", class: "mono", onclick: (event) => { event.preventDefault(); search(id); } }, id);
  }

  async function api(url, options) {
    const response = await fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRFToken": csrfToken },
      ...options,
    });
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const message = body && body.error ? body.error.message : response.statusText;
      const error = new Error(`${response.status}: ${message}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function banner(text) {
    const node = document.getElementById("banner");
    node.textContent = text || "";
    node.classList.toggle("show", Boolean(text));
  }

  function drawCounts(stats) {
    replace(
      "status-counts",
      el("div", { class: "count total", dataset: { status: "total" } },
        el("div", { class: "n" }, stats.total), el("div", { class: "label" }, "all tasks")),
      STATUSES.map((status) =>
        el("div", { class: `count ${status}`, dataset: { status } },
          el("div", { class: "n", id: `count-${status}` }, stats.counts[status] || 0),
          el("div", { class: "label" }, status))),
    );
  }

  function drawThroughput(points) {
    const width = 720, height = 170, left = 34, bottom = 18, top = 8;
    // A round top for the scale (a multiple of 4, at least 4), so that the ticks are whole numbers.
    const peak = Math.max(0, ...points.map((p) => p.succeeded + p.failed));
    const max = Math.max(4, Math.ceil(peak / 4) * 4);
    const step = (width - left) / points.length;
    const y = (value) => top + (height - top - bottom) * (1 - value / max);
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("width", "100%");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "Tasks finished per minute over the last hour");
    const add = (tag, attrs, text) => {
      const node = document.createElementNS(ns, tag);
      for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
      if (text !== undefined) node.textContent = text;
      svg.append(node);
      return node;
    };
    for (const tick of [0, max / 4, max / 2, (3 * max) / 4, max]) {
      add("line", { x1: left, x2: width, y1: y(tick), y2: y(tick), stroke: "#e3e7eb" });
      add("text", { x: left - 4, y: y(tick) + 3, "text-anchor": "end" }, Math.round(tick));
    }
    points.forEach((point, index) => {
      const x = left + index * step + 1;
      const w = Math.max(1, step - 2);
      const ok = point.succeeded, bad = point.failed;
      const title = `${time(point.minute)}: ${ok} succeeded, ${bad} failed`;
      if (ok) add("rect", { x, width: w, y: y(ok + bad), height: y(bad) - y(ok + bad), fill: "#43a047", class: "succeeded" })
        .append(Object.assign(document.createElementNS(ns, "title"), { textContent: title }));
      if (bad) add("rect", { x, width: w, y: y(bad), height: y(0) - y(bad), fill: "#e53935", class: "failed" })
        .append(Object.assign(document.createElementNS(ns, "title"), { textContent: title }));
      if (index % 10 === 0 || index === points.length - 1) {
        add("text", { x: x + w / 2, y: height - 4, "text-anchor": "middle" }, hhmm(point.minute));
      }
    });
    const total = points.reduce((sum, p) => sum + p.succeeded + p.failed, 0);
    svg.dataset.total = String(total);
    replace("throughput-chart", svg);
  }

  function drawQueues(stats) {
    if (stats.broker_error) {
      replace("queues", el("p", { class: "error" }, `RabbitMQ: ${stats.broker_error}`));
      return;
    }
    replace("queues", table(
      [["queue"], ["messages", "num"], ["consumers", "num"]],
      (stats.queues || []).map((q) => el("tr", { dataset: { queue: q.name } },
        el("td", { class: "mono" }, q.name + (q.exists ? "" : " (missing)")),
        el("td", { class: "num" }, q.messages),
        el("td", { class: "num", style: q.consumers ? "" : "color:var(--bad)" }, q.consumers))),
      "No queues.",
    ));
  }

  function drawWorkers(stats) {
    const rows = (stats.workers || []).map((w) => el("tr", { dataset: { worker: w.hostname } },
      el("td", { class: "mono" }, w.hostname),
      el("td", {}, w.queues.join(", ")),
      el("td", { class: "num" }, w.autoscale_max ? `${w.concurrency} (max ${w.autoscale_max})` : w.concurrency),
      el("td", {}, w.pool || ""),
      el("td", { class: "num" }, w.active)));
    const note = stats.workers_error ? el("p", { class: "error" }, stats.workers_error) : null;
    replace("workers", note || "", table(
      [["worker"], ["queues"], ["concurrency", "num"], ["pool"], ["busy", "num"]], rows, "No worker answered."));
  }

  function drawRunning(stats) {
    replace("running", table(
      [["task"], ["type"], ["owner"], ["attempt", "num"], ["progress"], ["started"]],
      stats.running.map((t) => el("tr", { dataset: { taskId: t.id } },
        el("td", {}, taskLink(t.id)), el("td", {}, t.type), el("td", {}, t.owner),
        el("td", { class: "num" }, t.attempt_count), el("td", {}, progressBar(t.progress, t.progress_message)),
        el("td", {}, time(t.started_at)))),
      "Nothing is running.",
    ));
  }

  async function retry(id, button) {
    button.disabled = true;
    try {
      const task = await api(`${taskUrl}${id}/retry`, { method: "POST" });
      document.getElementById("notice").textContent = `Task ${id} retried: it is ${task.status}.`;
      await refresh();
    } catch (error) {
      document.getElementById("notice").textContent = "";
      banner(`Retry of ${id} refused: ${error.message}`);
      button.disabled = false;
    }
  }

  function drawFailures(stats) {
    replace("failures", table(
      [["task"], ["type"], ["owner"], ["attempts", "num"], ["error"], ["failed at"], ["dead letter"], [""]],
      stats.recent_failures.map((t) => el("tr", { dataset: { taskId: t.id } },
        el("td", {}, taskLink(t.id)), el("td", {}, t.type), el("td", {}, t.owner),
        el("td", { class: "num" }, t.attempt_count), el("td", { class: "error" }, t.error),
        el("td", {}, time(t.finished_at)),
        el("td", {}, t.dead_lettered_at ? `${time(t.dead_lettered_at)} · ${t.dead_letter_reason}` : "not yet"),
        el("td", {}, el("button", { type: "button", class: "retry", dataset: { taskId: t.id },
          onclick: (event) => retry(t.id, event.currentTarget) }, "Retry")))),
      "No failures.",
    ));
  }

  function drawTypes(stats) {
    replace("types", table(
      [["type"], ["now"], ["succeeded", "num"], ["failed", "num"], ["retried", "num"], ["dead-lettered", "num"],
        ["wait p50", "num"], ["wait p95", "num"], ["wait p99", "num"], ["run p50", "num"], ["run p95", "num"], ["run p99", "num"]],
      stats.types.map((t) => el("tr", { dataset: { type: t.type } },
        el("td", { class: "mono" }, t.type),
        el("td", {}, STATUSES.filter((s) => t.counts[s]).map((s) => `${s} ${t.counts[s]}`).join(", ") || "none"),
        el("td", { class: "num" }, t.last_hour.succeeded), el("td", { class: "num" }, t.last_hour.failed),
        el("td", { class: "num" }, t.last_hour.retried), el("td", { class: "num" }, t.last_hour.dead_lettered),
        ["p50", "p95", "p99"].map((p) => el("td", { class: "num" }, seconds(t.queue_wait_seconds[p]))),
        ["p50", "p95", "p99"].map((p) => el("td", { class: "num" }, seconds(t.run_seconds[p]))))),
      "No tasks yet.",
    ));
  }

  function drawTask(task) {
    const canRetry = task.status === "failed" || task.status === "cancelled";
    replace("search-result", el("div", { id: "search-task", dataset: { taskId: task.id, status: task.status } },
      el("dl", { class: "kv" },
        el("dt", {}, "id"), el("dd", { class: "mono" }, task.id),
        el("dt", {}, "status"), el("dd", {}, el("span", { class: `pill ${task.status}`, id: "search-status" }, task.status)),
        el("dt", {}, "type"), el("dd", {}, task.type),
        el("dt", {}, "owner"), el("dd", {}, task.owner),
        el("dt", {}, "progress"), el("dd", {}, progressBar(task.progress, task.progress_message)),
        el("dt", {}, "attempts"), el("dd", {}, `${task.attempt_count} (retries ${task.retries} of ${task.max_retries})`),
        el("dt", {}, "created"), el("dd", {}, time(task.created_at)),
        el("dt", {}, "finished"), el("dd", {}, time(task.finished_at) || "–"),
        task.error ? [el("dt", {}, "error"), el("dd", { class: "error" }, task.error)] : null,
        task.result !== null ? [el("dt", {}, "result"), el("dd", { class: "mono" }, JSON.stringify(task.result))] : null),
      canRetry ? el("button", { type: "button", class: "retry", dataset: { taskId: task.id },
        onclick: (event) => retry(task.id, event.currentTarget) }, "Retry") : null,
      " ",
      el("a", { href: `${adminTaskUrl}${task.id}/change/` }, "open in the admin")));
  }

  async function search(id) {
    searchedId = (id || "").trim();
    document.getElementById("search-id").value = searchedId;
    if (!searchedId) { replace("search-result"); return; }
    try {
      drawTask(await api(`${taskUrl}${encodeURIComponent(searchedId)}`));
    } catch (error) {
      replace("search-result", el("p", { class: "error", id: "search-error" },
        error.status === 404 ? "No task with this id." : error.message));
    }
  }

  async function refresh() {
    try {
      const stats = await api(statsUrl);
      banner("");
      drawCounts(stats);
      drawThroughput(stats.throughput);
      drawQueues(stats);
      drawWorkers(stats);
      drawRunning(stats);
      drawFailures(stats);
      drawTypes(stats);
      if (searchedId) await search(searchedId);
      document.getElementById("updated-at").textContent = new Date().toLocaleTimeString();
    } catch (error) {
      banner(error.status === 401 || error.status === 403
        ? "Your session has ended: log in again in the admin."
        : `Could not refresh: ${error.message}`);
    }
  }

  document.getElementById("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    search(document.getElementById("search-id").value);
  });

  // One refresh at a time, every refreshMs; none while the tab is hidden (caught up when shown).
  let timer = null;
  let busy = false;
  async function loop() {
    timer = null;
    busy = true;
    try { await refresh(); } finally { busy = false; }
    if (!document.hidden) timer = setTimeout(loop, refreshMs);
  }
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) { clearTimeout(timer); timer = null; } else if (timer === null && !busy) loop();
  });
  loop();
})();
