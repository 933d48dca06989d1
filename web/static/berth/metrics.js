// Live charts (templates/deployments/_metrics.html) with uPlot: the last 15 minutes from the
// metrics socket, then one point per sample. One series per label (the node, or each replica).
(function () {
  "use strict";
  const WINDOW = 15 * 60;
  const COLOURS = ["#2457d6", "#c2185b", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#8d6e63", "#5c6bc0"];
  const VALUE = {
    cpu: (p) => p.cpu,
    mem: (p) => (p.mem == null ? null : p.mem / 1048576),
    net: (p) => (p.rx == null || p.tx == null ? null : (p.rx + p.tx) / 1024),
    io: (p) => (p.rd == null || p.wr == null ? null : (p.rd + p.wr) / 1024),
  };

  function setup(card) {
    const series = {};  // label -> [points]
    const charts = {};
    const empty = card.querySelector("[data-metrics-empty]");
    let delay = 1000;

    function draw() {
      const now = Date.now() / 1000;
      const labels = Object.keys(series).sort();
      for (const label of labels) series[label] = series[label].filter((p) => p.t >= now - WINDOW);
      const times = Array.from(new Set(labels.flatMap((l) => series[l].map((p) => Math.round(p.t))))).sort((a, b) => a - b);
      const count = labels.reduce((n, l) => n + series[l].length, 0);
      card.dataset.points = String(count);
      empty.hidden = count > 0;
      for (const holder of card.querySelectorAll("[data-chart]")) {
        const kind = holder.dataset.chart;
        const data = [times, ...labels.map((l) => {
          const at = new Map(series[l].map((p) => [Math.round(p.t), VALUE[kind](p)]));
          return times.map((t) => (at.has(t) ? at.get(t) : null));
        })];
        const key = labels.join(",");
        if (!charts[kind] || charts[kind].key !== key) {
          if (charts[kind]) charts[kind].plot.destroy();
          holder.replaceChildren();
          const opts = {
            title: holder.dataset.title, width: Math.max(holder.clientWidth, 280), height: 160,
            scales: { x: { time: true } }, spanGaps: true,
            series: [{}, ...labels.map((l, i) => ({ label: l, stroke: COLOURS[i % COLOURS.length], width: 1.5 }))],
            axes: [{}, { size: 50 }],
          };
          charts[kind] = { key: key, plot: new uPlot(opts, data, holder) };
        } else {
          charts[kind].plot.setData(data);
        }
      }
    }

    function connect() {
      const socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + card.dataset.metricsWs);
      socket.onopen = () => { delay = 1000; socket.send(JSON.stringify({ type: "subscribe" })); };
      socket.onmessage = (event) => {
        const msg = JSON.parse(event.data);
        if (msg.type === "series") { for (const k of Object.keys(series)) delete series[k]; Object.assign(series, msg.series); draw(); }
        else if (msg.type === "points") {
          for (const [label, point] of Object.entries(msg.points)) {
            const list = series[label] || (series[label] = []);
            if (!list.length || list[list.length - 1].t < point.t) list.push(point);
          }
          draw();
        }
      };
      socket.onclose = () => { setTimeout(connect, delay); delay = Math.min(delay * 2, 15000); };
    }
    connect();
  }
  document.querySelectorAll("[data-metrics-ws]").forEach(setup);
})();
