// study.html: the table (sortable by any column, filtered by text) and the plots, drawn from the inline JSON.
// Everything written from the data goes through textContent or setAttribute, never through HTML.
"use strict";
(function () {
  const started = performance.now();
  const data = JSON.parse(document.getElementById("study-data").textContent);
  const rows = data.rows;
  const columns = data.columns;
  const SVG = "http://www.w3.org/2000/svg";
  const state = {sort: null, descending: false, query: "", marked: false, page: 0, all: false};
  const tips = {};  // per plot: its points' rows and hover texts, found from a point's data-p
  const byId = (id) => document.getElementById(id);

  function element(tag, attributes, text) {
    const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }
  const fixed = (value, digits) => (value === null || value === undefined ? "" : value.toFixed(digits));
  const signed = (value, digits) => (value === null || value === undefined ? "" : (value > 0 ? "+" : "") + value.toFixed(digits));
  const firstPage = (row) => row.pages.native || row.pages.onnx || row.pages.diagnose || null;

  // --- the table ------------------------------------------------------------------------------------------
  function cell(row, column) {
    const td = element("td", {class: column.kind});
    const value = row[column.key];
    if (column.key === "marks") {
      td.textContent = row.marks.map((mark) => data.marks[mark].symbol).join(" ");
      td.title = row.marks.map((mark) => data.marks[mark].title).join("; ");
    } else if (column.key === "short") {
      const page = firstPage(row);
      const name = page ? element("a", {href: page}, row.short) : element("span", {}, row.short);
      name.title = row.model;
      td.append(name);
      for (const run of ["native", "onnx", "diagnose"]) {
        if (row.pages[run]) td.append(" ", element("a", {href: row.pages[run], class: "run", title: run + " cell: " + row.model}, run[0].toUpperCase()));
      }
    } else if (column.key === "difference") {
      td.textContent = value === null ? "" : signed(value, 1) + " (" + signed(row.difference_lo, 1) + " to " + signed(row.difference_hi, 1) + ")";
    } else if (column.kind === "number") {
      td.textContent = fixed(value, column.digits);
    } else {
      td.textContent = value === null ? "" : value;
      if (row[column.key + "_title"]) td.title = row[column.key + "_title"];  // cause, variants: the whole text
    }
    return td;
  }

  function visibleRows() {
    const words = state.query.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = rows.filter((row) => words.every((word) => row.search.includes(word)) && (!state.marked || row.marks.length));
    if (state.sort !== null) {
      const column = columns[state.sort];
      const key = column.key === "marks" ? (row) => row.marks.length || null : (row) => row[column.key];
      const sign = state.descending ? -1 : 1;
      shown = shown.map((row, index) => [row, index]).sort(([a, i], [b, j]) => {
        const x = key(a), y = key(b);
        if (x === null || x === undefined || y === null || y === undefined) {
          return (x === null || x === undefined) - (y === null || y === undefined) || i - j;  // empty last
        }
        const order = typeof x === "number" ? x - y : String(x).localeCompare(String(y));
        return sign * order || i - j;
      }).map(([row]) => row);
    }
    return shown;
  }

  // The sorted, filtered rows, a page of them in the table (a thousand rows of DOM would make every redraw slow).
  function renderTable() {
    const shown = visibleRows();
    const size = state.all ? shown.length : data.page_size;
    const pages = Math.max(1, Math.ceil(shown.length / size));
    state.page = Math.min(state.page, pages - 1);
    const first = state.page * size;
    const body = element("tbody");
    for (const row of shown.slice(first, first + size)) {
      const tr = element("tr", {class: row.marks.join(" "), "data-model": row.model});
      for (const column of columns) tr.append(cell(row, column));
      body.append(tr);
    }
    byId("study-table").replaceChild(body, byId("study-table").tBodies[0]);
    const range = shown.length > size ? "rows " + (first + 1) + "-" + Math.min(first + size, shown.length) + " of " : "";
    byId("shown").textContent = range + shown.length + " of " + rows.length + " models shown";
    byId("previous").disabled = state.page === 0;
    byId("next").disabled = state.page >= pages - 1;
    byId("paging").hidden = shown.length <= data.page_size;
    byId("all").textContent = state.all ? "pages of " + data.page_size : "all rows";
    document.querySelectorAll("#study-table th").forEach((th, index) => {
      th.dataset.sorted = index === state.sort ? (state.descending ? "descending" : "ascending") : "";
    });
    return shown;
  }

  function buildHeader() {
    const tr = byId("study-table").tHead.rows[0];
    columns.forEach((column, index) => {
      const th = element("th", {title: column.title + " (click to sort)"}, column.label);
      th.addEventListener("click", () => {
        state.descending = state.sort === index ? !state.descending : false;
        state.sort = index;
        state.page = 0;
        update();
      });
      tr.append(th);
    });
  }

  // --- the plots ------------------------------------------------------------------------------------------
  function logTicks(lo, hi) {
    const out = [];
    for (let k = Math.floor(Math.log10(lo)); k <= Math.ceil(Math.log10(hi)); k++) {
      for (const m of hi / lo > 300 ? [1] : hi / lo > 5 ? [1, 2, 5] : [1, 1.5, 2, 3, 5, 7]) {
        const t = m * Math.pow(10, k);
        if (t >= lo && t <= hi) out.push(t);
      }
    }
    return out;
  }

  function ticks(lo, hi, count) {
    const span = hi - lo || 1;
    const step0 = Math.pow(10, Math.floor(Math.log10(span / count)));
    const step = [1, 2, 5, 10].map((m) => m * step0).find((s) => span / s <= count) || 10 * step0;
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9; t += step) out.push(+t.toFixed(10));
    return out;
  }

  // A plot frame: axes from `x` and `y` ({lo, hi, label, log}), returns the scales and the group to draw in.
  function frame(svgId, x, y, width, height, left) {
    const svg = byId(svgId);
    svg.replaceChildren();
    tips[svgId] = [];
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    const margin = {left: left || 56, right: 16, top: 12, bottom: 44};
    const w = width - margin.left - margin.right, h = height - margin.top - margin.bottom;
    const scale = (axis, size, flip) => (value) => {
      const [lo, hi, v] = axis.log ? [Math.log10(axis.lo), Math.log10(axis.hi), Math.log10(value)] : [axis.lo, axis.hi, value];
      const at = ((v - lo) / (hi - lo || 1)) * size;
      return flip ? size - at : at;
    };
    const sx = scale(x, w, false), sy = scale(y, h, true);
    const g = element("svg:g", {transform: "translate(" + margin.left + "," + margin.top + ")"});
    svg.append(g);
    g.append(element("svg:rect", {x: 0, y: 0, width: w, height: h, class: "frame"}));
    const xTicks = x.log ? logTicks(x.lo, x.hi) : ticks(x.lo, x.hi, 8);
    for (const t of xTicks) {
      g.append(element("svg:line", {x1: sx(t), x2: sx(t), y1: 0, y2: h, class: "grid"}));
      g.append(element("svg:text", {x: sx(t), y: h + 14, class: "tick", "text-anchor": "middle"}, String(+t.toPrecision(3))));
    }
    for (const t of y.none ? [] : ticks(y.lo, y.hi, 6)) {
      g.append(element("svg:line", {x1: 0, x2: w, y1: sy(t), y2: sy(t), class: "grid"}));
      g.append(element("svg:text", {x: -6, y: sy(t) + 4, class: "tick", "text-anchor": "end"}, String(+t.toPrecision(3))));
    }
    g.append(element("svg:text", {x: w / 2, y: h + 34, class: "label", "text-anchor": "middle"}, x.label));
    if (y.label) g.append(element("svg:text", {transform: "translate(" + (-(left || 56) + 14) + "," + h / 2 + ") rotate(-90)", class: "label", "text-anchor": "middle"}, y.label));
    return {g, sx, sy, w, h};
  }

  function extent(values, pad, floor) {
    const finite = values.filter((v) => v !== null && v !== undefined && isFinite(v));
    if (!finite.length) return [0, 1];
    let lo = Math.min(...finite), hi = Math.max(...finite);
    const room = (hi - lo || Math.abs(hi) || 1) * pad;
    lo -= room; hi += room;
    if (floor !== undefined) lo = Math.max(floor, lo);
    return [lo, hi];
  }

  // A point: its row and hover text kept in `tips` (the title is made when the pointer first reaches it, and a
  // click opens the row's page), so a plot of a thousand models stays a thousand elements.
  function mark(parent, row, shape, x, y, css, size, tip) {
    const r = size || 3.5;
    const node = shape === "circle" ? element("svg:circle", {cx: x, cy: y, r, class: css})
      : element("svg:rect", {x: x - r, y: y - r, width: 2 * r, height: 2 * r, class: css});
    const points = tips[parent.ownerSVGElement.id] || (tips[parent.ownerSVGElement.id] = []);
    node.dataset.p = points.length;
    points.push({row, tip});
    if (firstPage(row)) node.classList.add("linked");
    parent.append(node);
    return node;
  }

  function pointOf(event) {
    const svg = event.currentTarget, index = event.target.dataset ? event.target.dataset.p : undefined;
    return index === undefined ? null : [event.target, tips[svg.id][+index]];
  }

  function listen(svg) {
    svg.addEventListener("mouseover", (event) => {
      const found = pointOf(event);
      if (found && !found[0].firstChild) withTitle(found[0], found[1].tip);
    });
    svg.addEventListener("click", (event) => {
      const found = pointOf(event);
      if (found && firstPage(found[1].row)) location.href = firstPage(found[1].row);
    });
  }

  function withTitle(node, text) {
    node.append(element("svg:title", {}, text));
  }

  // Where a point's label fits beside it without covering a label already placed (null: nowhere; hover names it).
  function freeSpot(placed, x, y, width, bounds) {
    const spots = [[6, -4, "start"], [6, 12, "start"], [-6, -4, "end"], [-6, 12, "end"], [6, -16, "start"], [-6, 24, "end"]];
    for (const [dx, dy, anchor] of spots) {
      const box = {left: anchor === "start" ? x + dx : x + dx - width, top: y + dy - 11, width, height: 14};
      const inside = box.left >= 0 && box.left + box.width <= bounds.w && box.top >= 0 && box.top + box.height <= bounds.h;
      const clear = inside && placed.every((other) => box.left + box.width < other.left || other.left + other.width < box.left
        || box.top + box.height < other.top || other.top + other.height < box.top);
      if (clear) {
        placed.push(box);
        return {x: x + dx, y: y + dy, anchor};
      }
    }
    return null;
  }

  function errorsPlot(shown) {
    const points = shown.filter((row) => row.published !== null && row.reproduced !== null);
    byId("errors-count").textContent = points.length + " of " + shown.length + " shown models have both a published and a reproduced error";
    const [lo, hi] = extent(points.flatMap((row) => [row.published, row.reproduced_lo, row.reproduced_hi]), 0.05, 0);
    const {g, sx, sy, w, h} = frame("errors-plot", {lo, hi, label: "published top-1 error %"},
      {lo, hi, label: "reproduced top-1 error % (95 % interval)"}, 760, 520);
    g.append(element("svg:line", {x1: sx(lo), y1: sy(lo), x2: sx(hi), y2: sy(hi), class: "diagonal"}));
    const labels = element("svg:g");
    const placed = [];
    let labelled = 0;
    for (const row of points) {
      const outside = row.marks.includes("outside");
      g.append(element("svg:line", {x1: sx(row.published), x2: sx(row.published), y1: sy(row.reproduced_lo), y2: sy(row.reproduced_hi), class: outside ? "bar outside" : "bar"}));
      mark(g, row, "circle", sx(row.published), sy(row.reproduced), outside ? "native outside" : "native", 3.5,
        row.model + ": published " + row.published.toFixed(1) + " %, reproduced " + row.reproduced.toFixed(1) + " % (" + row.reproduced_lo.toFixed(1) + " to " + row.reproduced_hi.toFixed(1) + ")");
      const spot = outside && labelled < data.max_labels ? freeSpot(placed, sx(row.published), sy(row.reproduced), row.short.length * 6.7, {w, h}) : null;
      if (spot) {
        labelled += 1;
        const label = element("svg:text", {x: spot.x, y: spot.y, class: "point-label", "text-anchor": spot.anchor}, row.short);
        withTitle(label, row.model);
        labels.append(label);
      }
    }
    g.append(labels);
  }

  function speedPlot(shown) {
    const points = shown.filter((row) => row.reproduced !== null && (row.native_speed || row.onnx_speed));
    const speeds = points.flatMap((row) => [row.native_speed, row.onnx_speed]).filter((v) => v > 0);
    const errors = points.flatMap((row) => [row.reproduced, row.onnx_error]);
    const [ylo, yhi] = extent(errors, 0.05, 0);
    const xlo = speeds.length ? Math.min(...speeds) / 1.3 : 1, xhi = speeds.length ? Math.max(...speeds) * 1.3 : 10;
    const {g, sx, sy} = frame("speed-plot", {lo: xlo, hi: xhi, log: true, label: "images/s (the evaluation loop, data wait included; log scale)"},
      {lo: ylo, hi: yhi, label: "top-1 error %"}, 760, 420);
    for (const row of points) {
      const onnxError = row.onnx_error !== null ? row.onnx_error : row.reproduced;
      if (row.native_speed && row.onnx_speed) {
        g.append(element("svg:line", {x1: sx(row.native_speed), y1: sy(row.reproduced), x2: sx(row.onnx_speed), y2: sy(onnxError), class: "pair"}));
      }
      if (row.native_speed) mark(g, row, "circle", sx(row.native_speed), sy(row.reproduced), "native", 3.5, row.model + ": native, " + row.native_speed.toFixed(0) + " img/s");
      if (row.onnx_speed) mark(g, row, "square", sx(row.onnx_speed), sy(onnxError), row.marks.includes("onnx") ? "onnx differs" : "onnx", 3, row.model + ": ONNX Runtime, " + row.onnx_speed.toFixed(0) + " img/s");
    }
  }

  // For a few models: one line each, the native error with its interval, the published number, ONNX Runtime's
  // error just below (so that no marker hides another), the short name on the left and the full id on hover.
  function perModelPlot(shown) {
    const box = byId("per-model");
    box.hidden = shown.length > data.per_model_limit;
    if (box.hidden) return;
    const values = shown.flatMap((row) => [row.published, row.reproduced_lo, row.reproduced_hi, row.onnx_error]);
    const [lo, hi] = extent(values, 0.05, 0);
    const height = 22 * Math.max(shown.length, 1) + 60;
    const {g, sx} = frame("per-model-plot", {lo, hi, label: "top-1 error %"}, {none: true}, 760, height, 190);
    shown.forEach((row, index) => {
      const y = 22 * index + 14;
      const name = element("svg:text", {x: -8, y: y + 4, class: "tick", "text-anchor": "end"}, row.short);
      withTitle(name, row.model);
      g.append(name);
      if (row.reproduced !== null) {
        g.append(element("svg:line", {x1: sx(row.reproduced_lo), x2: sx(row.reproduced_hi), y1: y - 3, y2: y - 3, class: "bar"}));
        mark(g, row, "circle", sx(row.reproduced), y - 3, "native", 3.5, row.model + ": native " + row.reproduced.toFixed(1) + " %");
      }
      if (row.published !== null) {
        const tick = element("svg:line", {x1: sx(row.published), x2: sx(row.published), y1: y - 10, y2: y + 4, class: "published"});
        withTitle(tick, row.model + ": published " + row.published.toFixed(1) + " %");
        g.append(tick);
      }
      if (row.onnx_error !== null) mark(g, row, "square", sx(row.onnx_error), y + 5, "onnx", 3, row.model + ": ONNX Runtime " + row.onnx_error.toFixed(1) + " %");
    });
  }

  // --- state in the address (#q=...&sort=...&desc&marked), so a filtered, sorted view can be shared -------------
  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    state.query = params.get("q") || "";
    const sort = columns.findIndex((column) => column.key === params.get("sort"));
    state.sort = sort >= 0 ? sort : null;
    state.descending = params.has("desc");
    state.marked = params.has("marked");
    byId("filter").value = state.query;
    byId("marked").checked = state.marked;
  }

  function writeHash() {
    const params = new URLSearchParams();
    if (state.query) params.set("q", state.query);
    if (state.sort !== null) params.set("sort", columns[state.sort].key);
    if (state.descending) params.set("desc", "");
    if (state.marked) params.set("marked", "");
    history.replaceState(null, "", params.toString() ? "#" + params.toString() : location.pathname);
  }

  let plotted = null;  // the filter the plots were drawn for: sorting and paging leave them as they are

  function update() {
    const shown = renderTable();
    const filter = state.query + "|" + state.marked;
    if (filter !== plotted) {
      plotted = filter;
      errorsPlot(shown);
      speedPlot(shown);
      perModelPlot(shown);
    }
    writeHash();
  }

  buildHeader();
  readHash();
  byId("filter").addEventListener("input", (event) => { state.query = event.target.value; state.page = 0; update(); });
  byId("marked").addEventListener("change", (event) => { state.marked = event.target.checked; state.page = 0; update(); });
  byId("previous").addEventListener("click", () => { state.page -= 1; update(); });
  byId("next").addEventListener("click", () => { state.page += 1; update(); });
  byId("all").addEventListener("click", () => { state.all = !state.all; state.page = 0; update(); });
  ["errors-plot", "speed-plot", "per-model-plot"].forEach((id) => listen(byId(id)));
  window.addEventListener("hashchange", () => { readHash(); update(); });
  update();
  document.body.dataset.renderMs = (performance.now() - started).toFixed(1);
})();
