// Tether dashboard: shared helpers. Hand-written, no dependencies.
// Every piece of data reaches the page through textContent or
// setAttribute on SVG geometry; nothing is ever parsed as HTML.
'use strict';

(function () {
  const SVGNS = 'http://www.w3.org/2000/svg';
  // States worst first, as the table's default sort orders them.
  const STATES = ['quarantined', 'zombie', 'lost', 'suspect', 'healthy', 'gone'];
  const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;

  // el builds an element: props may hold text, className, title, href
  // (same-origin paths only), dataset and attrs; children are nodes or
  // strings (added as text).
  function el(tag, props, ...children) {
    const n = document.createElement(tag);
    applyProps(n, props);
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      n.append(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
    }
    return n;
  }

  function applyProps(n, props) {
    if (!props) return;
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null) continue;
      switch (k) {
        case 'text': n.textContent = String(v); break;
        case 'className': n.setAttribute('class', v); break;
        case 'title': n.title = String(v); break;
        case 'href':
          if (typeof v === 'string' && v.startsWith('/') && !v.startsWith('//')) n.setAttribute('href', v);
          break;
        case 'dataset': for (const [dk, dv] of Object.entries(v)) n.dataset[dk] = String(dv); break;
        case 'attrs': for (const [ak, av] of Object.entries(v)) n.setAttribute(ak, String(av)); break;
        default: throw new Error('el: unsupported prop ' + k);
      }
    }
  }

  // svg builds an SVG element with numeric/string attributes.
  function svg(tag, attrs, ...children) {
    const n = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') n.textContent = String(v);
      else n.setAttribute(k, String(v));
    }
    for (const c of children) if (c) n.append(c);
    return n;
  }

  // setText changes a node's text only when it differs (no layout churn).
  function setText(n, s) {
    s = s === undefined || s === null ? '' : String(s);
    if (n.textContent !== s) n.textContent = s;
  }

  function setClass(n, c) {
    if (n.getAttribute('class') !== c) n.setAttribute('class', c);
  }

  // fmtAge: 850 ms, 4.2 s, 3 m 10 s, 2 h 5 m, 3 d 4 h.
  function fmtAge(ms) {
    if (ms === undefined || ms === null || ms < 0) return 'never';
    if (ms < 1000) return Math.round(ms) + ' ms';
    const s = ms / 1000;
    if (s < 60) return (s < 10 ? s.toFixed(1) : Math.round(s)) + ' s';
    const m = Math.floor(s / 60);
    if (m < 60) return m + ' m ' + Math.floor(s % 60) + ' s';
    const h = Math.floor(m / 60);
    if (h < 48) return h + ' h ' + (m % 60) + ' m';
    return Math.floor(h / 24) + ' d ' + (h % 24) + ' h';
  }

  function pad(n, w) { return String(n).padStart(w || 2, '0'); }

  // fmtClock: local HH:MM:SS(.mmm) of a unix-ms time.
  function fmtClock(t, millis) {
    const d = new Date(t);
    let s = pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
    if (millis) s += '.' + pad(d.getMilliseconds(), 3);
    return s;
  }

  function fmtMs(v) {
    if (v === undefined || v === null) return '–';
    if (v === 0) return '0';
    if (v < 1) return v.toFixed(2);
    if (v < 10) return v.toFixed(1);
    return String(Math.round(v));
  }

  function fmtInt(n) { return (n || 0).toLocaleString('en-US'); }

  // fmtWindow: a rate window, "5 min" (whole minutes) or as fmtAge.
  function fmtWindow(ms) {
    if (!ms) return '';
    return ms % 60000 === 0 ? ms / 60000 + ' min' : fmtAge(ms);
  }

  // connReport is an agent's connection as its last heartbeat reported
  // it, with the report's age: "connected, 42 s ago". Stale (the agent is
  // no longer live) it reads "last reported connected, 42 s ago", the
  // state struck through: history, not the present.
  function connReport(conn, heardMs, stale) {
    return el('span', { className: 'conn-report' + (stale ? ' stale' : '') },
      stale ? el('span', { className: 'conn-label', text: 'last reported ' }) : null,
      el('span', { className: 'conn-state', text: conn }),
      heardMs >= 0 ? ', ' + fmtAge(heardMs) + ' ago' : '');
  }

  // recentText says how much failure counters rose over the rate window
  // (recentCounts): "1 retried · 2 failed", or "none"; reconnects too
  // when asked.
  function recentText(rc, withReconnects) {
    const parts = [];
    if (rc.retried) parts.push(fmtInt(rc.retried) + ' retried');
    if (rc.failed) parts.push(fmtInt(rc.failed) + ' failed');
    if (withReconnects && rc.reconnects) parts.push(fmtInt(rc.reconnects) + (rc.reconnects > 1 ? ' reconnects' : ' reconnect'));
    return parts.join(' · ') || 'none';
  }

  // recentClass colours recent failures: red only for failures within
  // the window, amber for retries (and reconnects); totals never colour.
  function recentClass(rc, withReconnects) {
    return rc.failed ? 'bad' : rc.retried || withReconnects && rc.reconnects ? 'warn' : 'good';
  }

  function stateClass(s) { return STATES.includes(s) ? 'st-' + s : 'st-unknown'; }

  // pill is a coloured state label (colour and text, never colour alone).
  function pill(state) {
    return el('span', { className: 'pill ' + stateClass(state), text: state || 'unknown' });
  }

  function agentHref(id) { return ID_RE.test(id) ? '/agent/' + encodeURIComponent(id) : undefined; }

  // configSummary says how an agent's config revisions compare with what
  // it resolves to now: {text, cls, title}.
  function configSummary(cfgs, more) {
    if (!cfgs || cfgs.length === 0) return { text: 'none reported', cls: 'muted', title: '' };
    let ok = 0, bad = 0, behind = 0;
    const lines = [];
    for (const c of cfgs) {
      let status;
      if (c.err || !c.applied) { bad++; status = c.err ? 'apply failed: ' + c.err : 'not applied'; }
      else if (c.cur_err) { bad++; status = 'resolves to error: ' + c.cur_err; }
      else if (c.cur && c.cur !== c.rev) { behind++; status = 'behind: runs r' + c.rev + ', current r' + c.cur; }
      else { ok++; status = 'current'; }
      lines.push(c.server + ': r' + c.rev + (c.cur ? ' / r' + c.cur : '') + (c.stale ? ' (stale)' : '') + ' — ' + status);
    }
    if (more) lines.push('… and ' + more + ' more servers');
    const total = cfgs.length + (more || 0);
    if (bad) return { text: bad + ' failing · ' + ok + '/' + total + ' current', cls: 'bad', title: lines.join('\n') };
    if (behind) {
      const first = cfgs.find(c => c.cur && c.cur !== c.rev);
      return { text: first.server + ' r' + first.rev + ' → r' + first.cur + (behind > 1 ? ' +' + (behind - 1) : ''), cls: 'warn', title: lines.join('\n') };
    }
    if (total === 1) return { text: cfgs[0].server + ' r' + cfgs[0].rev + ' · current', cls: 'good', title: lines.join('\n') };
    return { text: ok + '/' + total + ' current', cls: 'good', title: lines.join('\n') };
  }

  // apiGet fetches JSON; errors carry the contract's message.
  async function apiGet(path) {
    const r = await fetch(path, { headers: { Accept: 'application/json' }, cache: 'no-store' });
    let body = null;
    try { body = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) {
      const msg = body && body.error && body.error.message ? body.error.message : r.status + ' ' + r.statusText;
      throw new Error(msg);
    }
    return body;
  }

  // liveIndicator keeps the header's connection dot honest: live while
  // messages arrive within a few intervals, stale after, down on error.
  function liveIndicator(dot, text) {
    let last = 0, interval = 1000, down = false;
    function render() {
      const age = Date.now() - last;
      if (down && last === 0) { setClass(dot, 'live down'); setText(text, 'connecting…'); return; }
      if (down) { setClass(dot, 'live down'); setText(text, 'disconnected — retrying (last update ' + fmtAge(age) + ' ago)'); return; }
      if (last === 0) { setClass(dot, 'live'); setText(text, 'connecting…'); return; }
      if (age > Math.max(3 * interval, 3000)) { setClass(dot, 'live stale'); setText(text, 'stale — no update for ' + fmtAge(age)); return; }
      setClass(dot, 'live ok'); setText(text, 'live · every ' + fmtAge(interval));
    }
    setInterval(render, 500);
    render();
    return {
      message(iv) { last = Date.now(); interval = iv || interval; down = false; render(); },
      error() { down = true; render(); },
    };
  }

  window.Tether = { STATES, ID_RE, el, svg, setText, setClass, fmtAge, fmtClock, fmtMs, fmtInt, fmtWindow, connReport, recentText, recentClass, stateClass, pill, agentHref, configSummary, apiGet, liveIndicator };
})();
