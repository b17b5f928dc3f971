// Live dashboard of `push0 dashboard`. Every snapshot is complete, so each one
// re-renders the page from scratch: no client-side state beyond the connection.
'use strict';

(() => {
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const $ = (id) => document.getElementById(id);

  const ALERT_TEXT = {
    no_live_prover: 'no live prover — work is pending and no gateway of the team is alive',
    deadline_misses: 'deadline misses — the share of missed deadlines in the recent window is above the threshold',
  };

  let updates = 0;
  let rendered = false;

  // ---- DOM helpers: strings only ever become text nodes or attribute values.

  function build(node, attrs, kids) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      node.setAttribute(k === 'className' ? 'class' : k, v === true ? '' : String(v));
    }
    for (const kid of kids.flat()) {
      if (kid === null || kid === undefined || kid === false) continue;
      node.append(kid instanceof Node ? kid : String(kid));
    }
    return node;
  }
  const h = (tag, attrs, ...kids) => build(document.createElement(tag), attrs, kids);
  const s = (tag, attrs, ...kids) => build(document.createElementNS(SVG_NS, tag), attrs, kids);

  // ---- Formatting. Nulls show as a dash rather than a misleading 0.

  const DASH = '—';
  const num = (v) => (v === null || v === undefined ? DASH : String(v));
  const pct = (v) => (v === null || v === undefined ? DASH : `${Math.round(v * 100)} %`);

  function dur(ms) {
    if (ms === null || ms === undefined) return DASH;
    if (ms < 10) return `${ms.toFixed(1)} ms`;
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
    const m = Math.floor(ms / 60000);
    return `${m} min ${String(Math.round((ms % 60000) / 1000)).padStart(2, '0')} s`;
  }

  function bytes(n) {
    if (n === null || n === undefined) return DASH;
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(2)} MiB`;
  }

  // Ages are taken against the server's clock (now_ms), so a skewed browser clock
  // does not make blocks look old or from the future.
  function ago(ms) {
    const sec = Math.max(0, Math.floor(ms / 1000));
    if (sec < 60) return `${sec} s ago`;
    if (sec < 3600) return `${Math.floor(sec / 60)} min ago`;
    if (sec < 86400) return `${Math.floor(sec / 3600)} h ago`;
    return `${Math.floor(sec / 86400)} d ago`;
  }

  const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });
  const stamp = (ms) => new Date(ms).toLocaleString([], { hour12: false });

  function clip(text, max) {
    const t = String(text ?? '');
    return t.length > max ? `${t.slice(0, max - 1)}…` : t;
  }

  // ---- Connection state: the badge and body[data-state] always agree.

  const BADGE_TEXT = { live: 'live', disconnected: 'disconnected — retrying', loading: 'connecting…' };

  function setState(state) {
    document.body.dataset.state = state;
    const badge = $('badge');
    badge.textContent = BADGE_TEXT[state];
    badge.className = `badge ${state}`;
  }

  // ---- Sections.

  function renderHeader(snap) {
    $('prefix').textContent = snap.prefix ?? '';
    const t = $('updated');
    t.textContent = clock(snap.now_ms);
    t.dateTime = new Date(snap.now_ms).toISOString();
    t.title = stamp(snap.now_ms);
  }

  function renderAlerts(teams) {
    const items = [];
    for (const team of teams) {
      for (const alert of team.alerts || []) {
        items.push(h('li', { 'data-alert': alert, 'data-team': team.name },
          h('strong', null, team.name), `: ${ALERT_TEXT[alert] ?? alert}`));
      }
    }
    $('alert-list').replaceChildren(...items);
    $('alerts').hidden = items.length === 0;
    document.title = items.length ? `(${items.length}) push0 dashboard` : 'push0 dashboard';
  }

  function stat(label, value, cls) {
    return h('div', { className: cls }, h('dt', null, label), h('dd', null, value));
  }

  function renderTeams(snap) {
    const cards = snap.teams.map((t) => {
      const alerting = (t.alerts || []).length > 0;
      return h('article', { className: alerting ? 'team alerting' : 'team', 'data-team-card': t.name },
        h('header', null,
          h('h3', null, t.name),
          h('span', { className: 'tag' }, t.mode),
          h('span', { className: 'tag' }, t.shape),
          h('span', { className: t.proof_system ? 'tag' : 'tag sim' }, t.proof_system ?? 'simulated')),
        h('dl', { className: 'stats' },
          stat('proved', [h('span', { 'data-proved': t.name }, num(t.proved)), ` / ${num(t.submitted)}`]),
          stat('≤ 10 s', pct(t.within_10s)),
          stat('liveness', pct(t.liveness)),
          stat('stuck', num(t.stuck), t.stuck > 0 ? 'warn' : null),
          stat('gateways', num(t.live_gateways), t.live_gateways === 0 ? 'warn' : null),
          stat('busy / slots', `${num(t.busy_slots)} / ${num(t.live_slots)}`),
          stat('queued', num(t.queued)),
          stat('verified', t.verified ? 'yes' : 'no')),
        chart(t.series || [], snap.now_ms));
    });
    $('teams').replaceChildren(...(cards.length ? cards : [h('p', { className: 'empty' }, 'no teams')]));
  }

  // Bars: proofs per bucket. Line: p50 latency on its own scale, broken where a
  // bucket proved nothing (no latency is not zero latency).
  const CW = 300;
  const CH = 64;

  function chart(series, nowMs) {
    const box = h('figure', { className: 'chart' });
    if (series.length === 0) {
      box.append(h('p', { className: 'empty' }, 'no data yet'));
      return box;
    }
    const maxProved = Math.max(1, ...series.map((b) => b.proved || 0));
    const lat = series.map((b) => b.latency_p50_ms).filter((v) => v !== null && v !== undefined);
    const maxLat = lat.length ? Math.max(...lat) : 0;
    const step = CW / series.length;
    const yLat = (v) => CH - 3 - (v / maxLat) * (CH - 8);

    const svg = s('svg', { viewBox: `0 0 ${CW} ${CH}`, role: 'img',
      'aria-label': `proofs per 10 s (max ${maxProved}) and p50 latency (max ${dur(maxLat || null)})` });
    svg.append(s('line', { x1: 0, y1: CH - 0.5, x2: CW, y2: CH - 0.5, className: 'axis' }));

    series.forEach((b, i) => {
      const bh = ((b.proved || 0) / maxProved) * (CH - 4);
      if (bh > 0) svg.append(s('rect', { x: i * step + 1, y: CH - bh, width: Math.max(1, step - 2), height: bh, className: 'bar' }));
    });

    let d = '';
    let pen = false;
    series.forEach((b, i) => {
      const v = b.latency_p50_ms;
      if (v === null || v === undefined || !maxLat) { pen = false; return; }
      d += `${pen ? 'L' : 'M'}${(i * step + step / 2).toFixed(1)} ${yLat(v).toFixed(1)}`;
      pen = true;
    });
    if (d) svg.append(s('path', { d, className: 'lat' }));
    // Dots so a lone bucket with a latency is still visible.
    series.forEach((b, i) => {
      const v = b.latency_p50_ms;
      if (v !== null && v !== undefined && maxLat) {
        svg.append(s('circle', { cx: i * step + step / 2, cy: yLat(v), r: 1.8, className: 'lat-dot' }));
      }
    });

    // Invisible full-height targets on top carry the per-bucket tooltip, so empty buckets can be hovered too.
    series.forEach((b, i) => {
      const tip = `${clock(b.start_ms)} · ${b.proved || 0} proved · p50 ${dur(b.latency_p50_ms)} · overhead p50 ${dur(b.overhead_p50_ms)}`;
      svg.append(s('rect', { x: i * step, y: 0, width: step, height: CH, className: 'hit' }, s('title', null, tip)));
    });

    box.append(
      h('div', { className: 'legend' },
        h('span', { className: 'key-bar', title: 'proofs per 10 s bucket' }, `proofs/10 s · max ${maxProved}`),
        h('span', { className: 'key-lat', title: 'median latency, submission to proof' }, `p50 · max ${dur(maxLat || null)}`)),
      svg,
      h('div', { className: 'axis-x' },
        h('span', null, `${Math.max(1, Math.round((nowMs - series[0].start_ms) / 60000))} min ago`),
        h('span', null, 'now')));
    return box;
  }

  function cell(team, c) {
    if (!c) return h('td', { 'data-team': team, 'data-state': 'unplanned', className: 'cell', title: 'not planned yet' },
      h('span', { className: 'none' }, DASH));
    const meta = [];
    if (c.proving_ms !== null && c.proving_ms !== undefined) meta.push(h('span', { title: 'proving time' }, dur(c.proving_ms)));
    if (c.overhead_ms !== null && c.overhead_ms !== undefined) meta.push(h('span', { title: 'overhead (latency − proving time)' }, `+${dur(c.overhead_ms)}`));
    if (c.proof_bytes !== null && c.proof_bytes !== undefined) meta.push(h('span', { title: 'proof size' }, bytes(c.proof_bytes)));
    if (c.verified === true) meta.push(h('span', { className: 'ok', title: 'proof verified' }, '✓'));
    if (c.verified === false) meta.push(h('span', { className: 'bad', title: 'proof failed verification' }, '✗'));
    const title = c.latency_ms !== null && c.latency_ms !== undefined ? `latency ${dur(c.latency_ms)}` : null;
    return h('td', { 'data-team': team, 'data-state': c.state, className: 'cell', title },
      h('span', { className: `pill s-${c.state}` }, c.state),
      meta.length ? h('div', { className: 'cell-meta' }, meta) : null);
  }

  function renderBlocks(snap) {
    const names = snap.teams.map((t) => t.name);
    $('blocks-head').replaceChildren(h('th', null, 'block'), ...names.map((n) => h('th', null, n)));
    const rows = snap.blocks.map((b) => {
      const cells = b.cells || {};
      return h('tr', { className: 'block', 'data-chain': b.chain, 'data-number': b.number },
        h('td', { className: 'block-id' },
          h('strong', null, `${b.chain}/${b.number}`),
          h('div', { className: 'cell-meta' },
            h('code', { title: b.hash }, clip(b.hash, 10)),
            h('span', { title: stamp(b.submitted_at_ms) }, ago(snap.now_ms - b.submitted_at_ms)))),
        ...names.map((n) => cell(n, cells[n])));
    });
    if (rows.length === 0) rows.push(h('tr', null, h('td', { className: 'empty', colspan: names.length + 1 }, 'no blocks yet')));
    $('blocks').replaceChildren(...rows);
  }

  function renderDeadLetters(list) {
    const rows = list.map((d) => h('tr', { className: 'dead-letter', title: d.task ? `task ${d.task}` : null },
      h('td', { title: stamp(d.at_ms) }, clock(d.at_ms)),
      h('td', null, d.service),
      h('td', null, h('span', { className: 'reason' }, d.reason)),
      h('td', null, d.team ?? DASH),
      h('td', null, d.block ?? DASH),
      h('td', { className: 'detail', title: d.detail ?? '' }, clip(d.detail, 160))));
    if (rows.length === 0) rows.push(h('tr', null, h('td', { className: 'empty', colspan: 6 }, 'none')));
    $('dead-letters').replaceChildren(...rows);
  }

  function render(snap) {
    snap.teams = snap.teams || [];
    snap.blocks = snap.blocks || [];
    renderHeader(snap);
    renderAlerts(snap.teams);
    renderTeams(snap);
    renderBlocks(snap);
    renderDeadLetters(snap.dead_letters || []);
    rendered = true;
    updates += 1;
    $('updates').textContent = String(updates);
  }

  // ---- Data flow: one fetch for the first paint, then the event stream.

  function onState(ev) {
    let snap;
    try {
      snap = JSON.parse(ev.data);
    } catch (err) {
      console.warn('dashboard: bad snapshot', err);
      return;
    }
    setState('live');
    render(snap);
  }

  let retry = null;
  function connect() {
    const es = new EventSource('events');
    es.addEventListener('state', onState);
    es.addEventListener('error', () => {
      setState('disconnected');
      // The browser retries by itself unless the server answered with an error
      // status or a wrong content type; then the source is closed for good.
      if (es.readyState === EventSource.CLOSED && retry === null) {
        retry = setTimeout(() => { retry = null; connect(); }, 3000);
      }
    });
  }

  fetch('api/state', { cache: 'no-store' })
    .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`HTTP ${r.status}`))))
    // A stream event may have landed first; it is at least as new, so keep it.
    .then((snap) => { if (!rendered) render(snap); })
    .catch((err) => console.warn('dashboard: first snapshot', err));
  connect();
})();
