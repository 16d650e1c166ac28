// Tether dashboard: the two timeline charts, plain SVG.
'use strict';

(function () {
  const T = window.Tether;
  const LANES = T.STATES; // worst first, top to bottom
  const H = 156;

  function clear(n) { while (n.firstChild) n.removeChild(n.firstChild); }

  // frame sizes the SVG to its box and returns its width.
  function frame(svgEl) {
    const w = Math.max(280, Math.floor(svgEl.getBoundingClientRect().width || 600));
    svgEl.setAttribute('viewBox', '0 0 ' + w + ' ' + H);
    return w;
  }

  function placeholder(svgEl, w, msg) {
    svgEl.append(T.svg('text', { x: w / 2, y: H / 2, 'text-anchor': 'middle', class: 'axis', text: msg }));
  }

  function timeAxis(svgEl, x, t0, t1, left, right, y) {
    const n = Math.max(1, Math.min(5, Math.floor((right - left) / 150)));
    for (let i = 0; i <= n; i++) {
      const t = t0 + (t1 - t0) * i / n;
      const anchor = i === 0 ? 'start' : i === n ? 'end' : 'middle';
      svgEl.append(T.svg('text', { x: x(t), y: y, 'text-anchor': anchor, class: 'axis', text: T.fmtClock(t, t1 - t0 < 10000) }));
    }
  }

  // timeline draws one lane per state: shaded while agents are in it
  // (darker = more of them), with a mark at every change into it.
  function timeline(svgEl, samples, events) {
    clear(svgEl);
    const w = frame(svgEl);
    if (samples.length < 2) { placeholder(svgEl, w, 'collecting samples…'); return; }
    const left = 84, right = w - 8, top = 4, bottom = H - 20;
    const laneH = (bottom - top) / LANES.length;
    const t0 = samples[0].t, t1 = samples[samples.length - 1].t;
    const span = Math.max(t1 - t0, 1);
    const x = t => left + (t - t0) / span * (right - left);
    const byT = new Map();
    for (const e of events) {
      if (!e.to) continue;
      const k = e.t + '|' + e.to;
      if (!byT.has(k)) byT.set(k, []);
      byT.get(k).push(e.agent);
    }
    const last = samples[samples.length - 1].counts || {};
    LANES.forEach((s, li) => {
      const y = top + li * laneH;
      svgEl.append(T.svg('rect', { x: left, y: y, width: right - left, height: laneH, class: li % 2 ? 'lane alt' : 'lane' }));
      svgEl.append(T.svg('text', { x: left - 6, y: y + laneH / 2 + 4, 'text-anchor': 'end', class: 'lane-label' }, T.svg('tspan', { text: s + ' ' }), T.svg('tspan', { class: 'lane-count', text: T.fmtInt(last[s] || 0) })));
      let max = 0;
      for (const p of samples) max = Math.max(max, (p.counts && p.counts[s]) || 0);
      if (max === 0) return;
      // Runs of equal count become one rect.
      let runStart = 0;
      for (let i = 1; i <= samples.length; i++) {
        const c0 = (samples[runStart].counts && samples[runStart].counts[s]) || 0;
        const ci = i < samples.length ? ((samples[i].counts && samples[i].counts[s]) || 0) : -1;
        if (ci === c0) continue;
        if (c0 > 0) {
          const xa = x(samples[runStart].t);
          const xb = i < samples.length ? x(samples[i].t) : right; // the last run lasts until now
          const r = T.svg('rect', { x: xa, y: y + 2, width: Math.max(xb - xa, 1.5), height: laneH - 4, class: 'fill-' + s, 'fill-opacity': (0.3 + 0.6 * c0 / max).toFixed(2) });
          r.append(T.svg('title', { text: T.fmtInt(c0) + ' ' + s + ' from ' + T.fmtClock(samples[runStart].t, true) }));
          svgEl.append(r);
        }
        runStart = i;
      }
    });
    // Marks of changes into each state.
    for (const p of samples) {
      if (!p.changes) continue;
      for (const [s, n] of Object.entries(p.changes)) {
        const li = LANES.indexOf(s);
        if (li < 0) continue;
        const y = top + li * laneH;
        const mark = T.svg('rect', { x: x(p.t) - 1.5, y: y, width: 3, height: laneH, class: 'mark mark-' + s });
        const who = byT.get(p.t + '|' + s) || [];
        const names = who.slice(0, 8).join(', ') + (who.length > 8 ? ', …' : '');
        mark.append(T.svg('title', { text: T.fmtClock(p.t, true) + ' — ' + T.fmtInt(n) + ' → ' + s + (names ? ': ' + names : '') }));
        svgEl.append(mark);
      }
    }
    timeAxis(svgEl, x, t0, t1, left, right, H - 5);
  }

  // niceMax rounds a maximum up to 1, 2 or 5 times a power of ten.
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  // latency draws the fleet's heartbeat RTT p50 and p99 over time.
  function latency(svgEl, samples) {
    clear(svgEl);
    const w = frame(svgEl);
    if (samples.length < 2) { placeholder(svgEl, w, 'collecting samples…'); return; }
    const left = 60, right = w - 8, top = 8, bottom = H - 20;
    const t0 = samples[0].t, t1 = samples[samples.length - 1].t;
    const span = Math.max(t1 - t0, 1);
    let max = 0;
    for (const p of samples) if (p.live > 0) max = Math.max(max, p.rtt_p99_ms || 0, p.rtt_p50_ms || 0);
    const ymax = niceMax(max * 1.1);
    const x = t => left + (t - t0) / span * (right - left);
    const y = v => bottom - Math.min(v, ymax) / ymax * (bottom - top);
    for (const f of [0, 0.5, 1]) {
      const v = ymax * f;
      svgEl.append(T.svg('line', { x1: left, x2: right, y1: y(v), y2: y(v), class: f === 0 ? 'axis-line' : 'grid-line' }));
      svgEl.append(T.svg('text', { x: left - 6, y: y(v) + 4, 'text-anchor': 'end', class: 'axis', text: T.fmtMs(v) + ' ms' }));
    }
    if (max === 0) {
      placeholder(svgEl, w, 'no RTT reported yet');
    }
    for (const [key, cls] of [['rtt_p99_ms', 'line-p99'], ['rtt_p50_ms', 'line-p50']]) {
      let pts = [];
      const flush = () => {
        if (pts.length > 1) svgEl.append(T.svg('polyline', { points: pts.join(' '), class: cls }));
        if (pts.length === 1) {
          const [px, py] = pts[0].split(',');
          svgEl.append(T.svg('circle', { cx: px, cy: py, r: 2, class: cls + ' dot' }));
        }
        pts = [];
      };
      for (const p of samples) {
        if (p.live > 0) pts.push(x(p.t).toFixed(1) + ',' + y(p[key] || 0).toFixed(1));
        else flush();
      }
      flush();
    }
    const lx = right - 150;
    svgEl.append(T.svg('line', { x1: lx, x2: lx + 18, y1: top + 6, y2: top + 6, class: 'line-p50' }));
    svgEl.append(T.svg('text', { x: lx + 22, y: top + 10, class: 'axis', text: 'p50' }));
    svgEl.append(T.svg('line', { x1: lx + 60, x2: lx + 78, y1: top + 6, y2: top + 6, class: 'line-p99' }));
    svgEl.append(T.svg('text', { x: lx + 82, y: top + 10, class: 'axis', text: 'p99' }));
    timeAxis(svgEl, x, t0, t1, left, right, H - 5);
  }

  // sparkline draws one series (an agent's RTT) in a small SVG.
  function sparkline(svgEl, points) {
    clear(svgEl);
    const w = Math.max(200, Math.floor(svgEl.getBoundingClientRect().width || 300)), h = 48;
    svgEl.setAttribute('viewBox', '0 0 ' + w + ' ' + h);
    if (points.length < 2) { svgEl.append(T.svg('text', { x: w / 2, y: h / 2 + 4, 'text-anchor': 'middle', class: 'axis', text: 'collecting…' })); return; }
    const t0 = points[0].t, t1 = points[points.length - 1].t, span = Math.max(t1 - t0, 1);
    let max = 0;
    for (const p of points) max = Math.max(max, p.v);
    const ymax = niceMax(max * 1.1);
    const pts = points.map(p => ((p.t - t0) / span * (w - 4) + 2).toFixed(1) + ',' + (h - 4 - p.v / ymax * (h - 14)).toFixed(1));
    svgEl.append(T.svg('polyline', { points: pts.join(' '), class: 'line-p50' }));
    svgEl.append(T.svg('text', { x: 2, y: 10, class: 'axis', text: 'max ' + T.fmtMs(ymax) + ' ms' }));
  }

  window.TetherCharts = { timeline, latency, sparkline };
})();
