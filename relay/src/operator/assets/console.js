// Keyway operator console: filter the sites table, and keep it current
// from the server's live stream. Values go in with textContent only.
"use strict";
(function () {
  const table = document.getElementById("sites");
  const filter = document.getElementById("filter");
  const counts = document.getElementById("counts");

  function when(secs) {
    if (!secs) return "—";
    return new Date(secs * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }
  function consoleCell(r) {
    if (r.console_ok === true) return "reachable";
    if (r.console_ok === false) return r.console_problem ? "unreachable: " + r.console_problem : "unreachable";
    return "—";
  }
  function pairingCell(r) {
    if (r.code_expires) return "code waiting until " + when(r.code_expires);
    return r.paired ? "paired" : "not paired";
  }
  function cell(tr, text) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
    return td;
  }
  function applyFilter() {
    if (!table || !filter) return;
    const q = filter.value.trim().toLowerCase();
    for (const tr of table.tBodies[0].rows) {
      tr.hidden = q !== "" && !tr.dataset.site.includes(q);
    }
  }
  function render(rows) {
    const body = document.createElement("tbody");
    for (const r of rows) {
      const tr = document.createElement("tr");
      tr.dataset.site = r.name;
      tr.className = r.online ? "online" : "offline";
      const first = document.createElement("td");
      const a = document.createElement("a");
      a.href = "/console/sites/" + encodeURIComponent(r.name);
      a.textContent = r.name;
      first.appendChild(a);
      tr.appendChild(first);
      cell(tr, (r.online ? "online" : "offline") + (r.duplicate ? " · duplicate agent" : "")).className = "state";
      cell(tr, when(r.last_seen));
      cell(tr, r.transport || "—");
      cell(tr, r.agent_version || "—");
      cell(tr, consoleCell(r));
      cell(tr, pairingCell(r));
      cell(tr, r.cert_expires ? when(r.cert_expires).split(" ")[0] : "—");
      cell(tr, String(r.requests_hour)).className = "num";
      cell(tr, String(r.errors_hour)).className = r.errors_hour > 0 ? "num bad" : "num";
      body.appendChild(tr);
    }
    table.replaceChild(body, table.tBodies[0]);
    if (counts) counts.textContent = rows.filter((r) => r.online).length + " of " + rows.length + " online";
    applyFilter();
  }

  if (filter) filter.addEventListener("input", applyFilter);
  if (table && table.dataset.live && window.EventSource) {
    const live = new EventSource(table.dataset.live);
    live.addEventListener("sites", (e) => render(JSON.parse(e.data)));
  }
  // Revocation asks for the site's name, typed.
  for (const form of document.querySelectorAll("form.danger")) {
    form.addEventListener("submit", (e) => {
      const site = document.getElementById("site");
      const typed = form.querySelector("input[name=confirm]");
      if (site && typed && typed.value !== site.dataset.site) {
        e.preventDefault();
        typed.setCustomValidity("Type " + site.dataset.site + " to confirm");
        typed.reportValidity();
      }
    });
  }
})();
