/* headwater dashboard: draws every chart of the page with ECharts from the rows the server
 * embedded in it (<script type="application/json" class="chart-data"> in each .chart-card:
 * {spec: {kind, x, y, series, value, low, high, label, stack}, rows: [...], columns: [...]}),
 * and on a live page keeps them current from the server-sent events of data-events-url.
 * window.headwater.charts[key] = {card, spec, rows, columns, chart}: what each card shows. */
(function () {
  "use strict";
  const charts = {};
  window.headwater = { charts: charts, updates: 0 };

  const num = (v) => (v === null || v === undefined || v === "" ? null : Number(v));
  const pct = (v) => (v === null || v === undefined ? "" : (100 * v).toFixed(v < 0.1 ? 1 : 0) + "%");
  const isTime = (v) => typeof v === "string" && /^\d{4}-\d\d-\d\dT\d\d:\d\d/.test(v);
  const shortX = (v) => (isTime(v) ? v.slice(11, 16) : v); // per-minute axes: HH:MM (UTC)

  function uniq(values) {
    const seen = new Map();
    values.forEach((v) => { if (!seen.has(String(v))) seen.set(String(v), v); });
    return Array.from(seen.values());
  }

  function sorted(values) {
    return values.every((v) => typeof v === "number") ? values.sort((a, b) => a - b) : values.sort();
  }

  function lineBar(spec, rows) {
    const xs = uniq(rows.map((r) => r[spec.x]));
    const at = new Map(xs.map((x, i) => [String(x), i]));
    const column = (name, filter, key) => {
      const data = xs.map(() => null);
      rows.filter(filter).forEach((r) => { data[at.get(String(r[spec.x]))] = num(r[key]); });
      return data;
    };
    let series;
    if (spec.series) {
      series = uniq(rows.map((r) => r[spec.series])).map((name) => {
        const mine = (r) => String(r[spec.series]) === String(name);
        return { name: String(name), data: column(name, mine, spec.y[0]), labels: spec.label ? column(name, mine, spec.label) : null };
      });
    } else {
      series = spec.y.map((y) => ({ name: y, data: column(y, () => true, y), labels: spec.label ? column(y, () => true, spec.label) : null }));
    }
    return {
      tooltip: { trigger: "axis" },
      legend: { type: "scroll", top: 0 },
      grid: { left: 10, right: 20, top: 36, bottom: 10, containLabel: true },
      xAxis: { type: "category", data: xs.map(String), axisLabel: { formatter: shortX } },
      yAxis: { type: "value" },
      series: series.map((s) => ({
        name: s.name, type: spec.kind, data: s.data, stack: spec.stack ? "total" : undefined,
        showSymbol: xs.length < 40, emphasis: { focus: "series" },
        label: s.labels ? { show: true, position: "top", formatter: (p) => pct(s.labels[p.dataIndex]) } : undefined,
      })),
    };
  }

  function heatmap(spec, rows) {
    const xs = sorted(uniq(rows.map((r) => r[spec.x])));
    const ys = sorted(uniq(rows.map((r) => r[spec.y[0]])));
    const xi = new Map(xs.map((x, i) => [String(x), i]));
    const yi = new Map(ys.map((y, i) => [String(y), i]));
    const data = rows.map((r) => [xi.get(String(r[spec.x])), yi.get(String(r[spec.y[0]])), num(r[spec.value])]);
    const max = Math.max(0, ...data.map((d) => d[2] || 0));
    const share = max <= 1;
    return {
      tooltip: { position: "top", formatter: (p) => `${spec.y[0]} ${ys[p.value[1]]}, ${spec.x} ${xs[p.value[0]]}: ${share ? pct(p.value[2]) : p.value[2]}` },
      grid: { left: 10, right: 20, top: 10, bottom: 80, containLabel: true },
      xAxis: { type: "category", data: xs.map(String), name: spec.x, nameLocation: "middle", nameGap: 26, splitArea: { show: true } },
      yAxis: { type: "category", data: ys.map(String), inverse: true, splitArea: { show: true } },
      visualMap: { min: 0, max: share ? 1 : max, calculable: true, orient: "horizontal", left: "center", bottom: 0,
                   inRange: { color: ["#eff6ff", "#1d4ed8"] } },
      series: [{ type: "heatmap", name: spec.value, data: data,
                 label: { show: xs.length <= 16 && ys.length <= 35, fontSize: 10, formatter: (p) => (share ? pct(p.value[2]) : p.value[2]) } }],
    };
  }

  function interval(spec, rows) {
    const xs = rows.map((r) => String(r[spec.x]));
    const ends = rows.map((r, i) => [i, num(r[spec.low]), num(r[spec.high])]);
    const errorBar = (params, api) => {
      const [lowV, highV] = [api.value(1), api.value(2)];
      if (isNaN(lowV) || isNaN(highV)) return null;
      const low = api.coord([api.value(0), lowV]);
      const high = api.coord([api.value(0), highV]);
      const w = api.size([1, 0])[0] * 0.12;
      const style = { stroke: "#1f2430", lineWidth: 1.5 };
      return { type: "group", children: [
        { type: "line", shape: { x1: low[0], y1: low[1], x2: high[0], y2: high[1] }, style: style },
        { type: "line", shape: { x1: low[0] - w, y1: low[1], x2: low[0] + w, y2: low[1] }, style: style },
        { type: "line", shape: { x1: high[0] - w, y1: high[1], x2: high[0] + w, y2: high[1] }, style: style },
      ] };
    };
    return {
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" } },
      legend: { top: 0 },
      grid: { left: 10, right: 20, top: 36, bottom: 10, containLabel: true },
      xAxis: { type: "category", data: xs },
      yAxis: { type: "value", scale: true },
      series: [
        { type: "custom", name: `${spec.low} .. ${spec.high}`, renderItem: errorBar, data: ends, encode: { x: 0, y: [1, 2] }, z: 1 },
        { type: "scatter", name: spec.y[0], data: rows.map((r) => num(r[spec.y[0]])), symbolSize: 12, z: 2,
          markLine: { silent: true, symbol: "none", data: [{ yAxis: 0 }], lineStyle: { type: "dashed", color: "#98a2b3" } } },
      ],
    };
  }

  const STATUS = { fail: "#d92d20", warn: "#f79009", pass: "#12b76a" }; // data-quality results

  const OPTIONS = { line: lineBar, bar: lineBar, heatmap: heatmap, interval: interval };

  function fillTable(card, columns, rows) {
    const table = card.querySelector("details.numbers table");
    if (!table) return;
    const cols = columns.length ? columns : Object.keys(rows[0] || {});
    const head = document.createElement("tr");
    cols.forEach((c) => { const th = document.createElement("th"); th.textContent = c; head.appendChild(th); });
    table.tHead.replaceChildren(head);
    table.tBodies[0].replaceChildren(...rows.map((r) => {
      const tr = document.createElement("tr");
      cols.forEach((c) => { const td = document.createElement("td"); td.textContent = r[c] === null || r[c] === undefined ? "" : r[c]; tr.appendChild(td); });
      return tr;
    }));
  }

  function update(inst, rows, redrawTable) {
    inst.rows = rows;
    const spec = inst.spec;
    if (spec.kind === "stat") {
      const el = inst.card.querySelector(".stat");
      const v = rows.length ? rows[0][spec.value] : null;
      if (!el) return;
      el.dataset.value = v === null || v === undefined ? "" : v;
      el.textContent = v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US");
      return;
    }
    const empty = inst.card.querySelector(".empty");
    if (empty) empty.hidden = rows.length > 0;
    if (redrawTable) fillTable(inst.card, inst.columns, rows);
    const el = inst.card.querySelector(".chart");
    if (!el || !OPTIONS[spec.kind]) return;
    el.hidden = rows.length === 0;
    if (!rows.length) return;
    if (!inst.chart) inst.chart = echarts.init(el);
    const option = OPTIONS[spec.kind](spec, rows);
    (option.series || []).forEach((s) => { if (STATUS[s.name]) s.itemStyle = { color: STATUS[s.name] }; });
    inst.chart.setOption(option, { notMerge: true });
  }

  document.querySelectorAll(".chart-card").forEach((card) => {
    const data = card.querySelector("script.chart-data");
    if (!data) return;
    const payload = JSON.parse(data.textContent);
    const inst = { card: card, spec: payload.spec, rows: [], columns: payload.columns, chart: null };
    charts[card.dataset.key] = inst;
    update(inst, payload.rows, false);
  });
  window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.chart && c.chart.resize()));

  const status = document.getElementById("live-status");
  if (status) {
    const source = new EventSource(status.dataset.eventsUrl);
    source.addEventListener("live", (event) => {
      const payload = JSON.parse(event.data);
      Object.entries(payload.charts).forEach(([key, c]) => { if (charts[key] && !c.error) update(charts[key], c.rows, true); });
      window.headwater.updates += 1;
      status.textContent = "live · updated " + new Date().toLocaleTimeString();
      status.className = "status ok";
    });
    source.addEventListener("denied", (event) => { // the token was revoked: stop, say why
      source.close();
      status.textContent = JSON.parse(event.data).message + " (log in again)";
      status.className = "status down";
    });
    source.onerror = () => { if (source.readyState !== EventSource.CLOSED) { status.textContent = "reconnecting…"; status.className = "status down"; } };
  }
})();
