// Live logs (templates/deployments/_logs.html): one WebSocket per log view. Lines arrive as
// [replica, time, stream, text]; [null, null, "dropped", N] marks lines this view was too
// slow for. After a blip the view reconnects with, per replica, the time of the last line
// it has: the server resumes there and leaves out what was already shown.
(function () {
  "use strict";
  const MAX_LINES = 5000;
  const PALETTE = ["#2457d6", "#c2185b", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#8d6e63", "#5c6bc0", "#d81b60", "#558b2f"];

  function colourOf(name, names) {
    const i = names.indexOf(name);
    if (i >= 0 && names.length <= PALETTE.length) return PALETTE[i];
    let h = 0; for (const c of name) h = (h * 31 + c.charCodeAt(0)) >>> 0;
    return PALETTE[h % PALETTE.length];
  }

  function setup(card) {
    const path = card.dataset.logsWs;
    const box = card.querySelector("[data-logs-lines]");
    const state = card.querySelector("[data-logs-state]");
    const error = card.querySelector("[data-logs-error]");
    const q = (name) => card.querySelector("[data-logs-" + name + "]");
    const cursors = {};
    let names = [], socket = null, delay = 500, closedByUs = false;

    const matches = (line) => { const f = q("filter").value; return !f || line.textContent.includes(f); };
    function render(entries) {
      const follow = q("follow").checked;
      const frag = document.createDocumentFragment();
      for (const [replica, time, stream, text] of entries) {
        const line = document.createElement("div");
        if (stream === "dropped") {
          line.className = "line dropped"; line.textContent = "[… " + text + " lines dropped]";
        } else {
          if (time && !(cursors[replica] > time)) cursors[replica] = time; // the newest: stdout and stderr may interleave out of order
          line.className = "line " + stream;
          line.dataset.replica = replica; line.dataset.time = time || "";
          const ts = document.createElement("span"); ts.className = "ts"; ts.textContent = time ? time.replace("T", " ").slice(0, 23) + " " : "";
          line.appendChild(ts);
          if (names.length > 1 || !card.dataset.logsName || card.dataset.logsName !== replica) {
            const who = document.createElement("span"); who.className = "who"; who.textContent = replica + " ";
            who.style.color = colourOf(replica, names); line.appendChild(who);
          }
          const msg = document.createElement("span"); msg.className = "msg"; msg.textContent = text;
          line.appendChild(msg);
        }
        line.hidden = !matches(line);
        frag.appendChild(line);
      }
      box.appendChild(frag);
      while (box.childElementCount > MAX_LINES) box.firstElementChild.remove();
      if (follow) box.scrollTop = box.scrollHeight;
    }

    function subscribe(fresh) {
      const tail = q("tail").value;
      const message = { type: "subscribe", tail: tail === "" ? null : Number(tail), since: q("since").value.trim() || null, cursors: fresh ? {} : cursors };
      socket.send(JSON.stringify(message));
    }

    function connect() {
      socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + path);
      socket.onopen = () => { delay = 500; state.textContent = "live"; card.dataset.state = "open"; subscribe(false); };
      socket.onmessage = (event) => {
        const msg = JSON.parse(event.data);
        if (msg.type === "lines") render(msg.lines);
        else if (msg.type === "subscribed") { names = msg.replicas; error.hidden = true; }
        else if (msg.type === "error") { error.hidden = false; error.textContent = (msg.field ? msg.field + ": " : "") + msg.message; }
      };
      socket.onclose = () => {
        card.dataset.state = "closed";
        if (closedByUs) return;
        state.textContent = "reconnecting…";
        setTimeout(connect, delay + Math.random() * delay);
        delay = Math.min(delay * 2, 10000);
      };
    }

    q("apply").addEventListener("click", () => {
      for (const k of Object.keys(cursors)) delete cursors[k];
      box.replaceChildren();
      if (socket && socket.readyState === WebSocket.OPEN) subscribe(true);
    });
    q("filter").addEventListener("input", () => { for (const line of box.children) line.hidden = !matches(line); });
    q("timestamps").addEventListener("change", (e) => card.classList.toggle("with-timestamps", e.target.checked));
    q("download").addEventListener("click", () => {
      const text = Array.from(box.children).filter((l) => !l.hidden).map((l) => l.textContent).join("\n") + "\n";
      const link = document.createElement("a");
      link.href = URL.createObjectURL(new Blob([text], { type: "text/plain" }));
      link.download = (card.dataset.logsName || "logs") + ".log";
      link.click();
      setTimeout(() => URL.revokeObjectURL(link.href), 1000);
    });
    window.addEventListener("beforeunload", () => { closedByUs = true; });
    connect();
  }

  document.querySelectorAll("[data-logs-ws]").forEach(setup);
})();
