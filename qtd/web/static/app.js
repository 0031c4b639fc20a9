// qtd status page: live PnL over a WebSocket (reconnects with backoff), canvas charts,
// confirmed operator controls. Vanilla JS, no libraries, works offline.
"use strict";
(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const csrf = ($('meta[name="csrf"]') || {}).content || "";
  const botBox = $("section[data-bot]");
  const botKey = botBox ? botBox.dataset.bot : "";
  const chart = $("#chart");
  // The page's snapshot time: the first history shown ends there, so the chart's last point
  // is the page's own figure until the next frame updates all of them together.
  let pageT = chart ? Number(chart.dataset.t || 0) : 0;
  const series = [];
  const MAX_POINTS = 900;

  // Live updates touch the DOM only where a value changed: with 500 bots a frame is mostly
  // unchanged cells, and every write costs the browser style and layout work.
  const fmtMoney = new Intl.NumberFormat("en-US", {minimumFractionDigits: 2, maximumFractionDigits: 2});
  const fmtQty = new Intl.NumberFormat("en-US", {maximumFractionDigits: 8});
  const money = (x) => x == null ? "–" : fmtMoney.format(x);
  const setNum = (el, x, fmt) => {
    if (!el) return;
    const text = x == null ? "–" : fmt === "pct" ? `${x.toFixed(2)}%` : fmt === "qty" ? fmtQty.format(x) : money(x);
    if (el.textContent === text) return;
    el.textContent = text;
    el.classList.toggle("neg", x < 0);
    el.classList.toggle("pos", x > 0);
  };

  function draw(canvas, points) {
    if (!canvas) return;
    const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height, pad = 8;
    g.clearRect(0, 0, w, h);
    if (points.length < 1) return;
    const ys = points.map((p) => p[1]);
    let lo = Math.min(0, ...ys), hi = Math.max(0, ...ys);
    if (hi - lo < 1e-9) { hi += 1; lo -= 1; }
    const t0 = points[0][0], t1 = points[points.length - 1][0] || t0 + 1;
    const X = (t) => pad + (w - 2 * pad) * (t1 > t0 ? (t - t0) / (t1 - t0) : 1);
    const Y = (v) => h - pad - (h - 2 * pad) * (v - lo) / (hi - lo);
    g.strokeStyle = "#30363d"; g.beginPath(); g.moveTo(pad, Y(0)); g.lineTo(w - pad, Y(0)); g.stroke();
    const last = ys[ys.length - 1];
    g.strokeStyle = last < 0 ? "#f85149" : "#3fb950"; g.lineWidth = 2; g.beginPath();
    points.forEach((p, i) => (i ? g.lineTo(X(p[0]), Y(p[1])) : g.moveTo(X(p[0]), Y(p[1]))));
    g.stroke();
    g.fillStyle = "#8b949e"; g.font = "12px monospace";
    g.fillText(money(hi), pad + 2, pad + 10); g.fillText(money(lo), pad + 2, h - pad - 2);
    g.fillStyle = "#e6edf3"; g.fillText(money(last), w - pad - 90, pad + 10);
  }

  const setText = (el, text, cls) => {
    if (!el) return;
    if (el.textContent !== text) el.textContent = text;
    if (cls !== undefined && el.className !== cls) el.className = cls;
  };
  const level = (pct) => pct >= 90 ? "hot" : pct >= 70 ? "warm" : "ok";  // = qtd.web.botrow

  const shown = new WeakMap();  // bar element -> the text it shows
  function setBar(el, pct, label) {  // <span class="bar ..."><i style="width"></i><b>text</b>
    const text = label ? `${label} ${pct}%` : `${pct}%`;
    if (shown.get(el) === text) return;
    shown.set(el, text);
    const cls = `${el.classList.contains("lim") ? "bar lim" : "bar"} ${level(pct)}`;
    if (el.className !== cls) el.className = cls;
    el.firstChild.style.transform = `scaleX(${Math.min(pct, 100) / 100})`;  // no layout
    el.lastChild.textContent = text;
  }

  // one bar per limit; rebuilt when the bot's limits (its layout) changed since the render
  function setLimits(td, labels, utils) {
    const sig = labels.join("|"), u = utils.join();
    if (td.dataset.sig === sig && td.dataset.u === u) return;
    if (td.dataset.sig !== sig) {
      td.replaceChildren(...labels.map((l) => {
        const s = Object.assign(document.createElement("span"), {className: "bar lim", title: l});
        s.append(document.createElement("i"), document.createElement("b"));
        return s;
      }));
      if (!labels.length) td.append(Object.assign(document.createElement("span"), {className: "muted", textContent: "not reported"}));
      td.dataset.sig = sig;
    }
    td.dataset.u = u;
    for (let i = 0; i < labels.length; i++) setBar(td.children[i], utils[i] || 0, labels[i]);
  }

  // Limit bars are redrawn only in rows on (or near) the screen: with 500 bots x 12 limits
  // all moving, redrawing every bar each second would keep the browser busy. A row that
  // scrolls into view gets its latest bars at once.
  const onScreen = new Set(), pendingBars = new Map();
  const watcher = "IntersectionObserver" in window ? new IntersectionObserver((seen) => {
    for (const e of seen) {
      if (!e.isIntersecting) { onScreen.delete(e.target); continue; }
      onScreen.add(e.target);
      const p = pendingBars.get(e.target);
      if (p) { pendingBars.delete(e.target); setLimits(...p); }
    }
  }, {rootMargin: "300px 0px"}) : null;

  const rows = new Map();  // "node/bot" -> its <tr> (one lookup per bot, not per frame)
  function botRow(key) {
    let tr = rows.get(key);
    if (tr === undefined || !tr.isConnected) {
      tr = $(`tr[data-bot="${CSS.escape(key)}"]`);
      if (tr) { rows.set(key, tr); if (watcher) watcher.observe(tr); }
    }
    return tr;
  }

  const cellsOf = new WeakMap();  // row -> {data-k: cell}, collected once
  function cells(tr) {
    let c = cellsOf.get(tr);
    if (c === undefined) {
      c = {};
      for (const el of tr.querySelectorAll("[data-k]")) c[el.dataset.k] = el;
      cellsOf.set(tr, c);
    }
    return c;
  }

  // b: a BotFigures of qtd/web/frames.py (every frame field is read by name)
  function onBot(tr, b, layouts) {
    const c = cells(tr);
    setText(c["bot.counts"], b.counts);
    setText(c["bot.why"], b.why || ""); setText(c["bot.denies"], b.denies || "");
    setNum(c["bot.pnl"], b.pnl); setNum(c["bot.gross"], b.gross); setNum(c["bot.total"], b.total);
    setText(c["bot.pos"], b.pos);
    setText(c["bot.stage"], b.stage || "–", `stage ${b.stage}`);
    setText(c["bot.state"], b.state, `state ${b.state.toLowerCase()}`);
    const td = c["bot.lims"];
    if (!td) return;
    const labels = layouts[b.layout] || [];
    if (watcher && !onScreen.has(tr)) pendingBars.set(tr, [td, labels, b.utils]);
    else setLimits(td, labels, b.utils);
  }

  const overview = !!$("table.bots");
  // f: a Tick of qtd/web/frames.py
  function onTick(f) {
    // the chart first: canvas text needs the page's style, which is clean before the updates
    const v = botKey ? (f.bots[botKey] || {pnl: null}).pnl : f.fleet.pnl;
    if (v != null) { series.push([f.t, v]); if (series.length > MAX_POINTS) series.shift(); }
    draw(chart, series);
    let unknown = 0;  // bots, nodes or symbols the page does not show yet
    for (const [k, v] of Object.entries(f.fleet)) setNum($(`[data-k="fleet.${k}"]`), v, k === "dd" ? "pct" : "");
    setText($('[data-k="fleet.counts"]'), f.counts);
    for (const [key, b] of Object.entries(f.bots)) {
      const tr = botRow(key);
      if (tr) onBot(tr, b, f.layouts); else unknown++;
    }
    for (const [sym, s] of Object.entries(f.symbols || {})) {
      const tr = $(`tr[data-symbol="${CSS.escape(sym)}"]`);
      if (!tr) { unknown++; continue; }
      const c = cells(tr);
      setNum(c["sym.qty"], s.qty, "qty"); setNum(c["sym.mark"], s.mark); setNum(c["sym.net"], s.net);
      const b = $('[data-k="sym.bar"] .bar', tr);
      if (b && s.pct != null) setBar(b, s.pct, "");
    }
    (f.caps || []).forEach((cap, i) => {
      const tr = $(`tr[data-cap="${i}"]`);
      if (!tr) return;
      setText($('[data-k="cap.value"]', tr), money(cap.value)); setText($('[data-k="cap.key"]', tr), cap.key);
      const b = $('[data-k="cap.bar"] .bar', tr);
      if (b) setBar(b, cap.pct, "");
    });
    const mine = botKey ? f.bots[botKey] : null;
    if (mine) {
      setNum($('[data-k="bot.pnl"]', botBox), mine.pnl);
      const st = $('section.why [data-k="bot.state"]');
      setText(st, mine.state, `state ${mine.state.toLowerCase()}`);
      setText($('section.why [data-k="bot.why"]'), mine.why || "");
    }
    for (const [node, n] of Object.entries(f.nodes)) {
      const tr = $(`tr[data-node="${CSS.escape(node)}"]`);
      if (!tr) { unknown++; continue; }
      setText($('[data-k="node.bots"]', tr), String(n.bots)); setNum($('[data-k="node.pnl"]', tr), n.pnl);
      $('[data-k="node.age"]', tr).textContent = n.age == null ? "–" : `${n.age.toFixed(1)}s`;
      const a = $('[data-k="node.alive"]', tr);
      a.textContent = n.alive ? "alive" : "DOWN"; a.className = n.alive ? "ok" : "bad";
      $('[data-k="node.state"]', tr).textContent = n.state;
    }
    const kill = $("#kill");
    if (kill) {
      kill.classList.toggle("hidden", !f.kill.active);
      // Every active kill (the kill state is a set; pages.kill_line says it the same way).
      kill.textContent = (f.kill.kills || []).map((k) => `KILL ${k.scope} ${k.key} — ${k.reason} (${k.who}) [${k.kill_id}]`).join(" · ");
    }
    const changed = $("#changed");
    if (changed && overview) changed.classList.toggle("hidden", unknown === 0);
    renderAlerts(f.alerts);
  }

  function renderAlerts(alerts) {
    const ul = $("#alerts");
    if (!ul) return;
    const sig = alerts.map((a) => a.alert_id + a.status).join();
    if (ul.dataset.sig === sig) return;
    ul.dataset.sig = sig;
    ul.replaceChildren(...(alerts.length ? alerts.map((a) => {
      const li = document.createElement("li");
      li.className = `sev ${a.severity}`;
      li.textContent = `${a.severity} ${a.status} ${a.title} `;
      if (csrf && a.status === "open") li.append(button("ack", "alert", a.alert_id, "ack"));
      return li;
    }) : [Object.assign(document.createElement("li"), {className: "muted", textContent: "no open alerts"})]));
  }

  function button(verb, target, key, label) {
    const b = Object.assign(document.createElement("button"), {className: `ctl ${verb}`, textContent: label});
    Object.assign(b.dataset, {verb, target, key});
    return b;
  }

  let delay = 500;
  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/ws/live${botKey ? "?bot=" + encodeURIComponent(botKey) : ""}`);
    const conn = $("#conn");
    ws.onopen = () => { delay = 500; conn.textContent = "live"; conn.classList.add("live"); };
    ws.onmessage = (ev) => {
      const f = JSON.parse(ev.data);
      if (f.type === "hello") {
        series.length = 0;
        series.push(...(botKey ? f.bot_history : f.fleet).filter((p) => !pageT || p[0] <= pageT));
        pageT = 0;
        draw(chart, series);
      } else if (f.type === "tick") { onTick(f); conn.dataset.ticks = String(1 + Number(conn.dataset.ticks || 0)); }
    };
    ws.onclose = () => {
      conn.classList.remove("live");
      const wait = Math.min(delay, 10000) * (0.8 + Math.random() * 0.4);
      conn.textContent = `reconnecting in ${(wait / 1000).toFixed(1)}s`;
      setTimeout(connect, wait);
      delay = Math.min(delay * 2, 10000);
    };
  }

  async function post(url, body) {
    const r = await fetch(url, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}, body: JSON.stringify(body)});
    const j = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(j.error || `HTTP ${r.status}`);
    return j;
  }

  function confirmControl(b) {
    const dlg = $("#confirm"), form = $("form", dlg), {verb, target, key} = b.dataset;
    const word = target === "global" ? "GLOBAL" : key;
    $("#confirm-title").textContent = `${verb.toUpperCase()} ${target} ${key}`.trim();
    $("#confirm-word").textContent = word;
    $("#confirm-error").textContent = "";
    form.reset();
    dlg.onclose = async () => {
      if (dlg.returnValue !== "ok") return;
      try {
        await post("/api/control", {verb, target, key, reason: form.reason.value, confirm: form.confirm.value});
        location.reload();
      } catch (e) { alert(`${verb} refused: ${e.message}`); }
    };
    dlg.showModal();
  }

  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button.ctl");
    if (!b) return;
    if (b.dataset.verb !== "ack") return confirmControl(b);
    if (!confirm(`Acknowledge alert ${b.dataset.key}?`)) return;
    try { await post(`/api/alerts/${encodeURIComponent(b.dataset.key)}/ack`, {}); location.reload(); }
    catch (e) { alert(`ack refused: ${e.message}`); }
  });

  const eq = $("#equity");
  if (eq && eq.dataset.points) draw(eq, eq.dataset.points.split(";").map((s) => s.split(",").map(Number)));
  connect();
})();
