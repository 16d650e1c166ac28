// Tether dashboard: one agent. The page arrives with the agent's detail
// in it (the JSON of /api/agent/ID in #initial), painted before anything
// is fetched. Its row streams live on /events?agent=ID; the full status,
// pending commands and the explain output of every server visible to it
// come from /api/agent/ID, fetched again (at most once a second) whenever
// the row changes.
'use strict';

(function () {
  const T = window.Tether, C = window.TetherCharts;
  const $ = id => document.getElementById(id);
  const raw = decodeURIComponent(location.pathname.replace(/^\/agent\//, ''));
  const live = T.liveIndicator($('live-dot'), $('live-text'));
  const rtt = [];
  let events = [], lastFetch = 0, fetchTimer = 0, serverNow = Date.now();

  if (!T.ID_RE.test(raw)) {
    T.setText($('agent-id'), '(invalid id)');
    showBanner('Agent ids are 1–64 characters of A-Z a-z 0-9 _ -.');
    return;
  }
  const id = raw;
  T.setText($('agent-id'), id);
  document.title = 'Tether · ' + id;
  $('json-link').setAttribute('href', '/api/agent/' + encodeURIComponent(id));

  function showBanner(msg) {
    const b = $('banner');
    T.setText(b, msg || '');
    b.hidden = !msg;
  }

  function setState(state, since, reason, now) {
    const p = $('state-pill');
    T.setText(p, state || 'not in fleet');
    T.setClass(p, 'pill big ' + T.stateClass(state));
    T.setText($('state-since'), since ? 'for ' + T.fmtAge(now - since) + ' (since ' + T.fmtClock(since) + ')' : '');
    T.setText($('state-reason'), reason || '');
  }

  function connect() {
    const es = new EventSource('/events?agent=' + encodeURIComponent(id));
    es.addEventListener('tick', ev => {
      let m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      live.message(m.interval_ms);
      serverNow = m.t;
      if (m.reset) events = [];
      if (m.events && m.events.length) { events.push(...m.events); renderEvents(); }
      if (m.page) {
        const r = m.page.rows[0];
        if (r) {
          setState(r.state, r.since, r.reason, m.t);
          if (r.heard_ms >= 0) { rtt.push({ t: m.t, v: r.rtt_ms || 0 }); if (rtt.length > 300) rtt.shift(); }
          C.sparkline($('rtt-spark'), rtt);
        } else {
          setState('', 0, 'This agent has never sent a heartbeat to this supervisor (or was forgotten).', m.t);
        }
        scheduleFetch();
      }
    });
    es.onerror = () => live.error();
  }

  function scheduleFetch() {
    if (fetchTimer) return;
    const wait = Math.max(0, 1000 - (Date.now() - lastFetch));
    fetchTimer = setTimeout(() => { fetchTimer = 0; load(); }, wait);
  }

  async function load() {
    lastFetch = Date.now();
    let d;
    try {
      d = await T.apiGet('/api/agent/' + encodeURIComponent(id));
    } catch (err) {
      showBanner('Cannot load the agent: ' + err.message);
      T.setText($('loading'), 'Not loaded: ' + err.message);
      return;
    }
    showBanner('');
    render(d);
  }

  // initial is the detail the page was served with, or null.
  function initial() {
    const n = $('initial');
    if (!n || !n.textContent) return null;
    try {
      const d = JSON.parse(n.textContent);
      return d && d.agent === id ? d : null;
    } catch (e) {
      return null;
    }
  }

  function render(d) {
    $('loading').hidden = true;
    renderWarnings(d);
    renderFacts(d);
    renderConfigs(d);
    renderExplain(d);
    renderPending(d);
    if (d.events) { events = d.events; renderEvents(); }
  }

  // renderWarnings lists what explain warns of about the agent itself: no
  // entry in mcp_agents, or a role no config names.
  function renderWarnings(d) {
    const ws = d.warnings || [];
    const ul = $('warnings');
    ul.replaceChildren(...ws.map(w => T.el('li', { text: w })));
    ul.hidden = ws.length === 0;
  }

  // fact adds one fact; v is text or a node.
  function fact(dl, k, v, cls) {
    const dd = v instanceof Node ? T.el('dd', { className: cls }, v) :
      T.el('dd', { text: v === undefined || v === null || v === '' ? '—' : String(v), className: cls });
    dl.append(T.el('div', { className: 'fact' }, T.el('dt', { text: k }), dd));
  }

  function renderFacts(d) {
    const dl = $('facts');
    dl.replaceChildren();
    const s = d.status;
    if (!s) {
      setState('', 0, 'This agent has never sent a heartbeat to this supervisor (or was forgotten).', serverNow);
      fact(dl, 'Role', d.role || 'none in mcp_agents', d.warnings && d.warnings.length ? 'warn' : '');
      return;
    }
    const since = s.since ? Date.parse(s.since) : 0;
    setState(s.state, since, s.reason, serverNow);
    fact(dl, 'Role', s.role || 'none in mcp_agents', d.warnings && d.warnings.length ? 'warn' : '');
    fact(dl, 'Last heard', s.last_heard ? T.fmtAge(s.silent_ms) + ' ago (' + T.fmtClock(Date.parse(s.last_heard), true) + ')' : 'never');
    fact(dl, 'Heartbeat interval', s.interval_ms ? T.fmtAge(s.interval_ms) : 'default');
    fact(dl, 'Instance · seq', (s.instance || '—') + ' · ' + (s.seq || 0));
    // The connection is what the last heartbeat said: history once the
    // agent is no longer live.
    const conn = s.conn && s.conn.state;
    const heard = s.last_heard ? s.silent_ms : -1;
    fact(dl, 'Connection', conn ? T.connReport(conn, heard, d.conn_stale) : '—',
      d.conn_stale ? 'stale' : conn && conn !== 'connected' ? 'warn' : '');
    fact(dl, 'RTT', s.conn ? T.fmtMs(s.conn.rtt_ms) + ' ms' + (d.conn_stale ? ' (last reported)' : '') : '—', d.conn_stale ? 'muted' : '');
    const calls = s.calls || {};
    fact(dl, 'Calls ok · retried · failed', T.fmtInt(calls.ok) + ' · ' + T.fmtInt(calls.retried) + ' · ' + T.fmtInt(calls.failed) + ' in all');
    fact(dl, 'Reconnects', (s.conn ? T.fmtInt(s.conn.reconnects) : '0') + ' in all');
    const rc = d.recent || {};
    fact(dl, 'Last ' + T.fmtWindow(d.rate_window_ms), T.recentText(rc, true), T.recentClass(rc, true));
    fact(dl, 'Last error class', calls.last_error_class || '—');
    fact(dl, 'Restarts · recoveries', (s.restarts || 0) + ' · ' + (s.recoveries || 0), s.recoveries ? 'warn' : '');
    fact(dl, 'Pending commands · unanswered probes', (s.pending || 0) + ' · ' + (s.probes_unacked || 0), s.probes_unacked ? 'warn' : '');
    if (s.duplicate) fact(dl, 'Duplicate', 'two instances heartbeat under this id', 'bad');
    if (s.clock_skewed) fact(dl, 'Clock skew', T.fmtAge(Math.abs(s.clock_skew_ms)), 'warn');
    if (s.spoofed) fact(dl, 'Spoofed heartbeats', s.spoofed, 'bad');
  }

  function renderConfigs(d) {
    const body = $('configs').tBodies[0];
    const cfgs = (d.status && d.status.configs) || {};
    const names = Object.keys(cfgs).sort();
    body.replaceChildren(...names.map(n => {
      const c = cfgs[n];
      const sum = T.configSummary([{ server: n, rev: c.revision, applied: c.applied, err: c.error, stale: c.stale, cur: c.current, cur_err: c.current_error }]);
      let status = sum.cls === 'good' ? 'current' : sum.cls === 'warn' ? 'behind: re-resolve pending' : 'failing';
      if (c.current_error) status = 'resolves to an error: ' + c.current_error;
      return T.el('tr', null,
        T.el('td', { text: n }),
        T.el('td', { className: 'num', text: 'r' + c.revision + (c.stale ? ' (stale)' : '') }),
        T.el('td', { text: c.applied ? 'yes' : 'no', className: c.applied ? 'good' : 'bad' }),
        T.el('td', { text: c.error || '—', className: c.error ? 'bad' : '' }),
        T.el('td', { className: 'num', text: c.current ? 'r' + c.current : '—' }),
        T.el('td', { text: status, className: sum.cls }));
    }));
    $('configs-empty').hidden = names.length > 0;
  }

  function yes(b) { return b ? 'yes' : 'no'; }

  function renderExplain(d) {
    const box = $('explain');
    T.setText($('explain-note'), d.index_error ? d.index_error :
      d.servers.length ? d.servers.length + ' server' + (d.servers.length > 1 ? 's' : '') + ' visible; role ' + (d.role || '(none)') + '. The first scope present wins entirely; secrets are masked.' :
        'No server is visible to this agent in any scope.');
    box.replaceChildren(...d.servers.map(sv => {
      const x = sv.explain;
      const card = T.el('div', { className: 'explain' });
      const outcome = x ? x.outcome : 'error';
      card.append(T.el('h3', null, T.el('span', { text: sv.server }), ' ',
        T.el('span', { className: 'badge ' + (outcome === 'ok' ? 'good' : 'bad'), text: outcome }),
        x && x.winner ? T.el('span', { className: 'muted', text: ' winner ' + x.winner + (x.winner_key ? ' (' + x.winner_key + ')' : '') }) : null));
      if (!x) { card.append(T.el('p', { className: 'bad', text: sv.explain_error || 'no explanation' })); return card; }
      if (x.role_error) card.append(T.el('p', { className: 'bad', text: 'role record: ' + x.role_error }));
      // The agent's own warnings are shown once, at the top.
      const own = new Set(d.warnings || []);
      const ws = (x.warnings || []).filter(w => !own.has(w));
      if (ws.length) card.append(T.el('ul', { className: 'warnings' }, ...ws.map(w => T.el('li', { text: w }))));
      const rows = x.scopes.map(sc => T.el('tr', { className: sc.winner ? 'winner' : sc.shadowed ? 'shadowed' : '' },
        T.el('td', { text: sc.scope }),
        T.el('td', { text: sc.key || '—', className: 'mono' }),
        T.el('td', { text: sc.skipped ? 'skipped' : yes(sc.present) }),
        T.el('td', { text: sc.present ? yes(sc.valid) : '—', className: sc.present && !sc.valid ? 'bad' : '' }),
        T.el('td', { className: 'num', text: sc.revision ? 'r' + sc.revision : '—' }),
        T.el('td', { text: sc.winner ? 'winner' : sc.shadowed ? 'shadowed' : sc.skipped ? sc.skipped : '', className: sc.winner ? 'good' : '' }),
        T.el('td', { text: sc.error || '', className: 'bad' })));
      card.append(T.el('div', { className: 'table-wrap' }, T.el('table', { className: 'grid compact' },
        T.el('thead', null, T.el('tr', null, ...['Scope', 'Key', 'Present', 'Valid', 'Revision', 'Result', 'Error'].map(h => T.el('th', { text: h })))),
        T.el('tbody', null, ...rows))));
      if (x.error) card.append(T.el('p', { className: 'bad', text: x.error }));
      if (sv.config) {
        card.append(T.el('details', null, T.el('summary', { text: 'Winning config (secrets masked)' }),
          T.el('pre', { className: 'mono', text: JSON.stringify(sv.config, null, 2) })));
      }
      return card;
    }));
  }

  function renderPending(d) {
    const body = $('pending').tBodies[0];
    const cmds = d.pending || [];
    body.replaceChildren(...cmds.map(c => T.el('tr', null,
      T.el('td', { className: 'mono', text: c.id || '' }),
      T.el('td', { text: c.type || '' }),
      T.el('td', { text: (c.servers || []).join(', ') || 'all' }),
      T.el('td', { text: c.not_before ? T.fmtClock(Date.parse(c.not_before), true) : 'now' }),
      T.el('td', { text: c.reason || '' }))));
    $('pending-empty').hidden = cmds.length > 0;
    T.setText($('pending-empty'), d.status && d.status.state === 'gone' ?
      'None: a gone agent is owed nothing; its pending commands were dropped.' : 'None: every command was acknowledged.');
  }

  function renderEvents() {
    if (events.length > 500) events = events.slice(-500);
    $('events').replaceChildren(...events.slice().reverse().map(e => T.el('li', { className: 'event short' },
      T.el('time', { className: 'ev-time', text: T.fmtClock(e.t, true) }),
      T.el('span', { className: 'ev-change' },
        e.from ? T.pill(e.from) : T.el('span', { className: 'muted', text: 'joined' }),
        T.el('span', { className: 'arrow', text: ' → ' }),
        e.to ? T.pill(e.to) : T.el('span', { className: 'muted', text: 'forgotten' })),
      T.el('span', { className: 'ev-reason', text: e.reason || '' }))));
    if (!events.length) $('events').append(T.el('li', { className: 'muted', text: 'No state change since this supervisor started watching.' }));
  }

  $('refresh').addEventListener('click', () => load());
  renderEvents();
  const d0 = initial();
  if (d0) {
    render(d0);
    lastFetch = Date.now(); // the stream's first message fetches it again within a second
  } else {
    load();
  }
  connect();
})();
