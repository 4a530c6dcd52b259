// vmmon operator dashboard (issue 18). Plain JavaScript, no build step; charts by the vendored
// uPlot. Routes are URL hashes: #/login, #/fleet, #/vm/<id>[/proc/<name>], #/bandwidth,
// #/rating, #/cdn. The session id lives in this tab's sessionStorage and travels as X-Auth-Token
// (GET reads) or as the body's session_id (the method-coded API): never in a cookie, so no other
// site can act with it. Text from the server is always set with textContent (never innerHTML).
'use strict';

(function () {
  const SID_KEY = 'vmmon.session';
  const S = { sid: sessionStorage.getItem(SID_KEY) || '', me: null, charts: [] };
  // Timings the browser test reads (docs/benchmarks.md).
  const T = (window.vmmonTimings = {});
  // Script errors and CSP violations the browser test checks for.
  const ERRORS = (window.vmmonErrors = []);
  window.addEventListener('error', (e) => ERRORS.push(String(e.message)));
  window.addEventListener('unhandledrejection', (e) => ERRORS.push(String(e.reason)));
  document.addEventListener('securitypolicyviolation', (e) =>
    ERRORS.push('CSP: ' + e.violatedDirective + ' ' + e.blockedURI));

  const METHOD = { login: 458753, logout: 458754, procs: 611711, procByName: 611712,
    start: 32523, stop: 32524, interval: 32525 };
  const RANGES = { '1h': 3600e3, '24h': 86400e3, '7d': 7 * 86400e3, '30d': 30 * 86400e3 };

  // ---- small DOM helpers -------------------------------------------------------------------
  function el(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null) continue;
      if (k === 'text') e.textContent = v;
      else if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else if (k === 'data') Object.assign(e.dataset, v);
      else e.setAttribute(k, v);
    }
    for (const kid of kids.flat()) {
      if (kid === null || kid === undefined) continue;
      e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return e;
  }
  const main = () => document.getElementById('main');
  function show(...nodes) {
    destroyCharts();
    main().replaceChildren(...nodes);
  }
  function destroyCharts() {
    for (const c of S.charts) c.destroy();
    S.charts = [];
  }
  const fmt = (v, d = 2) => (v === null || v === undefined ? '–' : Number(v).toFixed(d));
  function fmtBytes(n) {
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let i = 0;
    let v = Number(n);
    while (Math.abs(v) >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return v.toFixed(i ? 2 : 0) + ' ' + u[i];
  }

  // ---- API calls ------------------------------------------------------------------------------
  class ApiError extends Error {}

  async function get(path) {
    const r = await fetch(path, { headers: { 'X-Auth-Token': S.sid } });
    const body = await r.json().catch(() => null);
    if (r.status === 401) { forget(); throw new ApiError('session expired: log in again'); }
    if (!r.ok) {
      const msg = body && (body.msg || body.faultstring || body.message);
      throw new ApiError(msg || 'HTTP ' + r.status);
    }
    return body;
  }

  async function legacy(method, fields) {
    const r = await fetch('/wsgi_app.py', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(Object.assign({ method: method, session_id: S.sid }, fields)),
    });
    return r.json();
  }

  function forget() {
    S.sid = '';
    S.me = null;
    sessionStorage.removeItem(SID_KEY);
  }

  // ---- charts -----------------------------------------------------------------------------------
  const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b'];

  // A time chart: `x` epoch seconds, `lines` [{label, values, dash}], drawn into `box`.
  function chart(box, title, unit, x, lines, opts) {
    const series = [{}].concat(lines.map((l, i) => ({
      label: l.label, stroke: l.color || COLORS[i % COLORS.length], width: 1.5,
      dash: l.dash, value: (u, v) => (v === null || v === undefined ? '–' : fmt(v) + ' ' + unit),
    })));
    const o = {
      width: 560, height: 220, series: series,
      axes: [{}, { size: 70 }],
      scales: { x: { time: true } },
      legend: { live: true },
    };
    if (opts && opts.utc) o.tzDate = (ts) => uPlot.tzDate(new Date(ts * 1e3), 'Etc/UTC');
    const holder = el('div', { class: 'chart', data: { chart: title } }, el('h3', { text: title + ' (' + unit + ')' }));
    box.append(holder);
    // Sized to its grid cell, measured once it is in the page.
    o.width = Math.max(320, (holder.clientWidth || 570) - 10);
    const u = new uPlot(o, [x].concat(lines.map((l) => l.values)), holder);
    S.charts.push(u);
    return u;
  }

  // A sparkline on a small canvas (no library: 1,000 of them must be cheap).
  function spark(values) {
    const c = el('canvas', { class: 'spark', width: 120, height: 24 });
    const g = c.getContext('2d');
    const pts = values.map((v, i) => [i, v]).filter((p) => p[1] !== null);
    g.strokeStyle = '#1f77b4';
    g.lineWidth = 1.5;
    g.beginPath();
    const n = Math.max(1, values.length - 1);
    pts.forEach(([i, v], k) => {
      const x = 2 + (i / n) * 116;
      const y = 22 - Math.min(100, Math.max(0, v)) * 0.2;
      if (k === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    if (pts.length === 1) g.arc(2 + (pts[0][0] / n) * 116, 22 - pts[0][1] * 0.2, 1.5, 0, 7);
    g.stroke();
    return c;
  }

  // ---- a sortable table -------------------------------------------------------------------------
  // cols: [{key, label, num, render(row) -> node|text}]; onRow(row) makes rows clickable.
  function table(cols, rows, state, onRow, id) {
    const t = el('table', { id: id });
    const head = el('tr');
    const body = el('tbody');
    function draw() {
      const col = cols.find((c) => c.key === state.key) || cols[0];
      const dir = state.asc ? 1 : -1;
      const sorted = rows.slice().sort((a, b) => {
        const x = a[col.key];
        const y = b[col.key];
        if (x === y) return 0;
        if (x === null || x === undefined) return 1;
        if (y === null || y === undefined) return -1;
        return (x < y ? -1 : 1) * dir;
      });
      head.replaceChildren(...cols.map((c) => el('th', {
        class: c.key === col.key ? 'sorted' + (state.asc ? ' asc' : '') : '',
        data: { key: c.key },
        onclick: () => {
          state.asc = state.key === c.key ? !state.asc : !c.num;
          state.key = c.key;
          draw();
        },
      }, c.label)));
      const frag = document.createDocumentFragment();
      for (const r of sorted) {
        const tr = el('tr', { class: onRow ? 'clickable' : '', onclick: onRow ? () => onRow(r, tr) : null });
        for (const c of cols) {
          const v = c.render ? c.render(r) : r[c.key];
          tr.append(el('td', { class: c.num ? 'num' : '' }, v));
        }
        frag.append(tr);
      }
      body.replaceChildren(frag);
    }
    t.append(el('thead', {}, head), body);
    draw();
    return t;
  }

  // ---- pages -------------------------------------------------------------------------------------
  function loginPage(message) {
    document.getElementById('top').hidden = true;
    const err = el('p', { class: 'error', id: 'login-error', text: message || '' });
    const user = el('input', { id: 'user', name: 'user', autocomplete: 'username', required: '' });
    const pass = el('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: '' });
    const form = el('form', { class: 'login', id: 'login-form' },
      el('h1', { text: 'vmmon: log in' }),
      el('label', { for: 'user', text: 'User' }), user,
      el('label', { for: 'password', text: 'Password' }), pass,
      el('button', { type: 'submit', id: 'login' }, 'Log in'), err);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      err.textContent = '';
      try {
        const a = await legacy(METHOD.login, { data: { user_name: user.value, password: pass.value } });
        if (a.status_code !== 1 || !a.session_id) { err.textContent = a.message; return; }
        S.sid = a.session_id;
        sessionStorage.setItem(SID_KEY, S.sid);
        if (!location.hash || location.hash === '#/login') location.hash = '#/fleet';
        else route();
      } catch (e) {
        err.textContent = String(e.message || e);
      }
    });
    show(form);
  }

  async function fleetPage() {
    const t0 = performance.now();
    const status = el('span', { class: 'note', id: 'fleet-count' });
    const filter = el('input', { type: 'search', id: 'fleet-filter', placeholder: 'filter: id, name, project, region, status' });
    const holder = el('div', { class: 'scroll' });
    show(el('h1', { text: 'Fleet' }), el('div', { class: 'toolbar' }, filter, status), holder);
    const f = await get('/ui/api/fleet');
    const state = { key: 'instance_id', asc: true };
    const cols = [
      { key: 'instance_id', label: 'Instance', render: (r) => el('a', { href: '#/vm/' + encodeURIComponent(r.instance_id), text: r.instance_id }) },
      { key: 'name', label: 'Name' },
      { key: 'status', label: 'Status', render: (r) => el('span', { class: 'status-' + r.status, text: r.status }) },
      { key: 'project', label: 'Project' },
      { key: 'region', label: 'Region' },
      { key: 'cpu_pct', label: 'CPU %', num: true, render: (r) => fmt(r.cpu_pct) },
      { key: 'cpu_spark', label: 'CPU, last hour', render: (r) => spark(r.cpu_spark) },
      { key: 'mem_pct', label: 'Memory %', num: true, render: (r) => fmt(r.mem_pct) },
      { key: 'dropped_samples', label: 'Dropped', num: true },
      { key: 'monitoring', label: 'Monitoring', render: (r) => (r.monitoring ? 'on' : 'off') },
      { key: 'interval_secs', label: 'Interval s', num: true },
    ];
    function draw() {
      const q = filter.value.trim().toLowerCase();
      const rows = q ? f.vms.filter((v) => [v.instance_id, v.name, v.project, v.region, v.status]
        .some((s) => String(s).toLowerCase().includes(q))) : f.vms;
      status.textContent = rows.length + ' of ' + f.vms.length + ' VMs';
      holder.replaceChildren(table(cols, rows, state, null, 'fleet-table'));
    }
    filter.addEventListener('input', draw);
    draw();
    T.fleetMs = performance.now() - t0;
    T.fleetSinceLoadMs = performance.now();
    T.fleetVms = f.vms.length;
    holder.dataset.ready = '1';
  }

  async function vmPage(id, procName, rangeKey) {
    rangeKey = RANGES[rangeKey] ? rangeKey : '1h';
    const head = el('h1', { id: 'vm-title', text: 'VM ' + id });
    const ranges = el('div', { class: 'toolbar', id: 'ranges' }, 'Range:',
      Object.keys(RANGES).map((k) => el('button', {
        type: 'button', class: 'range' + (k === rangeKey ? ' active' : ''), data: { range: k },
        onclick: () => { location.hash = '#/vm/' + encodeURIComponent(id) + '?range=' + k; },
      }, k)));
    const charts = el('div', { class: 'charts', id: 'vm-charts' });
    const control = el('div', { id: 'control-box' });
    const procsBox = el('div', { id: 'procs-box' });
    const procChart = el('div', { class: 'charts', id: 'proc-chart' });
    show(head, ranges, control, charts, el('h2', { text: 'Processes (newest sample)' }), procsBox, procChart);

    // VM facts: the fleet row (also proves the session may see this VM).
    const end = Date.now();
    const start = end - RANGES[rangeKey];
    const points = Math.min(1000, Math.max(100, Math.floor((charts.clientWidth || 1000) / 2)));
    const t0 = performance.now();
    const metrics = ['cpu', 'mem', 'disk_read', 'disk_write', 'net_in', 'net_out'];
    let series;
    try {
      series = await Promise.all(metrics.map((m) => get('/api/series?' + new URLSearchParams({
        instance_id: id, metric: m, start: String(start), end: String(end), points: String(points),
      }))));
    } catch (e) {
      show(el('h1', { text: 'VM ' + id }), el('p', { class: 'error', id: 'vm-error', text: e.message }));
      return;
    }
    const by = Object.fromEntries(series.map((s) => [s.metric, s]));
    const x = (s) => s.t_ms.map((t) => t / 1000);
    // Series of one chart share their steps (same window and step), so one x axis fits both.
    chart(charts, 'CPU', '%', x(by.cpu), [{ label: 'avg', values: by.cpu.avg }, { label: 'max', values: by.cpu.max, dash: [4, 3] }]);
    chart(charts, 'Memory', '%', x(by.mem), [{ label: 'avg', values: by.mem.avg }, { label: 'max', values: by.mem.max, dash: [4, 3] }]);
    const pair = (a, b) => {
      // Align b on a's steps (a step can be missing from one metric only if a sample lacked it).
      const m = new Map(b.t_ms.map((t, i) => [t, b.avg[i]]));
      return a.t_ms.map((t) => (m.has(t) ? m.get(t) : null));
    };
    chart(charts, 'Disk', 'KB/s', x(by.disk_read), [{ label: 'read', values: by.disk_read.avg }, { label: 'write', values: pair(by.disk_read, by.disk_write) }]);
    chart(charts, 'Network', 'KB/s', x(by.net_in), [{ label: 'in', values: by.net_in.avg }, { label: 'out', values: pair(by.net_in, by.net_out) }]);
    T.vmChartsMs = performance.now() - t0;
    T.vmRange = rangeKey;
    T.vmPoints = by.cpu.t_ms.length;
    T.vmSamples = by.cpu.count.reduce((a, b) => a + b, 0);
    charts.dataset.ready = '1';

    if (S.me && S.me.is_admin) control.append(controlBox(id));
    await processes(id, procsBox, procChart, procName);
  }

  function controlBox(id) {
    const result = el('span', { class: 'result', id: 'control-result' });
    const interval = el('input', { type: 'number', min: '1', max: '86400', id: 'interval', value: '30' });
    async function send(method, fields) {
      result.textContent = '…';
      const a = await legacy(method, Object.assign({ data: { instance_id: id } }, fields || {}));
      const words = { 1: 'queued', 2: 'confirmed', 3: 'failed', 4: 'silent' };
      result.textContent = 'status ' + a.status_code + ' (' + (words[a.status_code] || '?') + '): ' + a.message;
      result.dataset.status = String(a.status_code);
    }
    return el('div', { class: 'control' }, el('strong', { text: 'Agent control: ' }),
      el('button', { type: 'button', id: 'start-monitor', onclick: () => send(METHOD.start) }, 'Start monitoring'), ' ',
      el('button', { type: 'button', id: 'stop-monitor', onclick: () => send(METHOD.stop) }, 'Stop monitoring'), ' ',
      'interval (s) ', interval, ' ',
      el('button', { type: 'button', id: 'set-interval', onclick: () => send(METHOD.interval, { data: { instance_id: id, interval_secs: Number(interval.value) } }) }, 'Set interval'),
      result);
  }

  async function processes(id, box, chartBox, selected) {
    const a = await legacy(METHOD.procs, { data: { instance_id: id } });
    if (a.status_code === 3) { box.replaceChildren(el('p', { class: 'error', text: a.message })); return; }
    const rows = (a.data || []).map((p) => Object.assign({}, p, {
      disk: (p.disk_read || 0) + (p.disk_write || 0),
      net: (p.net_incoming || 0) + (p.net_outgoing || 0),
    }));
    const state = { key: 'cpu_util', asc: false };
    const cols = [
      { key: 'cmd', label: 'Process' },
      { key: 'pid', label: 'PID', num: true },
      { key: 'cpu_util', label: 'CPU %', num: true, render: (r) => fmt(r.cpu_util) },
      { key: 'mem', label: 'Memory %', num: true, render: (r) => fmt(r.mem) },
      { key: 'disk', label: 'Disk KB/s (r+w)', num: true, render: (r) => fmt(r.disk) },
      { key: 'net', label: 'Network KB/s (in+out)', num: true, render: (r) => fmt(r.net) },
    ];
    box.replaceChildren(
      el('p', { class: 'note', text: rows.length ? rows.length + ' processes; click one for its history' : 'no process sample yet (monitoring off?)' }),
      table(cols, rows, state, (r) => {
        location.hash = '#/vm/' + encodeURIComponent(id) + '/proc/' + encodeURIComponent(r.cmd);
      }, 'proc-table'));
    box.dataset.ready = '1';
    if (selected) await processHistory(id, selected, chartBox);
  }

  async function processHistory(id, name, box) {
    const a = await legacy(METHOD.procByName, { proc_name: name, limit: 720, data: { instance_id: id } });
    if (a.status_code === 3) { box.replaceChildren(el('p', { class: 'error', text: a.message })); return; }
    // Newest first from 611712; the chart wants oldest first. _id starts with epoch seconds.
    const recs = (a.data || []).slice().reverse();
    const x = recs.map((r) => parseInt(String(r._id).slice(0, 8), 16));
    box.replaceChildren();
    const title = el('h2', { id: 'proc-title', text: 'Process history: ' + name + ' (' + recs.length + ' records)' });
    box.before(title);
    chart(box, name + ' CPU', '%', x, [{ label: 'cpu', values: recs.map((r) => r.cpu_util) }]);
    chart(box, name + ' memory', '%', x, [{ label: 'mem', values: recs.map((r) => r.mem) }]);
    box.dataset.ready = '1';
  }

  async function projectsForPicker() {
    if (!S.me.is_admin) return [S.me.project];
    const f = await get('/ui/api/fleet');
    return Array.from(new Set(f.vms.map((v) => v.project))).sort();
  }

  async function bandwidthPage(project) {
    const projects = await projectsForPicker();
    project = project || projects[0] || '';
    const pick = el('select', { id: 'bw-project', onchange: () => { location.hash = '#/bandwidth/' + encodeURIComponent(pick.value); } },
      projects.map((p) => el('option', { value: p, text: p })));
    pick.value = project;
    const charts = el('div', { class: 'charts', id: 'bw-charts' });
    const monthly = el('div', { id: 'bw-monthly' });
    show(el('h1', { text: 'Bandwidth' }), el('div', { class: 'toolbar' }, 'Project:', pick,
      el('span', { class: 'note', text: 'last 24 hours, 10-minute buckets, collector local time' })), charts,
      el('h2', { text: 'Monthly peaks and totals' }), monthly);
    if (!project) { charts.append(el('p', { class: 'note', text: 'no project yet' })); return; }
    const q = new URLSearchParams({ project_id: project });
    const [d, m] = await Promise.all([get('/mana_api/flow?' + q), get('/mana_api/flow_monthly?' + q)]);
    // Sum the regions per bucket; local times are drawn as written (UTC axis, no shift).
    const by = new Map();
    for (const r of d.data) {
      const t = Date.parse(r.begin_rate_date.replace(' ', 'T') + 'Z') / 1000;
      const e = by.get(t) || { in: 0, out: 0 };
      e.in += (r.in_rate * 8) / 1e6;
      e.out += (r.out_rate * 8) / 1e6;
      by.set(t, e);
    }
    const ts = Array.from(by.keys()).sort((a, b) => a - b);
    chart(charts, 'Project ' + project + ' traffic', 'Mbit/s', ts,
      [{ label: 'in', values: ts.map((t) => by.get(t).in) }, { label: 'out', values: ts.map((t) => by.get(t).out) }], { utc: true });
    charts.dataset.ready = '1';
    const cols = [
      { key: 'date', label: 'Month' }, { key: 'region', label: 'Region' },
      { key: 'max_in_rate', label: 'Peak in (B/s)', num: true, render: (r) => fmt(r.max_in_rate) },
      { key: 'max_in_rate_date', label: 'at' },
      { key: 'max_out_rate', label: 'Peak out (B/s)', num: true, render: (r) => fmt(r.max_out_rate) },
      { key: 'max_out_rate_date', label: 'at' },
      { key: 'total_in', label: 'Total in', num: true, render: (r) => fmtBytes(r.total_in) },
      { key: 'total_out', label: 'Total out', num: true, render: (r) => fmtBytes(r.total_out) },
    ];
    monthly.replaceChildren(table(cols, m.monthly_data, { key: 'date', asc: false }, null, 'bw-monthly-table'));
    monthly.dataset.ready = '1';
  }

  async function ratingPage(params) {
    const now = new Date();
    const first = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1));
    const next = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1));
    const iso = (d) => d.toISOString().slice(0, 19);
    const begin = el('input', { id: 'rating-begin', value: params.get('begin') || iso(first) });
    const end = el('input', { id: 'rating-end', value: params.get('end') || iso(next) });
    const go = el('button', { type: 'button', id: 'rating-go', onclick: () => {
      location.hash = '#/rating?' + new URLSearchParams({ begin: begin.value, end: end.value });
    } }, 'Show');
    const total = el('p', { id: 'rating-total' });
    const box = el('div', { id: 'rating-summary' });
    show(el('h1', { text: 'Rating' }), el('div', { class: 'toolbar' }, 'Period (UTC) from', begin, 'to', end, go), total, box);
    const q = new URLSearchParams({ begin: begin.value, end: end.value });
    const [t, s] = await Promise.all([
      get('/v1/report/total?' + q),
      get('/v1/report/summary?' + q + '&groupby=tenant_id,res_type'),
    ]);
    total.textContent = 'Total: ' + t;
    const cols = [
      { key: 'tenant_id', label: 'Tenant' }, { key: 'res_type', label: 'Service' },
      { key: 'rate', label: 'Rate', num: true }, { key: 'begin', label: 'Begin' }, { key: 'end', label: 'End' },
    ];
    box.replaceChildren(s.summary.length ? table(cols, s.summary, { key: 'tenant_id', asc: true }, null, 'rating-table')
      : el('p', { class: 'note', text: 'nothing rated in this period' }));
    box.dataset.ready = '1';
  }

  async function cdnPage(user) {
    if (!S.me.is_admin) { show(el('p', { class: 'error', text: 'the CDN view needs an admin session' })); return; }
    const u = await get('/ui/api/cdn/users');
    user = user || (u.users[0] && u.users[0].name) || '';
    const pick = el('select', { id: 'cdn-user', onchange: () => { location.hash = '#/cdn/' + encodeURIComponent(pick.value); } },
      u.users.map((x) => el('option', { value: x.name, text: x.name + (x.revoked ? ' (revoked)' : '') })));
    pick.value = user;
    const charts = el('div', { class: 'charts', id: 'cdn-charts' });
    show(el('h1', { text: 'CDN' }), el('div', { class: 'toolbar' }, 'CDN user:', pick,
      el('span', { class: 'note', text: 'last 24 hours, 5-minute buckets' })), charts);
    if (!user) { charts.append(el('p', { class: 'note', text: 'no CDN user yet' })); return; }
    const f = await get('/ui/api/cdn?' + new URLSearchParams({ user: user }));
    for (const d of f.domains) {
      chart(charts, d.domain, 'Mbit/s', d.t_s, [
        { label: 'flow', values: d.bytes.map((b) => (b * 8) / 300 / 1e6) },
        { label: 'hit flow', values: d.hit_bytes.map((b) => (b * 8) / 300 / 1e6) },
      ]);
    }
    if (!f.domains.length) charts.append(el('p', { class: 'note', text: 'this user has no domain' }));
    charts.dataset.ready = '1';
  }

  // ---- routing ---------------------------------------------------------------------------------
  async function route() {
    const hash = location.hash.slice(1) || '/fleet';
    const [path, query] = hash.split('?');
    const params = new URLSearchParams(query || '');
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    if (!S.sid || parts[0] === 'login') { loginPage(); return; }
    try {
      if (!S.me) S.me = await get('/ui/api/me');
      document.getElementById('top').hidden = false;
      document.getElementById('who').textContent = S.me.name + (S.me.is_admin ? ' (admin)' : ' (' + S.me.project + ')');
      document.getElementById('nav-cdn').hidden = !S.me.is_admin;
      for (const a of document.querySelectorAll('header nav a')) {
        a.classList.toggle('active', a.getAttribute('href') === '#/' + parts[0]);
      }
      switch (parts[0]) {
        case 'vm': return await vmPage(parts[1], parts[2] === 'proc' ? parts[3] : null, params.get('range'));
        case 'bandwidth': return await bandwidthPage(parts[1]);
        case 'rating': return await ratingPage(params);
        case 'cdn': return await cdnPage(parts[1]);
        default: return await fleetPage();
      }
    } catch (e) {
      if (!S.sid) { loginPage(e.message); return; }
      show(el('p', { class: 'error', id: 'page-error', text: String(e.message || e) }));
    }
  }

  document.getElementById('logout').addEventListener('click', async () => {
    await legacy(METHOD.logout, {});
    forget();
    location.hash = '#/login';
  });
  window.addEventListener('hashchange', route);
  route();
})();
