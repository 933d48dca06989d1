// Keeps a dashboard page live: one WebSocket per page (body[data-ws]); the server pushes
// snapshots and this script redraws the tables. Text is set with textContent only.
(function () {
  "use strict";
  const body = document.body;
  const path = body.dataset.ws;
  if (!path) return;
  const dot = document.getElementById("live");

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const child of children || []) node.appendChild(child);
    return node;
  }
  const td = (text, attrs) => el("td", Object.assign({ text: text == null ? "" : String(text) }, attrs || {}));
  const badge = (text) => el("td", {}, [el("span", { class: "badge " + text, text: text, "data-phase": "" })]);
  function fillTable(id, rows, emptyText, columns) {
    const tbody = document.querySelector("#" + id + " tbody");
    if (!tbody) return;
    tbody.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, [td(emptyText, { colspan: String(columns) })])]));
  }
  function setText(selector, value) {
    document.querySelectorAll(selector).forEach((n) => { n.textContent = String(value); });
  }
  function formatBytes(n) {
    const units = ["B", "KB", "MB", "GB", "TB"]; let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return n.toFixed(i ? 1 : 0) + " " + units[i];
  }

  const nodeHref = (name) => "/nodes/" + encodeURIComponent(name) + "/";
  const cordonedBadge = () => el("span", { class: "badge Cordoned", text: "Cordoned", title: "no new replicas are placed here" });
  const labelCodes = (labels) => Object.entries(labels).flatMap(([k, v]) => [el("code", { text: k + "=" + v }), document.createTextNode(" ")]);
  const show = (id, visible) => { const n = document.getElementById(id); if (n) n.style.display = visible ? "" : "none"; };

  // A cluster snapshot carries what its page lists (web/listing.py): a page of nodes or
  // deployments (with `pager`), the overview's few of each, or one node (the node page).
  function renderCluster(msg) {
    if (msg.nodes) fillTable("nodes-table", msg.nodes.map((n) => el("tr", { "data-node": n.name }, [
      el("td", {}, [el("a", { href: nodeHref(n.name), text: n.name })]),
      el("td", {}, [el("span", { class: "badge " + n.status, text: n.status, title: n.status_message }),
        ...(n.unschedulable ? [document.createTextNode(" "), cordonedBadge()] : [])]),
      td(n.capacity.cpu + "m"), td(formatBytes(n.capacity.memory)), td(n.engine_version),
      el("td", {}, labelCodes(n.labels)),
    ])), "No nodes.", 6);
    if (body.dataset.node && "node" in msg) renderNode(msg.node);
    if (msg.deployments) fillTable("deployments-table", msg.deployments.map((d) => el("tr", { "data-deployment": d.namespace + "/" + d.name }, [
      td(d.namespace),
      el("td", {}, [el("a", { href: "/namespaces/" + encodeURIComponent(d.namespace) + "/deployments/" + encodeURIComponent(d.name) + "/", text: d.name })]),
      el("td", {}, [el("code", { text: d.image })]), td(d.ready_replicas + "/" + d.replicas),
    ])), "No deployments.", 4);
    for (const [key, value] of Object.entries(msg.counts || {})) setText("[data-count=" + key + "]", value);
    renderPager(msg.pager);
    if (msg.events) renderEvents("cluster-events", msg.events, true);
    if (msg.node_events) renderEvents("node-events", msg.node_events, false);
    if (msg.node_replicas) fillTable("node-replicas", msg.node_replicas.map((r) => el("tr", { "data-replica": r.name }, [
      el("td", {}, [el("a", { href: replicaHref(r.namespace, r.name), text: r.name })]),
      el("td", {}, [el("a", { href: "/namespaces/" + encodeURIComponent(r.namespace) + "/deployments/" + encodeURIComponent(r.deployment) + "/", text: r.namespace + "/" + r.deployment })]),
      badge(r.phase), td(r.message, { class: "muted" }),
    ])), "No replicas on this node.", 4);
  }

  // A list's "1–100 of 250 nodes" (templates/_pager.html), as the page's rows change.
  function renderPager(p) {
    const range = document.getElementById("pager-range");
    if (!p || !range) return;
    const what = range.dataset.what;
    range.textContent = p.count ? p.first + "–" + p.last + " of " + p.count + " " + what : "no " + what;
  }

  // An events feed (newest first): type, reason, object, message, count, time.
  function renderEvents(id, events, withObject) {
    const list = document.getElementById(id);
    if (!list) return;
    list.replaceChildren(...(events.length ? events.map((e) => el("li", { class: e.type, "data-reason": e.reason }, [
      el("time", { text: new Date(e.last_seen).toLocaleTimeString(), datetime: e.last_seen }), document.createTextNode(" "),
      el("b", { text: e.reason }),
      document.createTextNode(" " + (withObject ? e.kind + "/" + e.name + ": " : "") + e.message + (e.count > 1 ? " (×" + e.count + ")" : "")),
      ...(e.actor ? [document.createTextNode(" "), el("span", { class: "muted", text: "by " + e.actor })] : []),
    ])) : [el("li", { class: "muted", text: "No events." })]));
  }
  const replicaHref = (ns, name) => "/namespaces/" + encodeURIComponent(ns) + "/replicas/" + encodeURIComponent(name) + "/";

  // The node page (body[data-node]) listens to the cluster snapshot and redraws the node's
  // state; the forms are left alone so that nothing being typed is lost.
  function renderNode(n) {
    if (!n) { location.href = "/nodes/"; return; }  // removed
    const status = document.getElementById("node-status");
    if (status) { status.className = "badge " + n.status; status.textContent = n.status; status.title = n.status_message; }
    setText("#node-status-reason", n.status_reason || "—");
    setText("#node-status-message", n.status_message);
    setText("#node-scheduling", n.unschedulable ? "cordoned: no new replicas are placed here" : "replicas may be placed here");
    show("node-cordoned", n.unschedulable);
    show("cordon-form", !n.unschedulable);
    show("uncordon-form", n.unschedulable);
    show("delete-form", n.status !== "Ready");
    if (n.last_heartbeat) setText("#node-heartbeat", new Date(n.last_heartbeat).toLocaleString());
    const rows = { capacity: [n.capacity.cpu, n.capacity.memory], allocatable: [n.allocatable.cpu, n.allocatable.memory] };
    for (const [row, [cpu, memory]] of Object.entries(rows)) {
      const cells = document.querySelectorAll("#node-resources tr[data-row=" + row + "] td");
      if (cells.length === 3) { cells[1].textContent = cpu + "m"; cells[2].textContent = formatBytes(memory); }
    }
    const reserved = document.querySelectorAll("#node-resources tr[data-row=reserved] td");
    if (reserved.length === 3) { reserved[1].textContent = n.reserved.cpu; reserved[2].textContent = n.reserved.memory; }
    fillTable("node-labels", Object.keys(n.labels).sort().map((k) => {
      const user = Object.prototype.hasOwnProperty.call(n.user_labels, k);
      const agent = Object.prototype.hasOwnProperty.call(n.agent_labels, k);
      const from = user ? "user" + (agent ? " (agent said " + (n.agent_labels[k] || '""') + ")" : "") : "agent";
      return el("tr", { "data-label": k }, [el("td", {}, [el("code", { text: k })]), el("td", {}, [el("code", { text: n.labels[k] })]), td(from, { class: "muted" })]);
    }), "No labels.", 3);
    const taints = document.getElementById("node-taints");
    if (taints) taints.replaceChildren(...(n.taints.length
      ? n.taints.map((t) => el("li", {}, [el("code", { text: t.key + (t.value ? "=" + t.value : "") + ":" + t.effect })]))
      : [el("li", { class: "muted", text: "No taints." })]));
  }

  function renderDeployment(msg) {
    const d = msg.deployment;
    setText("#ready-count", d.status.ready_replicas);
    setText("#desired-count", d.replicas);
    const conditions = document.getElementById("conditions");
    if (conditions) conditions.replaceChildren(...d.status.conditions.map((c) => el("li", {}, [
      el("b", { text: c.type }), document.createTextNode(" " + c.status + " "),
      el("span", { class: "muted", text: c.reason + (c.message ? ": " + c.message : "") }),
    ])));
    const revisions = msg.revisions || [];
    const numberOf = {};
    revisions.forEach((rev) => { if (!(rev.hash in numberOf) || rev.current) numberOf[rev.hash] = rev.revision; });
    const current = revisions.find((rev) => rev.current);
    const old = msg.old_replicas;  // counted over all its replicas, not the page shown
    setText("#rollout-revision", d.status.revision);
    setText("#rollout-updated", d.status.updated_replicas);
    setText("#rollout-available", d.status.available_replicas);
    setText("#rollout-old", old);
    const progress = document.getElementById("rollout-progress");
    if (progress) { progress.max = Math.max(d.replicas, 1); progress.value = d.status.updated_replicas; }
    const paused = document.getElementById("rollout-paused");
    if (paused) paused.hidden = !d.paused;
    const pauseButton = document.getElementById("pause-button");
    if (pauseButton) {
      pauseButton.textContent = d.paused ? "Resume rollout" : "Pause rollout";
      pauseButton.form.querySelector("input[name=paused]").value = d.paused ? "false" : "true";
    }
    fillTable("replicas-table", msg.replicas.map((r) => el("tr", { "data-replica": r.name }, [
      el("td", {}, [el("a", { href: replicaHref(d.namespace, r.name), text: r.name })]), td(r.node || "—"), badge(r.phase), td(r.ready ? "yes" : "no", { "data-ready": "" }),
      td(current && r.revision === current.hash ? String(current.revision) : (numberOf[r.revision] ? "old (" + numberOf[r.revision] + ")" : "old"), { class: current && r.revision === current.hash ? "" : "muted" }),
      td(r.restart_count + (r.last_exit_code !== null && r.last_exit_code !== undefined ? " (last exit " + r.last_exit_code + ")" : "")),
      el("td", {}, [el("code", { text: (r.container_id || "").slice(0, 12) })]), td(r.message, { class: "muted" }),
    ])), "No replicas.", 8);
    const revTable = document.getElementById("revisions-table");
    if (revTable) {
      const url = revTable.dataset.rollbackUrl;
      const csrf = document.querySelector("input[name=csrfmiddlewaretoken]");
      fillTable("revisions-table", revisions.map((rev) => el("tr", { "data-revision": rev.revision }, [
        el("td", {}, [document.createTextNode(String(rev.revision)), ...(rev.current ? [document.createTextNode(" "), el("span", { class: "badge Running", text: "current" })] : [])]),
        el("td", {}, [el("code", { text: rev.spec.image })]), td(rev.replicas),
        td(rev.change_cause + (rev.actor ? " · " + rev.actor : ""), { class: "muted" }),
        td(new Date(rev.created_at).toLocaleString(), { class: "muted" }),
        el("td", {}, rev.current || !csrf ? [] : [el("form", { method: "post", action: url, class: "inline" }, [
          el("input", { type: "hidden", name: "csrfmiddlewaretoken", value: csrf.value }),
          el("input", { type: "hidden", name: "revision", value: String(rev.revision) }),
          el("button", { type: "submit", text: "Roll back to " + rev.revision }),
        ])]),
      ])), "No revisions.", 6);
    }
    if (body.dataset.replica && "replica" in msg) renderReplica(msg.replica);
    renderPager(msg.pager);
    const events = document.getElementById("events");
    if (events) events.replaceChildren(...msg.events.map((e) => el("li", { class: e.type }, [
      el("time", { text: new Date(e.last_seen).toLocaleTimeString() }), document.createTextNode(" "),
      el("b", { text: e.reason }), document.createTextNode(" " + e.kind + "/" + e.name + ": " + e.message + (e.count > 1 ? " (×" + e.count + ")" : "")),
    ])));
  }

  // The replica page (body[data-replica]) listens to its deployment's snapshots.
  function renderReplica(r) {
    const phase = document.getElementById("replica-phase");
    if (!phase) return;
    if (!r) { phase.className = "badge"; phase.textContent = "Gone"; return; }
    phase.className = "badge " + r.phase; phase.textContent = r.phase;
    const node = document.getElementById("replica-node");
    if (node) node.replaceChildren(r.node ? el("a", { href: nodeHref(r.node), text: r.node }) : document.createTextNode("—"));
    setText("#replica-restarts", r.restart_count);
    setText("#replica-container", (r.container_id || "").slice(0, 12));
    setText("#replica-message", r.message);
  }

  let delay = 500;
  function connect() {
    const socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + path);
    socket.onopen = () => { delay = 500; if (dot) dot.classList.add("on"); body.dataset.liveState = "open"; };
    socket.onmessage = (event) => {
      const msg = JSON.parse(event.data);
      if (msg.type === "cluster") renderCluster(msg);
      else if (msg.type === "deployment") renderDeployment(msg);
      else if (msg.type === "deleted") { location.href = "/deployments/"; }
    };
    socket.onclose = () => {
      if (dot) dot.classList.remove("on");
      body.dataset.liveState = "closed";
      setTimeout(connect, delay + Math.random() * delay);  // back off, with jitter
      delay = Math.min(delay * 2, 15000);
    };
  }
  connect();
})();
