// runner serve: live updates, actions with the token, and the log tail. Plain JS, no build.
(function () {
  "use strict";
  const body = document.body;
  const region = document.getElementById("live-region");
  const conn = document.getElementById("conn");
  const toastEl = document.getElementById("toast");
  const TOKEN_KEY = "runner-token";

  function setConn(text, on) {
    if (!conn) return;
    conn.textContent = text;
    conn.className = "conn " + (on ? "on" : "off");
  }

  let toastTimer = null;
  function toast(text, isError) {
    if (!toastEl) return;
    toastEl.textContent = text;
    toastEl.className = "toast show" + (isError ? " err" : "");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { toastEl.className = "toast"; }, 4000);
  }

  function human(ms) {
    if (ms < 1000) return Math.max(0, Math.round(ms)) + "ms";
    const s = ms / 1000;
    if (s < 60) return s.toFixed(1) + "s";
    const m = Math.floor(s / 60), r = Math.floor(s % 60);
    if (m < 60) return m + "m " + String(r).padStart(2, "0") + "s";
    return Math.floor(m / 60) + "h " + String(m % 60).padStart(2, "0") + "m";
  }
  function tick() {
    document.querySelectorAll("[data-live-since]").forEach((el) => {
      const t = Date.parse(el.dataset.liveSince);
      if (!isNaN(t)) el.textContent = human(Date.now() - t);
    });
  }
  setInterval(tick, 1000);

  // Fresh server-rendered fragments, at most a few times a second, keeping open
  // <details> open and never replacing what someone is typing into.
  let refreshTimer = null, again = false, inFlight = false;
  function refresh() {
    if (!region) return;
    if (refreshTimer || inFlight) { again = true; return; }
    refreshTimer = setTimeout(doRefresh, 250);
  }
  async function doRefresh() {
    refreshTimer = null;
    const active = document.activeElement;
    if (active && region.contains(active) && active.matches("input, textarea")) {
      again = true;
      active.addEventListener("blur", () => refresh(), { once: true });
      return;
    }
    inFlight = true;
    try {
      const r = await fetch(region.dataset.partial, { headers: { Accept: "text/html" } });
      if (r.ok) {
        const open = Array.from(region.querySelectorAll("details[open]")).map((d) => d.id);
        const focusKey = active && region.contains(active) ? active.getAttribute("aria-label") : null;
        region.innerHTML = await r.text();
        open.forEach((id) => { const d = document.getElementById(id); if (d) d.open = true; });
        if (focusKey) {
          const el = Array.from(region.querySelectorAll("[aria-label]")).find((e) => e.getAttribute("aria-label") === focusKey);
          if (el) el.focus();
        }
        tick();
        document.dispatchEvent(new Event("runner:refreshed"));
      }
    } catch (e) { /* the stream's reconnect brings the next refresh */ }
    inFlight = false;
    if (again) { again = false; refresh(); }
  }

  if (body.dataset.stream && window.EventSource) {
    const es = new EventSource(body.dataset.stream);
    let opened = false;
    es.onopen = () => { setConn("live", true); if (opened) refresh(); opened = true; };
    es.addEventListener("journal", (e) => {
      refresh();
      try { document.dispatchEvent(new CustomEvent("runner:event", { detail: JSON.parse(e.data) })); } catch (x) { /* ignore */ }
    });
    es.addEventListener("heartbeat", () => setConn("live", true));
    es.onerror = () => setConn("reconnecting…", false);
  } else {
    setConn("", true);
  }

  // The token: asked once, kept in this tab's sessionStorage.
  function askToken(why) {
    const dlg = document.getElementById("token-dialog");
    const input = document.getElementById("token-input");
    if (!dlg || !dlg.showModal) return Promise.resolve(window.prompt(why || "API token") || null);
    if (why) document.getElementById("token-why").textContent = why;
    input.value = "";
    dlg.showModal();
    input.focus();
    return new Promise((resolve) => {
      dlg.addEventListener("close", () => {
        const t = dlg.returnValue === "ok" ? input.value.trim() : "";
        if (t) sessionStorage.setItem(TOKEN_KEY, t);
        resolve(t || null);
      }, { once: true });
    });
  }

  async function post(url, payload) {
    let token = sessionStorage.getItem(TOKEN_KEY) || await askToken();
    if (!token) return null;
    const send = (t) => fetch(url, {
      method: "POST",
      headers: { "Authorization": "Bearer " + t, "Content-Type": "application/json" },
      body: JSON.stringify(payload || {}),
    });
    let r = await send(token);
    if (r.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      token = await askToken("The server refused that token. Enter the token `runner serve` printed when it started.");
      if (!token) return null;
      r = await send(token);
    }
    let data = {};
    try { data = await r.json(); } catch (e) { /* empty */ }
    if (!r.ok) {
      toast((data.error && data.error.message) || ("failed: HTTP " + r.status), true);
      if (r.status === 401) sessionStorage.removeItem(TOKEN_KEY);
      return null;
    }
    return data;
  }

  const runId = body.dataset.run;
  const runUrl = runId ? "/api/runs/" + encodeURIComponent(runId) : null;
  function stepUrl(step) { return runUrl + "/steps/" + step.split("/").map(encodeURIComponent).join("/"); }

  document.addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button[data-action], button[data-logs]");
    if (!btn || !runUrl) return;
    if (btn.dataset.logs) { showLogs(btn.dataset.logs, btn.dataset.visit, btn.dataset.attempt); return; }
    const action = btn.dataset.action;
    btn.disabled = true;
    try {
      if (action === "approve" || action === "reject") {
        const form = btn.closest("form");
        const step = form.dataset.step;
        const by = form.querySelector("[name=by]").value.trim();
        const comment = form.querySelector("[name=comment]").value.trim();
        if (by) sessionStorage.setItem("runner-by", by);
        const payload = {};
        if (by) payload.by = by;
        if (comment) payload.comment = comment;
        // The server resumes the run only if no runner drives it once the verdict is in.
        payload.resume = true;
        const res = await post(stepUrl(step) + "/" + action, payload);
        if (res) toast("Step " + step + " " + res.decision + " by " + res.by);
      } else if (action === "cancel") {
        if (!window.confirm("Cancel this run? Its running steps are stopped; it can be resumed later.")) return;
        const res = await post(runUrl + "/cancel", {});
        if (res) toast("Cancelling the run…");
      } else if (action === "resume") {
        const res = await post(runUrl + "/resume", {});
        if (res) toast(res.state === "started" ? "Resumed" : "The runner ended with exit code " + res.exit_code);
      }
    } finally {
      btn.disabled = false;
      refresh();
    }
  });

  // Names typed once are offered again.
  function fillBy() {
    const by = sessionStorage.getItem("runner-by");
    if (by) document.querySelectorAll(".approval [name=by]").forEach((i) => { if (!i.value) i.value = by; });
  }
  document.addEventListener("runner:refreshed", fillBy);
  fillBy();

  // Logs: pick a step and attempt, show its tail, follow it while it runs.
  const logStep = document.getElementById("log-step");
  const logAttempt = document.getElementById("log-attempt");
  const logStream = document.getElementById("log-stream");
  const logText = document.getElementById("log-text");
  const logState = document.getElementById("log-state");
  let logGen = 0, logNext = 0, logTimer = null;

  function attemptsOf(step) {
    const out = [];
    region.querySelectorAll('button[data-logs]').forEach((b) => {
      if (b.dataset.logs === step) out.push([b.dataset.visit, b.dataset.attempt]);
    });
    return out;
  }
  function fillSteps() {
    if (!logStep) return;
    const keep = logStep.value;
    const steps = [];
    region.querySelectorAll("button[data-logs]").forEach((b) => { if (!steps.includes(b.dataset.logs)) steps.push(b.dataset.logs); });
    const cur = Array.from(logStep.options).map((o) => o.value).join("\n");
    if (cur !== steps.join("\n")) {
      logStep.innerHTML = "";
      steps.forEach((s) => { const o = document.createElement("option"); o.value = s; o.textContent = s; logStep.appendChild(o); });
      if (steps.includes(keep)) logStep.value = keep;
    }
    fillAttempts();
  }
  function fillAttempts(visit, attempt) {
    if (!logAttempt) return;
    const keep = logAttempt.value;
    const list = attemptsOf(logStep.value);
    const values = list.map(([v, a]) => v + ":" + a);
    const cur = Array.from(logAttempt.options).map((o) => o.value).join("\n");
    if (cur !== values.join("\n")) {
      logAttempt.innerHTML = "";
      list.forEach(([v, a]) => {
        const o = document.createElement("option");
        o.value = v + ":" + a;
        o.textContent = "visit " + v + ", attempt " + a;
        logAttempt.appendChild(o);
      });
      logAttempt.value = values.includes(keep) ? keep : (values[values.length - 1] || "");
    }
    if (visit && attempt) logAttempt.value = visit + ":" + attempt;
  }
  async function loadLog() {
    if (!logStep || !logStep.value || !logAttempt.value) {
      if (logText) logText.textContent = "";
      if (logState) logState.textContent = "no attempt has run yet";
      return;
    }
    const gen = ++logGen;
    clearTimeout(logTimer);
    const [visit, attempt] = logAttempt.value.split(":");
    const base = stepUrl(logStep.value) + "/logs?visit=" + visit + "&attempt=" + attempt + "&stream=" + logStream.value;
    const r = await fetch(base + "&tail=500");
    if (gen !== logGen) return;
    if (!r.ok) { logState.textContent = "cannot load this log"; return; }
    const d = await r.json();
    logText.textContent = d.text;
    logNext = d.next_offset;
    logText.scrollTop = logText.scrollHeight;
    follow(d, base, gen);
  }
  function follow(d, base, gen) {
    logState.textContent = d.running ? "following (running)" : (d.size ? d.size + " bytes, " + d.status : "empty, " + d.status);
    if (!d.running) return;
    logTimer = setTimeout(async () => {
      if (gen !== logGen) return;
      try {
        const r = await fetch(base + "&offset=" + logNext);
        if (gen !== logGen || !r.ok) return;
        const n = await r.json();
        if (n.text) {
          const atEnd = logText.scrollTop + logText.clientHeight >= logText.scrollHeight - 4;
          logText.textContent += n.text;
          if (atEnd) logText.scrollTop = logText.scrollHeight;
        }
        logNext = n.next_offset;
        follow(n, base, gen);
      } catch (e) { follow(d, base, gen); }
    }, 1000);
  }
  function showLogs(step, visit, attempt) {
    logStep.value = step;
    fillAttempts(visit, attempt);
    loadLog();
    document.getElementById("logs-h").scrollIntoView({ behavior: "smooth" });
  }
  if (logStep) {
    fillSteps();
    if (logStep.options.length) {
      // Start with the step that ran last.
      const running = region.querySelector('.step[data-status="running"]');
      if (running) { logStep.value = running.dataset.step; fillAttempts(); }
      else { logStep.selectedIndex = logStep.options.length - 1; fillAttempts(); }
    }
    loadLog();
    logStep.addEventListener("change", () => { fillAttempts(); loadLog(); });
    logAttempt.addEventListener("change", loadLog);
    logStream.addEventListener("change", loadLog);
    document.addEventListener("runner:refreshed", () => {
      const before = logAttempt.value;
      fillSteps();
      if (logAttempt.value !== before || !logText.textContent) loadLog();
    });
  }
})();
