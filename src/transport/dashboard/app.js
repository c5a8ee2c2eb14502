'use strict';
// The dashboard page: polls /dashboard/api/overview every 2 s and redraws. The browser sends
// the Basic credentials it was given for the page with every request.
(function () {
  const POLL_MS = 2000;
  let lastFailed = null;
  const $ = (id) => document.getElementById(id);
  const fmt = (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US', { maximumFractionDigits: 1 }));

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function row(cells) {
    const tr = document.createElement('tr');
    for (const c of cells) {
      if (c instanceof Node) { const td = el('td'); td.appendChild(c); tr.appendChild(td); continue; }
      const td = el('td', c.text !== undefined ? c.text : c, c.cls);
      tr.appendChild(td);
    }
    return tr;
  }

  function fill(tableId, rows, columns) {
    const body = $(tableId).querySelector('tbody');
    body.replaceChildren();
    if (!rows.length) {
      const tr = document.createElement('tr');
      const td = el('td', 'nothing yet', 'empty');
      td.colSpan = columns;
      tr.appendChild(td);
      body.appendChild(tr);
      return;
    }
    for (const r of rows) body.appendChild(r);
  }

  function figures(listId, pairs) {
    const dl = $(listId);
    dl.replaceChildren();
    for (const [label, value] of pairs) {
      const d = el('div');
      d.appendChild(el('dt', label));
      d.appendChild(el('dd', fmt(value)));
      dl.appendChild(d);
    }
  }

  function uptime(s) {
    if (s < 120) return `${s} s`;
    if (s < 7200) return `${Math.floor(s / 60)} min`;
    if (s < 172800) return `${Math.floor(s / 3600)} h`;
    return `${Math.floor(s / 86400)} d`;
  }

  // A line chart of `values` (one per sample) drawn into an SVG, scaled to its own peak.
  function chart(svgId, values) {
    const svg = $(svgId);
    const W = 600, H = 140, PAD = 16;
    const ns = 'http://www.w3.org/2000/svg';
    svg.replaceChildren();
    const peak = Math.max(1, ...values);
    svg.dataset.peak = String(Math.max(0, ...values, 0));
    svg.dataset.points = String(values.length);
    const label = document.createElementNS(ns, 'text');
    label.setAttribute('x', '4'); label.setAttribute('y', '12');
    label.textContent = `peak ${fmt(Math.max(0, ...values, 0))}`;
    svg.appendChild(label);
    if (values.length < 2) return;
    const step = W / (values.length - 1);
    const pts = values.map((v, i) => `${(i * step).toFixed(1)},${(H - (v / peak) * (H - PAD)).toFixed(1)}`);
    const area = document.createElementNS(ns, 'polygon');
    area.setAttribute('points', `0,${H} ${pts.join(' ')} ${W},${H}`);
    svg.appendChild(area);
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('points', pts.join(' '));
    svg.appendChild(line);
  }

  async function post(path, raw) {
    const res = await fetch(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-dashboard': '1' },
      body: JSON.stringify({ raw }),
    });
    if (!res.ok) throw new Error(`${res.status} ${await res.text()}`);
    return res.json();
  }

  function failedRow(entry) {
    const actions = el('span');
    const retry = el('button', 'retry');
    retry.dataset.action = 'retry';
    retry.addEventListener('click', async () => {
      if (!window.confirm(`Retry task ${entry.task || entry.id || ''}? It goes back to the queue.`)) return;
      await act('/dashboard/api/failed/retry', entry.raw);
    });
    const remove = el('button', 'remove', 'danger');
    remove.dataset.action = 'remove';
    remove.addEventListener('click', async () => {
      if (!window.confirm(`Remove task ${entry.task || entry.id || ''} from the dead letter for good?`)) return;
      await act('/dashboard/api/failed/remove', entry.raw);
    });
    actions.append(retry, ' ', remove);
    const when = entry.failedAt ? new Date(entry.failedAt).toLocaleTimeString() : '–';
    return row([actions, entry.task || '(unreadable)', entry.reason, { text: entry.error || '', cls: 'wrap' }, entry.node, when]);
  }

  async function act(path, raw) {
    try {
      await post(path, raw);
    } catch (err) {
      $('status').textContent = `action failed: ${err.message}`;
      $('status').className = 'status bad';
    }
    refresh();
  }

  function render(d) {
    $('node').textContent = `node ${d.node} · ${d.layout}`;
    const s = d.series;
    chart('chart-published', s.published);
    chart('chart-delivered', s.delivered);
    chart('chart-connections', s.connections);
    const last = (a) => (a.length ? a[a.length - 1] : 0);
    $('now-published').textContent = fmt(last(s.published));
    $('now-delivered').textContent = fmt(last(s.delivered));
    $('now-connections').textContent = fmt(last(s.connections));

    $('node-count').textContent = `(${d.nodes.length})`;
    fill('nodes', d.nodes.map((n) => {
      const c = n.connections || {};
      const tr = row([n.id, n.layout, uptime(n.uptimeSeconds),
        { text: fmt(c.websocket), cls: 'num' }, { text: fmt(c['long-polling']), cls: 'num' },
        { text: fmt(c.eventsource), cls: 'num' }, { text: fmt(c['callback-polling']), cls: 'num' },
        { text: fmt(n.clients), cls: 'num' }, { text: fmt(n.subscriptions), cls: 'num' },
        { text: fmt(n.publishRate), cls: 'num' }, { text: fmt(n.deliveryRate), cls: 'num' }]);
      tr.dataset.node = n.id;
      return tr;
    }), 11);

    fill('channels-subscribers', d.channels.bySubscribers.map((c) =>
      row([c.channel, { text: fmt(c.subscribers), cls: 'num' }, { text: fmt(c.publishRate), cls: 'num' }])), 3);
    fill('channels-rate', d.channels.byPublishRate.map((c) =>
      row([c.channel, { text: fmt(c.publishRate), cls: 'num' }, { text: fmt(c.subscribers), cls: 'num' }])), 3);

    const t = d.tasks;
    if (t.error) {
      figures('queues', [['unavailable', null]]);
    } else {
      const q = t.queues;
      const pairs = [['global', q.global], ['delayed', q.delayed], ['processing', q.processing], ['dead letter', q.failed]];
      for (const [node, n] of Object.entries(q.local || {})) pairs.push([`local ${node}`, n]);
      figures('queues', pairs);
      const workers = $('workers');
      workers.replaceChildren();
      const entries = Object.entries(t.workers || {});
      if (!entries.length) workers.appendChild(el('li', 'none running', 'empty'));
      for (const [w, status] of entries) workers.appendChild(el('li', `${w}: ${status}`));
      $('failed-count').textContent = `(${q.failed})`;
      // Rebuilt only when it changed, so a button is not replaced under the pointer.
      const key = JSON.stringify(t.failed.map((f) => f.raw));
      if (key !== lastFailed) {
        lastFailed = key;
        fill('failed', t.failed.map(failedRow), 6);
      }
    }

    $('room-count').textContent = `(${d.rooms.total})`;
    fill('rooms', d.rooms.rooms.map((r) => row([r.room, { text: fmt(r.members), cls: 'num' }])), 2);

    const r = d.redis;
    figures('redis', r.configured
      ? [['round trip ms', r.latencyMs], ['reconnects', r.reconnects], ['failed calls', r.failures]]
      : [['memory engine', null]]);
  }

  async function refresh() {
    try {
      const res = await fetch('/dashboard/api/overview', { cache: 'no-store' });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      render(await res.json());
      $('status').textContent = `updated ${new Date().toLocaleTimeString()}`;
      $('status').className = 'status';
    } catch (err) {
      $('status').textContent = `cannot refresh: ${err.message}`;
      $('status').className = 'status bad';
    }
  }

  $('channel-search').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const name = $('channel-name').value.trim();
    if (!name) return;
    try {
      const res = await fetch(`/dashboard/api/channel?name=${encodeURIComponent(name)}`);
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const c = await res.json();
      $('channel-result').textContent =
        `${c.channel}: ${fmt(c.subscribers)} subscribers, ${fmt(c.publishRate)} publishes/s, ${fmt(c.published)} published here`;
    } catch (err) {
      $('channel-result').textContent = `cannot look it up: ${err.message}`;
    }
  });

  refresh();
  setInterval(refresh, POLL_MS);
})();
