// The web terminal (templates/replicas/_terminal.html): xterm.js over one WebSocket to
// docker exec with a TTY, through the node's agent. Keystrokes (Ctrl-C included) go as
// they are; the TTY in the container turns them into signals.
(function () {
  "use strict";
  function setup(card) {
    const form = card.querySelector("[data-terminal-form]");
    const holder = card.querySelector("[data-terminal]");
    const state = card.querySelector("[data-terminal-state]");
    const closeButton = card.querySelector("[data-terminal-close]");
    let socket = null, term = null, fit = null;

    function finish(text) {
      state.textContent = text;
      form.querySelector("[data-terminal-open]").hidden = false;
      closeButton.hidden = true;
      card.dataset.state = "closed";
    }

    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (socket) socket.close();
      holder.replaceChildren();
      term = new Terminal({ cursorBlink: true, fontSize: 13, convertEol: false, scrollback: 5000 });
      fit = new FitAddon.FitAddon();
      term.loadAddon(fit);
      term.open(holder);
      fit.fit();
      window.berthTerminal = term;  // for people debugging in the console, and for tests
      const ws = socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + card.dataset.terminalWs);
      state.textContent = "connecting…";
      ws.onopen = () => ws.send(JSON.stringify({ type: "open", shell: form.querySelector("[data-terminal-shell]").value, cols: term.cols, rows: term.rows }));
      ws.onmessage = (e) => {
        const msg = JSON.parse(e.data);
        if (msg.type === "output") term.write(msg.data);
        else if (msg.type === "started") { state.textContent = "connected"; card.dataset.state = "open"; term.focus(); }
        else if (msg.type === "exit") { term.write("\r\n[" + (msg.error ? msg.error : "exited with code " + msg.code) + "]\r\n"); }
        else if (msg.type === "error") term.write("\r\n[" + msg.message + "]\r\n");
      };
      ws.onclose = () => { if (socket === ws) finish("closed"); };
      term.onData((data) => { if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "input", data: data })); });
      term.onResize(({ cols, rows }) => { if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "resize", cols: cols, rows: rows })); });
      form.querySelector("[data-terminal-open]").hidden = true;
      closeButton.hidden = false;
    });
    closeButton.addEventListener("click", () => { if (socket) socket.close(); });
    window.addEventListener("resize", () => { if (fit && term) fit.fit(); });
  }
  document.querySelectorAll("[data-terminal-ws]").forEach(setup);
})();
