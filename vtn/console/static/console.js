/* The event page: its chart (uPlot, served by the VTN) and the VENs' answers, refreshed every few
   seconds without reloading the page. Times are drawn in the site's time zone, not the browser's. */
(function () {
  "use strict";
  const REFRESH_MS = 5000;

  function seconds(iso) { return Date.parse(iso) / 1000; }

  function steps(intervals, value) {
    // [start, v], [end, v] pairs per interval: a stepped line that ends with the last interval
    const points = [];
    for (const i of intervals) {
      points.push([seconds(i.start), value(i)]);
      points.push([seconds(i.end || i.start) , value(i)]);
    }
    return points;
  }

  function table(seriesList) {
    // uPlot wants one x array and one y array per series, aligned (null where a series has no point)
    const xs = Array.from(new Set(seriesList.flatMap(s => s.points.map(p => p[0])))).sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const ys = seriesList.map(s => {
      const column = new Array(xs.length).fill(null);
      for (const [x, y] of s.points) column[index.get(x)] = y;
      return column;
    });
    return [xs, ...ys];
  }

  function build(data) {
    const list = [];
    const palette = ["#0b6e4f", "#2d5d86", "#8a5a00", "#6b3fa0", "#b3261e"];
    if (data.kind === "load_control") {
      const picture = data.picture || {series: {}, cap: []};
      Object.entries(picture.series).forEach(([ven, points], n) => {
        list.push({label: ven + " fleet power (kW)", color: palette[n % palette.length],
                   points: points.map(([at, kw]) => [seconds(at), kw]), stepped: false});
      });
      if (picture.cap.length) {
        list.push({label: "cap (kW)", color: "#b3261e", dash: [6, 4], stepped: true,
                   points: steps(picture.cap, i => i.cap_kw)});
      }
    } else {
      const intervals = data.intervals.map(i => ({start: i.start,
        end: new Date(Date.parse(i.start) + i.duration_s * 1000).toISOString(), value: i.value}));
      list.push({label: "price (" + data.unit + ")", color: "#2d5d86", stepped: true,
                 points: steps(intervals, i => i.value)});
    }
    return list;
  }

  let plot = null;
  const hhmm = uPlotFormat("{HH}:{mm}");

  function uPlotFormat(template) {
    return typeof uPlot !== "undefined" ? uPlot.fmtDate(template) : (d => d.toISOString());
  }

  function draw(box, data) {
    const list = build(data);
    if (!list.length || !list.some(s => s.points.length)) {
      box.textContent = "No readings yet: the VENs' TELEMETRY_USAGE reports appear here.";
      return;
    }
    const width = Math.max(280, box.clientWidth || 600);
    const options = {
      width: width, height: 280,
      tzDate: ts => uPlot.tzDate(new Date(ts * 1000), data.timezone),
      scales: {x: {time: true}},
      series: [{label: "time"}].concat(list.map(s => ({
        label: s.label, stroke: s.color, width: 2, spanGaps: true, dash: s.dash,
        paths: s.stepped ? uPlot.paths.stepped({align: 1}) : undefined,
        points: {show: !s.stepped},
      }))),
      // 24-hour site time on the time axis (uPlot's default is 12-hour, in the browser's zone)
      axes: [{values: (u, splits) => splits.map(ts => hhmm(options.tzDate(ts)))},
             {label: data.kind === "load_control" ? "kW" : data.unit}],
    };
    const values = table(list);
    if (plot && plot.series.length === options.series.length) {
      plot.setData(values);
    } else {
      if (plot) plot.destroy();
      box.textContent = "";
      plot = new uPlot(options, values, box);
    }
    box.dataset.drawn = String(values[0].length);
  }

  async function refreshChart(box) {
    try {
      const answer = await fetch(box.dataset.src, {credentials: "same-origin"});
      if (answer.ok) draw(box, await answer.json());
    } catch (e) { /* the next round tries again */ }
  }

  async function refreshVens(box) {
    try {
      const answer = await fetch(box.dataset.src, {credentials: "same-origin"});
      if (!answer.ok) return;
      const html = new DOMParser().parseFromString(await answer.text(), "text/html");
      const fresh = html.getElementById("vens-sent");
      const old = document.getElementById("vens-sent");
      if (fresh && old && fresh.innerHTML !== old.innerHTML) old.replaceWith(fresh);
    } catch (e) { /* the next round tries again */ }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const chart = document.getElementById("chart");
    const vens = document.getElementById("vens-sent-box");
    if (chart && typeof uPlot !== "undefined") {
      refreshChart(chart);
      setInterval(() => refreshChart(chart), REFRESH_MS);
      window.addEventListener("resize", () => { if (plot) plot.setSize({width: Math.max(280, chart.clientWidth), height: 280}); });
    }
    if (vens) setInterval(() => refreshVens(vens), REFRESH_MS);
  });
})();
