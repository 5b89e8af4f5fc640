// outpost console: keeps the server-rendered page live. No framework, no build step.
// Events arrive over SSE (/events); after a lifecycle event the panes are re-fetched
// from /partial/<name> (debounced); sparklines poll /api/metrics while the tab is visible.
(function () {
  "use strict";
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const readOnly = document.body.dataset.readOnly === "true";
  const MAX_EVENTS = 200;
  const REFRESH_DEBOUNCE_MS = 150;
  const REFRESH_EVERY_MS = 5000;
  const CHART_EVERY_MS = 2000;
  const CHART_POINTS = 150;
  const visible = () => document.visibilityState === "visible";

  // -- panes: re-rendered by the server, swapped in place ---------------------------
  function rowKeys(root) {
    const out = {};
    $$("tr[data-agent]", root).forEach((tr) => {
      const restarts = $('td[data-col="restarts"]', tr);
      out[tr.dataset.agent] = tr.dataset.state + "/" + (restarts ? restarts.textContent : "");
    });
    return out;
  }

  let refreshing = null;
  async function refreshPanes() {
    if (refreshing) return refreshing;
    refreshing = (async () => {
      for (const el of $$("[data-partial]")) {
        const before = rowKeys(el);
        const res = await fetch("/partial/" + encodeURIComponent(el.dataset.partial),
                                { cache: "no-store" });
        if (!res.ok) continue;
        el.innerHTML = await res.text();
        const after = rowKeys(el);
        $$("tr[data-agent]", el).forEach((tr) => {
          const name = tr.dataset.agent;
          if (name in before && before[name] !== after[name]) tr.classList.add("changed");
        });
      }
    })().catch(() => {}).finally(() => { refreshing = null; });
    return refreshing;
  }

  let debounce = null;
  function refreshSoon() {
    clearTimeout(debounce);
    debounce = setTimeout(refreshPanes, REFRESH_DEBOUNCE_MS);
  }
  setInterval(() => { if (visible()) refreshPanes(); }, REFRESH_EVERY_MS);
  document.addEventListener("visibilitychange", () => { if (visible()) refreshPanes(); });

  // -- agent actions (only when the runtime allows them) ----------------------------
  if (!readOnly) {
    document.addEventListener("click", async (ev) => {
      const button = ev.target.closest("button[data-action]");
      if (!button) return;
      button.disabled = true;
      try {
        const path = "/api/agents/" + encodeURIComponent(button.dataset.agent) + "/" +
                     button.dataset.action;
        const res = await fetch(path, { method: "POST", headers: { "X-Outpost-Action": "1" } });
        if (!res.ok) alert(await res.text());
      } finally {
        button.disabled = false;
        refreshSoon();
      }
    });
  }

  // -- recent events: filters and the live stream -----------------------------------
  const list = $("#events");
  const form = $("#event-filter");
  const filter = () => ({ agent: form.agent.value.trim(), type: form.type.value.trim() });
  const matches = (e, f) => (!f.agent || e.agent === f.agent) && (!f.type || e.type === f.type);

  function eventItem(e) {
    const li = document.createElement("li");
    li.dataset.seq = e.seq;
    li.dataset.type = e.type;
    li.dataset.agent = e.agent || "";
    const time = document.createElement("time");
    time.dateTime = String(e.ts);
    time.textContent = new Date(e.ts * 1000).toLocaleTimeString([], { hour12: false });
    const type = document.createElement("b");
    type.className = "type";
    type.textContent = e.type;
    const agent = document.createElement("span");
    agent.className = "agent";
    agent.textContent = e.agent || "runtime";
    const details = document.createElement("span");
    details.className = "details";
    details.textContent = Object.entries(e)
      .filter(([k]) => !["seq", "ts", "type", "agent"].includes(k))
      .map(([k, v]) => k + "=" + JSON.stringify(v)).join(" ");
    li.append(time, " ", type, " ", agent, " ", details);
    return li;
  }

  function addEvent(e) {
    const empty = $("li.empty", list);
    if (empty) empty.remove();
    list.prepend(eventItem(e));
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = filter();
    const query = new URLSearchParams({ limit: "50" });
    if (f.agent) query.set("agent", f.agent);
    if (f.type) query.set("type", f.type);
    const res = await fetch("/api/events?" + query, { cache: "no-store" });
    if (!res.ok) return;
    const { events } = await res.json();
    list.replaceChildren();
    if (!events.length) list.innerHTML = '<li class="empty">No events match.</li>';
    events.forEach(addEvent);
    query.delete("limit");
    history.replaceState(null, "", query.toString() ? "/?" + query : "/");
  });

  const live = $("#live");
  function setLive(on, label) {
    live.className = "live " + (on ? "on" : "off");
    live.textContent = label;
  }
  if (window.EventSource) {
    const source = new EventSource("/events");
    source.onopen = () => { setLive(true, "live"); refreshPanes(); };
    source.onerror = () => setLive(false, "reconnecting…");
    source.onmessage = (msg) => {
      const e = JSON.parse(msg.data);
      if (matches(e, filter())) addEvent(e);
      if (e.type !== "output") refreshSoon();
    };
  }

  // -- sparklines -------------------------------------------------------------------
  const chartsPane = $("#pane-charts");
  const select = $("#chart-metric");
  const charts = $("#charts");
  if (!window.uPlot || !chartsPane) return;
  chartsPane.hidden = false;
  const history_ = {}; // "agent:metric" -> {t: [], v: [], kind, last}
  const plots = {};    // agent -> {plot, value}
  let chosen = localStorage.getItem("outpost.chart") || "";

  function sample(metrics) {
    const now = Date.now() / 1000;
    const names = new Set();
    for (const [slot, m] of Object.entries(metrics)) {
      const colon = slot.indexOf(":");
      if (colon < 0 || slot.startsWith("outpost:") || typeof m.value !== "number") continue;
      const metric = slot.slice(colon + 1);
      names.add(metric);
      const h = history_[slot] || (history_[slot] = { t: [], v: [], kind: m.kind, last: null });
      let value = m.value;
      if (m.kind === "counter") { // chart a counter as its rate per second
        const prev = h.last;
        h.last = { t: now, v: m.value };
        if (!prev || now <= prev.t) continue;
        value = (m.value - prev.v) / (now - prev.t);
      }
      h.t.push(now);
      h.v.push(value);
      if (h.t.length > CHART_POINTS) { h.t.shift(); h.v.shift(); }
    }
    return names;
  }

  function fillSelect(names) {
    const have = new Set($$("option", select).map((o) => o.value));
    [...names].sort().forEach((n) => {
      if (have.has(n)) return;
      const opt = document.createElement("option");
      opt.value = opt.textContent = n;
      select.append(opt);
    });
    if (!chosen || !names.has(chosen)) {
      chosen = ["cpu_percent", "heartbeat", "memory_rss_bytes"].find((n) => names.has(n)) ||
               [...names].sort()[0] || "";
    }
    select.value = chosen;
  }

  function fmt(v) {
    if (v === null || v === undefined) return "–";
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
    return a >= 10 ? v.toFixed(0) : v.toFixed(2);
  }

  function draw() {
    const agents = $$("tr[data-agent]").map((tr) => tr.dataset.agent);
    for (const name of Object.keys(plots)) {
      if (!agents.includes(name) || plots[name].metric !== chosen) {
        plots[name].plot.destroy();
        plots[name].box.remove();
        delete plots[name];
      }
    }
    const accent = getComputedStyle(document.documentElement).getPropertyValue("--accent");
    for (const name of agents) {
      const h = history_[name + ":" + chosen];
      if (!h || !h.t.length) continue;
      let p = plots[name];
      if (!p) {
        const box = document.createElement("div");
        box.className = "chart";
        box.dataset.agent = name;
        box.innerHTML = "<h3></h3><div></div>";
        $("h3", box).textContent = name;
        const value = document.createElement("span");
        $("h3", box).append(value);
        charts.append(box);
        const plot = new uPlot({
          width: Math.max(180, box.clientWidth - 10), height: 60,
          cursor: { show: false }, legend: { show: false }, select: { show: false },
          axes: [{ show: false }, { show: false }],
          scales: { x: { time: true } },
          series: [{}, { stroke: accent.trim() || "#0969da", width: 1.5,
                         points: { show: false } }],
        }, [h.t, h.v], $("div", box));
        p = plots[name] = { plot, box, value, metric: chosen };
      }
      p.plot.setData([h.t, h.v]);
      p.value.textContent = fmt(h.v[h.v.length - 1]) + (h.kind === "counter" ? "/s" : "");
    }
  }

  async function poll() {
    if (!visible()) return;
    try {
      const res = await fetch("/api/metrics", { cache: "no-store" });
      if (!res.ok) return;
      fillSelect(sample((await res.json()).metrics));
      draw();
    } catch (_) { /* the next poll tries again */ }
  }
  select.addEventListener("change", () => {
    chosen = select.value;
    localStorage.setItem("outpost.chart", chosen);
    draw();
  });
  poll();
  setInterval(poll, CHART_EVERY_MS);
})();
