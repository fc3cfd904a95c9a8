// The labeling page of `sanitize label serve`. Plain browser JavaScript: no libraries, no external requests.
// The server owns all state; this page shows it and sends one request per key. Keys are queued, so fast
// typing labels consecutive items instead of answering one item twice.
"use strict";
(() => {
  const TOKEN_KEY = "sanitize-label-token";
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    // Keep the token in this tab only, and out of the address bar, history and screenshots.
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    history.replaceState(null, "", "/");
  }
  const token = sessionStorage.getItem(TOKEN_KEY) || "";
  const $ = (id) => document.getElementById(id);

  let state = null;        // the server's last answer to /api/state
  let shown = null;        // uid of the item on screen
  let focusUid = null;     // an item to show next (after an undo)
  let mine = [];           // uids this tab answered or skipped in this round, newest last (for undo)
  let revealed = false;
  let finishing = false;
  let queue = Promise.resolve();

  async function api(method, path, body) {
    const init = { method, headers: { "X-Sanitize-Token": token } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    let data = {};
    try { data = await res.json(); } catch (e) { data = { error: `HTTP ${res.status}` }; }
    return { status: res.status, data };
  }

  function toast(text) {
    const el = $("toast");
    el.textContent = text;
    el.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { el.hidden = true; }, 4000);
  }

  function fatal(text) {
    for (const id of ["start", "label", "done"]) $(id).hidden = true;
    $("message").textContent = text;
    $("message").hidden = false;
  }

  const startedKey = () => `started:${state.category}:${state.round}`;
  const pending = () => state.items.filter((it) => it.status === null);
  const fmt = (x, digits = 3) => (x === null || x === undefined ? "—" : Number(x).toFixed(digits));
  const pct = (x) => (x === null || x === undefined ? "—" : `${(100 * x).toFixed(2)} %`);

  function setState(next) {
    if (state && next.round !== state.round) { mine = []; focusUid = null; }
    state = next;
    render();
  }

  function render() {
    $("message").hidden = true;
    $("where").textContent = `${state.category} · round ${state.round} · ${state.strategy} · ${state.annotator || "anonymous"}`;
    $("count").textContent = `${state.done} of ${state.size}`;
    $("fill").style.width = `${state.size ? (100 * state.done) / state.size : 0}%`;
    for (const id of ["help-cat", "question-cat"]) $(id).textContent = state.category;
    $("help-desc").textContent = state.description;
    $("help-guide").textContent = state.guidelines;
    $("item-guide").textContent = state.guidelines || state.description;
    const screen = state.complete ? "done" : sessionStorage.getItem(startedKey()) ? "label" : "start";
    for (const id of ["start", "label", "done"]) $(id).hidden = id !== screen;
    document.body.dataset.screen = screen;
    if (screen === "start") renderStart();
    else if (screen === "label") renderItem();
    else renderDone();
  }

  function renderStart() {
    $("start-kicker").textContent = `round ${state.round} · ${state.size} images · picked by ${state.strategy}`;
    $("start-title").textContent = state.category;
    $("start-desc").textContent = state.description;
    $("start-guide").textContent = state.guidelines;
    shown = null;
  }

  function renderItem() {
    const open = pending();
    const item = open.find((it) => it.uid === focusUid) || open[0];
    const index = state.items.indexOf(item);
    if (item.uid !== shown) {
      shown = item.uid;
      revealed = false;
      $("img").hidden = !item.has_image;
      $("noimg").hidden = item.has_image;
      $("img").src = item.has_image ? imageUrl(item.uid) : "";
      const after = open[open.indexOf(item) + 1];
      if (after && after.has_image) new Image().src = imageUrl(after.uid);  // warm the cache
    }
    $("pic").classList.toggle("blurred", !revealed);
    $("pos").textContent = `item ${index + 1} of ${state.size} · ${open.length} open`;
    $("caption").textContent = item.caption;
    $("score").textContent = fmt(item.score);
    $("uid").textContent = item.uid;
    $("reason").textContent = item.reason || state.strategy;
  }

  function renderDone() {
    shown = null;
    const counts = { positive: 0, negative: 0, skipped: 0 };
    for (const it of state.items) counts[it.status] += 1;
    $("done-kicker").textContent = `${state.category} · round ${state.round}`;
    $("done-summary").textContent =
      `${counts.positive} yes, ${counts.negative} no, ${counts.skipped} skipped of ${state.size} images.`;
    const select = $("strategy");
    if (select.options.length === 0) {
      for (const name of state.strategies) select.add(new Option(name, name, false, name === state.next_strategy));
    }
    if (state.metrics) renderMetrics(state.metrics);
    else finish();
  }

  function renderMetrics(m) {
    const rows = [
      ["labels (seed + active + audit)", `${m.n_labelled}: ${m.n_positive} positive, ${m.n_negative} negative`],
      [`cross-validated precision at P ≥ ${m.threshold}`, m.cv_folds ? `${fmt(m.cv_precision)} (${m.cv_folds} folds)` : "—"],
      [`cross-validated recall at P ≥ ${m.threshold}`, m.cv_folds ? `${fmt(m.cv_recall)} (${m.cv_folds} folds)` : "—"],
      ["expected removal rate", m.removal_rate === null ? "—" : `${pct(m.removal_rate)} of ${m.pool_rows} rows`],
      ["random-audit labels", `${m.audit.labelled}` + (m.audit.drawn ? ` of ${m.audit.drawn} drawn` : "")],
    ];
    const c = m.certificate;
    rows.push(["certified recall (last sanitize classify)", c
      ? `≥ ${fmt(c.recall_lower_bound)} at ${Math.round(100 * c.confidence)} % confidence, threshold ${fmt(c.threshold)}` +
        (c.certified ? " — certified" : ` — not certified (target ${c.target_recall})`)
      : "none yet: label an audit sample, then run sanitize classify"]);
    const table = document.createElement("table");
    for (const [name, value] of rows) {
      const tr = table.insertRow();
      tr.insertCell().textContent = name;
      tr.insertCell().textContent = value;
    }
    const box = $("metrics");
    box.replaceChildren(table);
    for (const note of m.notes || []) {
      const p = document.createElement("p");
      p.className = "notes";
      p.textContent = `note: ${note}`;
      box.append(p);
    }
  }

  const imageUrl = (uid) => `/image/${encodeURIComponent(uid)}?token=${encodeURIComponent(token)}`;

  async function finish() {
    if (finishing) return;
    finishing = true;
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "Retraining the classifier…";
    $("metrics").replaceChildren(p);
    try {
      const { status, data } = await api("POST", "/api/finish", {});
      if (status === 200) setState(data.state);
      else if (data.state) { toast(data.error); setState(data.state); }
      else toast(data.error || `HTTP ${status}`);
    } finally {
      finishing = false;
    }
  }

  async function post(path, body) {
    const { status, data } = await api("POST", path, body);
    if (data.state) setState(data.state);
    if (status === 200) return data;
    const c = data.outcome && data.outcome.conflict;
    if (c) {
      toast(`${c.uid} is already labelled ${c.stored_label ? "yes" : "no"} (${c.stored_source}, round ${c.stored_round}), kept.`);
    } else {
      toast(data.error || `HTTP ${status}`);
    }
    return null;
  }

  async function act(key) {
    if (!state) return;
    const help = !$("help").hidden;
    if (key === "?") { $("help").hidden = help; return; }
    if (key === "escape") { $("help").hidden = true; return; }
    if (help) return;
    const screen = document.body.dataset.screen;
    if (key === "u") return undo();
    if (screen === "start" && key === "enter") {
      sessionStorage.setItem(startedKey(), "1");
      render();
    } else if (screen === "label") {
      if (key === "b" || key === " ") {
        revealed = !revealed;
        $("pic").classList.toggle("blurred", !revealed);
      } else if (key === "y" || key === "n") {
        const uid = shown;
        const data = await post("/api/answer", { uid, label: key === "y" ? 1 : 0, round: state.round });
        if (data) { mine.push(uid); focusUid = null; if (data.outcome.action === "unchanged") toast("already saved"); }
      } else if (key === "s") {
        const uid = shown;
        const data = await post("/api/skip", { uid, round: state.round });
        if (data && data.outcome.action === "skipped") { mine.push(uid); focusUid = null; }
      }
    } else if (screen === "done" && key === "enter") {
      if (!state.metrics) return;  // still retraining
      await post("/api/next", { strategy: $("strategy").value, round: state.round });
    }
  }

  async function undo() {
    const uid = mine.length ? mine[mine.length - 1] : null;
    const data = await post("/api/undo", { uid, round: state.round });
    if (!data) return;
    if (uid) mine.pop();
    const outcome = data.outcome;
    if (outcome.action === "nothing") { toast("nothing to undo in this batch"); return; }
    focusUid = outcome.uid;
    shown = null;  // show the item again, blurred
    render();
    toast(outcome.action === "retracted" ? "answer taken back" : "skip taken back");
  }

  function enqueue(key) {
    queue = queue.then(() => act(key)).catch((err) => toast(`error: ${err.message || err}`));
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    if (event.target instanceof HTMLSelectElement) return;
    const key = event.key === "Enter" ? "enter" : event.key === "Escape" ? "escape" : event.key.toLowerCase();
    if (!["y", "n", "s", "u", "b", " ", "?", "enter", "escape"].includes(key)) return;
    event.preventDefault();
    enqueue(key);
  });
  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-key]");
    if (button) { enqueue(button.dataset.key); button.blur(); }
    else if (event.target.closest("#pic")) enqueue("b");
  });
  $("strategy").addEventListener("change", (event) => event.target.blur());  // so Enter fetches the round
  $("help").addEventListener("click", (event) => { if (event.target === $("help")) enqueue("escape"); });

  (async () => {
    if (!token) {
      fatal("This page needs the session token: open the address that `sanitize label serve` printed.");
      return;
    }
    const { status, data } = await api("GET", "/api/state");
    if (status === 200) setState(data);
    else if (status === 403) fatal("The session token was refused: open the address that `sanitize label serve` printed (a restarted server has a new token).");
    else fatal(data.error || `HTTP ${status}`);
  })();
})();
