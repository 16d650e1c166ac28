// Tether dashboard: the fleet page. One EventSource on /events with the
// current filters; every message carries counts, new state changes, new
// latency samples and (when it changed) this page of the table. Changing a
// filter reopens the stream with the new query.
'use strict';

(function () {
  const T = window.Tether, C = window.TetherCharts;
  const $ = id => document.getElementById(id);
  const MAX_EVENTS = 500, SHOWN_EVENTS = 200;

  const view = { state: '', role: '', q: '', sort: 'state', offset: 0, limit: 200 };
  const data = { events: [], samples: [], page: null, head: null, serverSkew: 0 };
  const rowsById = new Map(); // agent id -> {tr, cells}
  let es = null, chartsDirty = false;
  const live = T.liveIndicator($('live-dot'), $('live-text'));

  function readURL() {
    const p = new URLSearchParams(location.search);
    const st = p.get('state') || '';
    view.state = st === 'problem' || T.STATES.includes(st) ? st : '';
    view.role = T.ID_RE.test(p.get('role') || '') ? p.get('role') : '';
    view.q = T.ID_RE.test(p.get('q') || '') ? p.get('q') : '';
    view.sort = p.get('sort') === 'id' ? 'id' : 'state';
    view.offset = Math.max(0, parseInt(p.get('offset') || '0', 10) || 0);
    const lim = parseInt(p.get('limit') || '200', 10);
    view.limit = [100, 200, 500, 1000].includes(lim) ? lim : 200;
  }

  function query() {
    const p = new URLSearchParams();
    for (const k of ['state', 'role', 'q']) if (view[k]) p.set(k, view[k]);
    if (view.sort !== 'state') p.set('sort', view.sort);
    if (view.offset) p.set('offset', String(view.offset));
    if (view.limit !== 200) p.set('limit', String(view.limit));
    return p.toString();
  }

  function syncControls() {
    $('f-state').value = view.state;
    ensureRoleOption(view.role);
    $('f-role').value = view.role;
    $('f-q').value = view.q;
    $('f-sort').value = view.sort;
    $('f-limit').value = String(view.limit);
  }

  function ensureRoleOption(role) {
    if (!role) return;
    const sel = $('f-role');
    if (![...sel.options].some(o => o.value === role)) sel.append(T.el('option', { text: role, attrs: { value: role } }));
  }

  function connect() {
    if (es) es.close();
    const qs = query();
    history.replaceState(null, '', qs ? '?' + qs : location.pathname);
    es = new EventSource('/events' + (qs ? '?' + qs : ''));
    es.addEventListener('tick', ev => {
      let m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      onTick(m);
    });
    es.onerror = () => {
      live.error();
      if (es.readyState === EventSource.CLOSED) {
        // A 400 (bad filter) closes the stream for good; say why.
        T.apiGet('/api/fleet?' + qs).then(() => setTimeout(connect, 2000), err => showFilterError(err.message));
      }
    };
  }

  function showFilterError(msg) {
    const p = $('filter-error');
    p.hidden = !msg;
    T.setText(p, msg || '');
  }

  function onTick(m) {
    live.message(m.interval_ms);
    showFilterError('');
    data.head = m;
    data.serverSkew = Date.now() - m.t;
    if (m.reset) { data.events = []; data.samples = []; }
    if (m.events) {
      data.events.push(...m.events);
      if (data.events.length > MAX_EVENTS) data.events.splice(0, data.events.length - MAX_EVENTS);
    }
    if (m.samples) {
      data.samples.push(...m.samples);
      if (data.samples.length > 600) data.samples.splice(0, data.samples.length - 600);
    }
    if (m.roles) updateRoles(m.roles);
    if (m.notices) renderNotices(m.notices);
    renderCounts(m);
    renderBanner(m);
    if (m.page) { data.page = m.page; renderPage(m.page, m.t, m.rate_window_ms); }
    if (m.events && m.events.length || m.reset) renderEvents(m.events_dropped || 0);
    if (m.samples && m.samples.length || m.reset) { chartsDirty = true; requestAnimationFrame(renderCharts); }
  }

  function updateRoles(roles) {
    const sel = $('f-role');
    const keep = new Set(roles);
    if (view.role) keep.add(view.role);
    for (const o of [...sel.options]) if (o.value && !keep.has(o.value)) o.remove();
    for (const r of roles) ensureRoleOption(r);
    sel.value = view.role;
  }

  function renderCounts(m) {
    const box = $('counts');
    const chips = [['', 'all', m.total]];
    const problems = T.STATES.filter(s => s !== 'healthy' && s !== 'gone').reduce((n, s) => n + (m.counts[s] || 0), 0);
    chips.push(['problem', 'problems', problems]);
    for (const s of T.STATES) chips.push([s, s, m.counts[s] || 0]);
    if (box.childElementCount !== chips.length) {
      box.replaceChildren(...chips.map(([val, label]) => {
        const b = T.el('button', { className: 'chip', dataset: { state: val || 'all' }, attrs: { type: 'button' } },
          T.el('span', { className: 'chip-n' }), T.el('span', { className: 'chip-label', text: label }));
        b.addEventListener('click', () => { view.state = view.state === val ? '' : val; view.offset = 0; syncControls(); connect(); });
        return b;
      }));
    }
    chips.forEach(([val, , n], i) => {
      const b = box.children[i];
      T.setText(b.firstChild, T.fmtInt(n));
      let cls = 'chip ' + (val && val !== 'problem' ? T.stateClass(val) : val === 'problem' ? 'st-problem' : 'st-all');
      if (n === 0 && val) cls += ' zero';
      if (view.state === val) cls += ' selected';
      T.setClass(b, cls);
      b.setAttribute('aria-pressed', String(view.state === val));
    });
  }

  function renderBanner(m) {
    const b = $('banner');
    const parts = [];
    if (m.mass_silence) parts.push('Mass silence: a large share of the fleet went quiet at once. The supervisor suspects the broker or its own link and holds agents at suspect; no recovery commands are sent until they return.');
    T.setText(b, parts.join(' '));
    b.hidden = parts.length === 0;
    const rb = $('role-badge');
    if (m.no_leader_ms > 0) {
      T.setText(rb, 'no leader for ' + Math.round(m.no_leader_ms / 1000) + ' s: no replica sends commands');
      T.setClass(rb, 'badge bad');
    } else {
      T.setText(rb, m.leader ? 'leader' : 'follower (read-only: replica ' + (m.leader_id || '?') + ' sends commands)');
      T.setClass(rb, m.leader ? 'badge' : 'badge warn');
    }
  }

  // renderNotices shows what resolution does quietly: roles no config
  // names and invalid KV entries. Both lists come whole when either changed.
  function renderNotices(n) {
    const down = n.servers_down || [];
    $('servers-notice').hidden = down.length === 0;
    T.setText($('servers-caption'), down.length ? String(down.length) : '');
    $('servers-list').replaceChildren(...down.map(s => T.el('li', { dataset: { server: s.server } },
      T.el('strong', { text: s.summary }),
      T.el('span', { className: 'muted', text: (s.since ? ' since ' + new Date(s.since).toLocaleTimeString() : '') +
        (s.last_failure ? ' · last failure ' + s.last_failure : '') }))));
    const roles = n.unconfigured_roles || [];
    $('role-notice').hidden = roles.length === 0;
    T.setText($('role-caption'), roles.length ? roles.length + (roles.length > 1 ? ' roles' : ' role') : '');
    $('role-list').replaceChildren(...roles.map(u => {
      const show = T.el('button', { className: 'small', text: 'show agents', attrs: { type: 'button' } });
      show.addEventListener('click', () => { view.role = u.role; view.offset = 0; syncControls(); connect(); });
      return T.el('li', { dataset: { role: u.role } }, T.el('span', { text: u.warning }), ' ', show);
    }));
    const inv = n.invalid || [];
    $('invalid-panel').hidden = inv.length === 0;
    T.setText($('invalid-caption'), inv.length >= 50 ? 'first 50' : inv.length ? String(inv.length) : '');
    $('invalid').tBodies[0].replaceChildren(...inv.map(e => T.el('tr', { dataset: { key: e.key } },
      T.el('td', { text: e.bucket }),
      T.el('td', { className: 'mono', text: e.key }),
      T.el('td', { className: 'num', text: 'r' + e.revision }),
      T.el('td', { className: 'invalid-error', text: e.error }))));
  }

  const COLS = ['agent', 'state', 'role', 'heard', 'rtt', 'configs', 'calls', 'reconnects', 'pending', 'reason'];

  function makeRow(id) {
    const cells = {};
    const tr = T.el('tr', { dataset: { agent: id } });
    const keys = {};
    for (const c of COLS) {
      const td = T.el('td', { className: c });
      cells[c] = td;
      tr.append(td);
    }
    cells.agent.append(T.el('a', { href: T.agentHref(id), text: id, title: id }));
    const pill = T.el('span', { className: 'pill' });
    const since = T.el('span', { className: 'since' });
    cells.state.append(pill, since);
    cells.pill = pill; cells.since = since;
    cells.roleText = T.el('span', { className: 'cut' });
    cells.roleFlag = T.el('span', { className: 'flag' });
    cells.role.append(cells.roleText, cells.roleFlag);
    cells.reasonText = T.el('span', { className: 'clamp' });
    cells.reason.append(cells.reasonText);
    return { tr, cells, keys };
  }

  function renderPage(p, now, windowMs) {
    const body = $('rows');
    const seen = new Set();
    const frag = [];
    for (const r of p.rows) {
      let e = rowsById.get(r.id);
      if (!e) { e = makeRow(r.id); rowsById.set(r.id, e); }
      seen.add(r.id);
      fillRow(e, r, now, windowMs);
      frag.push(e.tr);
    }
    for (const [id, e] of rowsById) if (!seen.has(id)) { e.tr.remove(); rowsById.delete(id); }
    // Re-order only when the order changed.
    let same = body.childElementCount === frag.length;
    for (let i = 0; same && i < frag.length; i++) same = body.children[i] === frag[i];
    if (!same) body.replaceChildren(...frag);
    $('empty').hidden = p.rows.length > 0;
    const from = p.matched ? p.offset + 1 : 0, to = p.offset + p.rows.length;
    T.setText($('page-info'), p.matched ? T.fmtInt(from) + '–' + T.fmtInt(to) + ' of ' + T.fmtInt(p.matched) : '0 agents');
    $('prev').disabled = p.offset === 0;
    $('next').disabled = to >= p.matched;
  }

  // fill replaces a cell's children when key (what they show) changed.
  function fill(e, cell, key, make) {
    if (e.keys[cell] === key) return;
    e.keys[cell] = key;
    e.cells[cell].replaceChildren(...make());
  }

  function fillRow(e, r, now, windowMs) {
    const c = e.cells;
    T.setClass(e.tr, T.stateClass(r.state));
    T.setText(c.pill, r.state);
    T.setClass(c.pill, 'pill ' + T.stateClass(r.state));
    T.setText(c.since, r.since ? 'for ' + T.fmtAge(now - r.since) : '');
    const warned = !!(r.warnings && r.warnings.length);
    T.setText(c.roleText, r.role || '—');
    T.setText(c.roleFlag, warned ? ' ⚠' : '');
    T.setClass(c.role, 'role' + (warned ? ' warn' : ''));
    c.role.title = warned ? r.warnings.join('\n') : r.role || '';
    // The connection as the last heartbeat reported it, with its age;
    // once the agent is no longer live, marked as history.
    const age = r.heard_ms < 0 ? 'never' : T.fmtAge(r.heard_ms) + ' ago';
    fill(e, 'heard', [r.conn, age, r.conn_stale].join('|'), () =>
      [r.conn && r.heard_ms >= 0 ? T.connReport(r.conn, r.heard_ms, r.conn_stale) : age]);
    T.setClass(c.heard, 'heard' + (r.interval_ms && r.heard_ms > 2 * r.interval_ms ? ' late' : '') +
      (r.conn_stale ? ' stale' : r.conn && r.conn !== 'connected' ? ' warn' : ''));
    c.heard.title = r.conn_stale ? 'The agent is ' + r.state + ': this is what its last heartbeat reported, ' + age : '';
    T.setText(c.rtt, r.rtt_ms ? T.fmtMs(r.rtt_ms) : '–');
    // A silent agent's RTT is its last report, not a measurement: dim it.
    T.setClass(c.rtt, 'rtt num' + (r.conn_stale ? ' muted' : ''));
    const cs = T.configSummary(r.configs, r.more_configs);
    T.setText(c.configs, cs.text);
    T.setClass(c.configs, 'configs ' + cs.cls);
    c.configs.title = cs.title;
    // Totals, and beneath them what rose within the rate window: only
    // that colours the cell, so an agent that recovered is not red forever.
    const rc = r.recent || {}, win = T.fmtWindow(windowMs);
    const totals = T.fmtInt(r.ok) + ' · ' + T.fmtInt(r.retried) + ' · ' + T.fmtInt(r.failed);
    const recentCalls = r.retried || r.failed ? win + ': ' + T.recentText(rc) : '';
    // The recent line breaks only between its parts.
    fill(e, 'calls', totals + '|' + recentCalls, () =>
      [T.el('span', { className: 'total', text: totals }), recentCalls ? T.el('span', { className: 'recent' },
        ...recentCalls.split(' · ').flatMap((part, i) => [i ? ' · ' : '', T.el('span', { className: 'part', text: part })])) : '']);
    T.setClass(c.calls, 'calls num' + (rc.failed ? ' bad' : rc.retried ? ' warn' : ''));
    c.calls.title = (r.err_class ? 'last error class: ' + r.err_class + '\n' : '') + 'totals since the agent started; beneath, the rise within the last ' + win;
    const recTotal = T.fmtInt(r.reconnects) + (r.restarts ? ' · ' + r.restarts + ' restarts' : '');
    const recentRec = r.reconnects ? win + ': ' + (rc.reconnects ? T.fmtInt(rc.reconnects) + ' new' : 'none') : '';
    fill(e, 'reconnects', recTotal + '|' + recentRec, () =>
      [T.el('span', { className: 'total', text: recTotal }), recentRec ? T.el('span', { className: 'recent', text: recentRec }) : '']);
    T.setClass(c.reconnects, 'reconnects num' + (rc.reconnects ? ' warn' : ''));
    const pend = [];
    if (r.pending) pend.push(r.pending + ' cmd');
    if (r.probes_unacked) pend.push(r.probes_unacked + ' probe');
    if (r.backlog) pend.push(T.fmtInt(r.backlog) + ' task' + (r.backlog === 1 ? '' : 's'));
    T.setText(c.pending, pend.join(' · ') || '—');
    T.setClass(c.pending, 'pending num' + (r.queue_zombie ? ' bad' : r.probes_unacked ? ' warn' : ''));
    c.pending.title = r.backlog ? 'tasks waiting or unacknowledged in its task queues' + (r.queue_zombie ? ': nothing acked for too long while it heartbeats (queue zombie)' : '') : '';
    const flags = [];
    if (r.duplicate) flags.push('duplicate instances under this id');
    if (r.skewed) flags.push('clock skewed');
    for (const s of r.mcp_failing || []) flags.push('fails MCP server ' + s + ' (others reach it)');
    const reason = [r.reason, ...flags].filter(Boolean).join(' · ');
    T.setText(c.reasonText, reason);
    c.reason.title = reason;
  }

  function renderEvents(dropped) {
    const list = $('events');
    const shown = data.events.slice(-SHOWN_EVENTS).reverse();
    list.replaceChildren(...shown.map(e => T.el('li', { className: 'event' },
      T.el('time', { className: 'ev-time', text: T.fmtClock(e.t, true), attrs: { datetime: new Date(e.t).toISOString() } }),
      T.el('a', { className: 'ev-agent', href: T.agentHref(e.agent), text: e.agent }),
      T.el('span', { className: 'ev-change' },
        e.from ? T.pill(e.from) : T.el('span', { className: 'muted', text: 'joined' }),
        T.el('span', { className: 'arrow', text: ' → ' }),
        e.to ? T.pill(e.to) : T.el('span', { className: 'muted', text: 'forgotten' })),
      T.el('span', { className: 'ev-role muted', text: e.role || '' }),
      T.el('span', { className: 'ev-reason', text: e.reason || '' }))));
    const more = dropped ? ' (' + T.fmtInt(dropped) + ' older not sent)' : '';
    T.setText($('ev-caption'), data.events.length ? 'latest ' + Math.min(data.events.length, SHOWN_EVENTS) + ' of ' + data.events.length + ' kept' + more : 'none yet');
  }

  function renderCharts() {
    if (!chartsDirty) return;
    chartsDirty = false;
    C.timeline($('timeline'), data.samples, data.events);
    C.latency($('latency'), data.samples);
    const s = data.samples[data.samples.length - 1];
    if (s) {
      T.setText($('lat-caption'), s.live ? 'p50 ' + T.fmtMs(s.rtt_p50_ms) + ' ms · p99 ' + T.fmtMs(s.rtt_p99_ms) + ' ms · max ' + T.fmtMs(s.rtt_max_ms) + ' ms · heartbeat age p99 ' + T.fmtAge(s.age_p99_ms) + ' · ' + T.fmtInt(s.live) + ' live agents' : 'no live agents');
      const t0 = data.samples[0].t;
      T.setText($('tl-caption'), 'last ' + T.fmtAge(s.t - t0));
    }
  }

  function bind() {
    $('filters').addEventListener('submit', ev => ev.preventDefault());
    $('f-state').addEventListener('change', ev => { view.state = ev.target.value; view.offset = 0; connect(); });
    $('f-role').addEventListener('change', ev => { view.role = ev.target.value; view.offset = 0; connect(); });
    $('f-sort').addEventListener('change', ev => { view.sort = ev.target.value; view.offset = 0; connect(); });
    $('f-limit').addEventListener('change', ev => { view.limit = parseInt(ev.target.value, 10); view.offset = 0; connect(); });
    let qTimer = 0;
    $('f-q').addEventListener('input', ev => {
      clearTimeout(qTimer);
      qTimer = setTimeout(() => {
        const v = ev.target.value.trim();
        if (v && !T.ID_RE.test(v)) { showFilterError('Agent ids have only A-Z a-z 0-9 _ - (at most 64).'); return; }
        view.q = v; view.offset = 0; connect();
      }, 250);
    });
    $('prev').addEventListener('click', () => { view.offset = Math.max(0, view.offset - view.limit); connect(); });
    $('next').addEventListener('click', () => { view.offset += view.limit; connect(); });
    window.addEventListener('resize', () => { chartsDirty = true; requestAnimationFrame(renderCharts); });
    window.addEventListener('popstate', () => { readURL(); syncControls(); connect(); });
  }

  readURL();
  syncControls();
  bind();
  connect();
})();
