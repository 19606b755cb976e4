// graygate console (spec §12). Plain JavaScript, no library, no outside request: it reads the
// admin JSON endpoints next to it (config, rollouts, history) every two seconds and draws them.
// Everything the gateway names (clusters, rules, reasons) is inserted as text, never as HTML.
// With admin_token_file the token is asked once, kept in this tab's sessionStorage, and sent as
// a bearer header on every request; fetches never carry cookies (credentials: "omit").
'use strict';
(() => {
  const POLL_MS = 2000;
  const STALE_MS = 6000;
  const TOKEN_KEY = 'graygate.admin-token';
  const SVG_NS = 'http://www.w3.org/2000/svg';

  let token = null;
  try { token = sessionStorage.getItem(TOKEN_KEY); } catch (_) { /* storage off: memory only */ }
  let timer = null;
  let waitingForToken = false;
  let lastOk = 0;
  let lastError = '';

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    setAttrs(e, attrs);
    for (const k of kids.flat(Infinity)) {
      if (k === null || k === undefined || k === false) continue;
      e.append(k instanceof Node ? k : String(k));
    }
    return e;
  }
  function svg(tag, attrs, ...kids) {
    const e = document.createElementNS(SVG_NS, tag);
    setAttrs(e, attrs);
    for (const k of kids.flat(Infinity)) {
      if (k === null || k === undefined || k === false) continue;
      e.append(k instanceof Node ? k : String(k));
    }
    return e;
  }
  function setAttrs(e, attrs) {
    if (!attrs) return;
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
  }

  // ---- formatting -------------------------------------------------------------------------
  function pct(x) {
    if (x === null || x === undefined || Number.isNaN(x)) return '–';
    const v = x * 100;
    const s = v.toFixed(Math.abs(v) < 10 && v !== 0 ? 2 : 1);
    return s.replace(/\.?0+$/, '') + '%';
  }
  function int(n) { return (n === null || n === undefined) ? '–' : Number(n).toLocaleString('en-US'); }
  function ms(v) { return (v === null || v === undefined) ? '–' : (v >= 100 ? v.toFixed(0) : v.toFixed(1)) + ' ms'; }
  function dur(s) {
    if (s === null || s === undefined || !Number.isFinite(s)) return '–';
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm ' + String(s % 60).padStart(2, '0') + 's';
    return Math.floor(s / 3600) + 'h ' + String(Math.floor(s / 60) % 60).padStart(2, '0') + 'm';
  }
  function clock(at) {
    const d = new Date(at);
    return Number.isNaN(d.getTime()) ? String(at) : d.toLocaleTimeString('en-GB', { hour12: false });
  }
  function badge(state, text) {
    return el('span', { class: 'badge s-' + String(state).replace(/[^a-z_]/gi, ''), text: text || state });
  }

  // ---- requests ---------------------------------------------------------------------------
  async function api(path, method, body) {
    const headers = {};
    if (token) headers.Authorization = 'Bearer ' + token;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const ctl = new AbortController();
    const t = setTimeout(() => ctl.abort(), 5000);
    try {
      const r = await fetch(path, {
        method: method || 'GET', headers, cache: 'no-store', credentials: 'omit',
        redirect: 'error', signal: ctl.signal,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await r.text();
      let data = null;
      try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: text }; }
      return { status: r.status, data };
    } finally {
      clearTimeout(t);
    }
  }

  // ---- the token prompt -------------------------------------------------------------------
  function showLogin(message) {
    waitingForToken = true;
    $('console').hidden = true;
    $('summary').hidden = true;
    $('login').hidden = false;
    $('login-error').hidden = !message;
    $('login-error').textContent = message || '';
    setLive('token required', false);
    $('token').focus();
  }
  function showConsole() {
    waitingForToken = false;
    $('login').hidden = true;
    $('console').hidden = false;
    $('summary').hidden = false;
  }
  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = $('token').value.trim();
    if (!v) return;
    token = v;
    try { sessionStorage.setItem(TOKEN_KEY, v); } catch (_) { /* memory only */ }
    $('token').value = '';
    tick();
  });
  function forgetToken() {
    token = null;
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* nothing kept */ }
  }

  function setLive(text, ok) {
    const l = $('live');
    l.textContent = text;
    l.className = 'live ' + (ok ? 'ok' : 'stale');
  }

  // ---- polling ----------------------------------------------------------------------------
  async function refresh() {
    let cfg;
    try {
      cfg = await api('config');
    } catch (e) {
      lastError = 'no answer from the gateway';
      return;
    }
    if (cfg.status === 401) {
      const refused = token !== null;
      forgetToken();
      showLogin(refused ? 'That token was refused.' : null);
      return;
    }
    if (cfg.status !== 200 || !cfg.data) {
      lastError = 'config: HTTP ' + cfg.status;
      return;
    }
    showConsole();
    const [ro, hi] = await Promise.all([
      api('rollouts').catch(() => null),
      api('history').catch(() => null),
    ]);
    renderSummary(cfg.data);
    renderClusters(cfg.data);
    renderRules(cfg.data);
    renderRollouts(ro);
    renderHistory(hi);
    lastOk = Date.now();
    lastError = '';
  }
  async function tick() {
    clearTimeout(timer);
    try {
      await refresh();
    } catch (e) {
      lastError = String(e && e.message ? e.message : e);
    }
    if (!waitingForToken) timer = setTimeout(tick, POLL_MS);
    everySecond();
  }
  function everySecond() {
    if (!waitingForToken) {
      const age = Date.now() - lastOk;
      if (lastOk && age < STALE_MS) setLive('live · ' + clock(lastOk), true);
      else setLive(lastError || (lastOk ? 'no answer since ' + clock(lastOk) : 'connecting…'), false);
    }
    for (const e of document.querySelectorAll('[data-deadline]')) {
      const left = (Number(e.getAttribute('data-deadline')) - Date.now()) / 1000;
      e.textContent = left > 0 ? dur(left) : 'now';
    }
  }
  setInterval(everySecond, 1000);

  // ---- summary and last reload ------------------------------------------------------------
  function renderSummary(cfg) {
    $('generation').textContent = cfg.generation;
    $('loaded').textContent = 'loaded ' + clock(cfg.loaded_at);
    $('loaded').title = cfg.loaded_at + ' · ' + cfg.path;
    $('sha').textContent = String(cfg.sha256 || '').slice(0, 12);
    $('sha').title = 'sha256 ' + cfg.sha256;
    const r = cfg.reloads || {};
    const restart = (cfg.restart_needed || []).length ? ' · restart needed for: ' + cfg.restart_needed.join(', ') : '';
    $('reloads').textContent = 'reloads ' + int(r.success) + ' ok, ' + int(r.failure) + ' failed' + restart;
    const errs = cfg.last_reload_error;
    $('reload-error').hidden = !errs;
    if (errs) {
      $('reload-errors').replaceChildren(...errs.map((e) => el('li', {
        text: e.text || ((e.line ? e.line + ':' + e.column + ': ' : '') + e.message),
      })));
    }
  }

  // ---- clusters ---------------------------------------------------------------------------
  function renderClusters(cfg) {
    const rows = (cfg.clusters || []).map((c) => el('tr', { 'data-cluster': c.name },
      el('td', null,
        el('b', { class: 'name', text: c.name }),
        c.embedded ? el('div', { class: 'muted small', text: 'embedded ' + c.embedded.label + ' ×' + c.embedded.instances }) : null,
        c.fallback ? el('div', { class: 'muted small', text: 'fallback → ' + c.fallback }) : null),
      el('td', null, badge(c.state), c.healthy ? null : [' ', badge('down', 'no healthy endpoint')]),
      el('td', null, el('ul', { class: 'eps' }, (c.endpoints || []).map((e) => el('li', { title: e.reason || '' },
        el('span', { class: 'dot ' + (e.healthy ? 'up' : 'down') }),
        el('span', { class: 'mono', text: e.url }),
        e.healthy ? null : el('span', { class: 'muted small', text: ' ' + (e.reason || 'down') }),
        e.inflight ? el('span', { class: 'muted small', text: ' · ' + e.inflight + ' in flight' }) : null)))),
      el('td', { class: 'num pinned', text: int(c.pinned_calls) }),
      el('td', { class: 'num inflight', text: int(c.inflight) })));
    $('clusters').tBodies[0].replaceChildren(...rows);
  }

  // ---- rules with configured and observed shares ------------------------------------------
  function matches(r) {
    const parts = [];
    if (r.vdn) parts.push('vdn ' + r.vdn.join(', '));
    if (r.userid) parts.push('userid');
    if (r.fields) parts.push(r.fields + (r.fields === 1 ? ' field' : ' fields'));
    if (r.headers && r.headers.length) parts.push('headers ' + r.headers.join(', '));
    return parts.length ? parts.join(' · ') : 'every call';
  }
  // Observed far from configured: more than three standard errors and a point apart.
  function off(configured, observed, n) {
    if (mixed || observed === null || observed === undefined || n < 50) return false;
    const se = Math.sqrt(Math.max(configured * (1 - configured), 0.0001) / n);
    return Math.abs(observed - configured) > 3 * se + 0.01;
  }
  function ruleRows(name, what, shares, isDefault) {
    const list = (shares && shares.clusters) || [];
    const total = shares ? shares.calls : 0;
    if (!list.length) {
      return [el('tr', { 'data-rule': name }, el('td', null, el('b', { text: name })), el('td', { class: 'small hide-narrow', text: what }), el('td', { text: '–' }), el('td'), el('td'), el('td'))];
    }
    return list.map((c, i) => {
      const obs = c.observed;
      const bar = el('span', { class: 'sharebar' }, el('span'));
      bar.firstChild.style.width = Math.round(Math.min(1, obs || 0) * 100) + '%';
      return el('tr', { class: i ? 'sub' : null, 'data-rule': name, 'data-cluster': c.cluster },
        el('td', null, i ? name : el('b', { class: isDefault ? 'muted' : null, text: name })),
        el('td', { class: 'small hide-narrow', text: i ? '' : what }),
        el('td', { text: c.cluster }),
        el('td', { class: 'num configured', text: pct(c.configured) }),
        el('td', { class: 'num observed' + (off(c.configured, obs, total) ? ' off' : ''), title: obs === null ? 'no new call in the window' : c.calls + ' of ' + total + ' new calls' },
          obs === null ? '–' : pct(obs), bar),
        el('td', { class: 'num calls', text: int(c.calls) }));
    });
  }
  let mixed = false; // the window reaches back before the running generation
  function renderRules(cfg) {
    const w = cfg.observed_window_seconds;
    const since = (Date.now() - new Date(cfg.loaded_at).getTime()) / 1000;
    mixed = cfg.generation > 1 && since < w;
    $('window').textContent = w
      ? '· observed: share of new calls over the last ' + (w % 60 ? dur(w) : w / 60 + ' min') +
        (mixed ? ', including calls before generation ' + cfg.generation + ' (loaded ' + dur(since) + ' ago)' : '')
      : '';
    const rows = [];
    for (const r of cfg.rules || []) rows.push(...ruleRows(r.name, matches(r), r.shares, false));
    rows.push(...ruleRows('default', 'no rule matched', cfg.default_shares, true));
    $('rules').tBodies[0].replaceChildren(...rows);
  }

  // ---- rollouts ---------------------------------------------------------------------------
  const cards = new Map();
  function renderRollouts(ro) {
    const none = $('rollouts-none');
    const box = $('rollouts');
    let list = [];
    if (!ro) {
      none.textContent = 'Rollouts could not be read.';
    } else if (ro.status === 404) {
      none.textContent = 'This gateway has no rollouts.';
    } else if (ro.status !== 200 || !ro.data || !Array.isArray(ro.data.rollouts)) {
      none.textContent = 'Rollouts: HTTP ' + ro.status;
    } else {
      list = ro.data.rollouts;
      none.textContent = list.length ? '' : 'No rollout rule in this config.';
    }
    none.hidden = list.length > 0;
    const seen = new Set();
    for (const r of list) {
      seen.add(r.name);
      let card = cards.get(r.name);
      if (!card) {
        card = makeCard(r.name);
        cards.set(r.name, card);
      }
      updateCard(card, r);
      box.append(card.root); // keeps the order of the answer
    }
    for (const [name, card] of cards) {
      if (!seen.has(name)) {
        card.root.remove();
        cards.delete(name);
      }
    }
  }

  function makeCard(name) {
    const card = { name, status: null };
    card.body = el('div');
    card.msg = el('span', { class: 'action-msg muted', role: 'status' });
    const act = (action) => el('button', {
      type: 'button', 'data-action': action, 'data-rollout': name, text: action,
      onclick: () => (action === 'abort' ? openAbort(card) : send(card, action)),
    });
    card.buttons = { pause: act('pause'), resume: act('resume'), promote: act('promote'), abort: act('abort') };
    card.buttons.abort.classList.add('danger');
    card.reason = el('input', { type: 'text', placeholder: 'why abort? (kept in the history)', 'data-reason': name, maxlength: 500 });
    card.abortForm = el('form', { class: 'abort-form', hidden: true, 'data-abort-form': name },
      card.reason,
      el('button', { type: 'submit', class: 'danger', 'data-action': 'abort-confirm', 'data-rollout': name, text: 'abort the rollout' }),
      el('button', { type: 'button', text: 'cancel', onclick: () => { card.abortForm.hidden = true; } }));
    card.abortForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const reason = card.reason.value.trim();
      if (!reason) { card.reason.focus(); return; }
      send(card, 'abort', { reason });
    });
    card.chart = el('div');
    card.root = el('div', { class: 'rollout', 'data-rollout': name },
      card.body,
      el('div', { class: 'actions' }, Object.values(card.buttons), card.msg),
      card.abortForm,
      card.chart);
    return card;
  }
  function openAbort(card) {
    card.abortForm.hidden = false;
    card.reason.focus();
  }
  async function send(card, action, body) {
    for (const b of Object.values(card.buttons)) b.disabled = true;
    card.msg.textContent = action + '…';
    let r;
    try {
      r = await api('rollouts/' + encodeURIComponent(card.name) + '/' + action, 'POST', body === undefined ? {} : body);
    } catch (e) {
      card.msg.textContent = action + ' failed: no answer';
      enableButtons(card);
      return;
    }
    if (r.status === 200) {
      card.msg.textContent = action + ': done';
      if (action === 'abort') { card.abortForm.hidden = true; card.reason.value = ''; }
    } else if (r.status === 401) {
      forgetToken();
      showLogin('The token was refused.');
      return;
    } else {
      card.msg.textContent = action + ' refused (HTTP ' + r.status + ')' + (r.data && r.data.error ? ': ' + r.data.error : '');
    }
    tick();
  }
  const ALLOWED = {
    running: ['pause', 'promote', 'abort'],
    paused: ['resume', 'promote', 'abort'],
    aborted: ['resume'],
    completed: [],
  };
  function enableButtons(card) {
    const ok = ALLOWED[card.status] || [];
    for (const [a, b] of Object.entries(card.buttons)) b.disabled = !ok.includes(a);
  }

  function stepWait(r) {
    if (r.status === 'completed') return el('span', { text: 'completed: every new call goes to ' + r.to });
    if (r.status === 'aborted') return el('span', { class: 'holds', text: 'aborted: every new call goes to ' + r.from });
    if (r.status === 'paused') return el('span', { text: 'paused: the share stays until resume' });
    const s = r.sides || {};
    const short = ['from', 'to'].filter((k) => s[k] && s[k].ended < r.min_calls);
    if (r.may_advance_in_seconds === null || r.may_advance_in_seconds === undefined) {
      if (short.length) return el('span', { text: 'waiting for ' + int(r.min_calls) + ' ended calls on each side' });
      if (r.advance === 'manual') return el('span', { text: 'waiting for an operator to resume' });
      return el('span', { text: 'judging' });
    }
    if (r.may_advance_in_seconds <= 0) return el('span', { text: 'may advance now' });
    return [el('span', { text: 'next step in ' }),
      el('b', { class: 'countdown', 'data-deadline': Date.now() + r.may_advance_in_seconds * 1000, text: dur(r.may_advance_in_seconds) })];
  }
  function share(side, k) {
    if (!side || !side.ended) return '–';
    return pct(side[k] / side.ended);
  }
  function updateCard(card, r) {
    card.status = r.status;
    const steps = r.steps || [];
    const ladder = el('ol', { class: 'ladder', 'aria-label': 'steps' }, steps.map((s, i) => {
      let cls = 'todo';
      if (r.status === 'completed' || i < r.step_index) cls = 'done';
      else if (i === r.step_index) cls = 'current ' + r.status;
      return el('li', { class: cls, 'data-step': s, 'aria-current': i === r.step_index ? 'step' : null, text: s + '%' });
    }));
    const s = r.sides || {};
    const sideRow = (k) => {
      const v = s[k] || {};
      return el('tr', { 'data-side': k },
        el('td', null, el('b', { text: k }), ' ', v.cluster || ''),
        el('td', { class: 'num ended', text: int(v.ended) + (r.min_calls ? ' / ' + int(r.min_calls) : '') }),
        el('td', { class: 'num', text: share(v, 'completed') }),
        el('td', { class: 'num', text: share(v, 'transferred') }),
        el('td', { class: 'num failed', text: share(v, 'failed') }),
        el('td', { class: 'num', text: share(v, 'abandoned') }),
        el('td', { class: 'num hide-narrow', text: ms(v.turn_p99_ms) }));
    };
    const verdicts = (r.verdicts || []).map((v) => {
      const fmt = v.criterion === 'turn_p99' ? ms : pct;
      return el('tr', { 'data-criterion': v.criterion },
        el('td', { text: v.criterion }),
        el('td', { class: 'num', text: v.threshold === null || v.threshold === undefined ? 'off' : v.threshold }),
        el('td', { class: 'num', text: fmt(v.from_value) }),
        el('td', { class: 'num', text: fmt(v.to_value) }),
        el('td', { class: 'num', text: v.p_value === null || v.p_value === undefined ? '–' : v.p_value.toPrecision(2) }),
        el('td', { class: v.holds ? 'holds' : 'clear', text: v.holds ? 'holds: abort' : 'clear' }));
    });
    const lt = r.last_transition;
    card.body.replaceChildren(
      el('div', { class: 'rollout-head' },
        el('h3', { text: r.name }),
        el('span', { text: r.from + ' → ' + r.to }),
        badge(r.status),
        badge(r.advance === 'manual' ? 'manual' : 'auto', 'advance ' + r.advance),
        el('span', null, 'share to ', r.to, ': ', el('b', { class: 'share', text: pct((r.share || 0) / 100) }))),
      ladder,
      el('div', { class: 'facts' },
        el('span', { text: 'at this step ' + dur(r.at_step_seconds) }),
        el('span', null, stepWait(r)),
        lt ? el('span', { class: 'muted', title: lt.at, text: 'last: → ' + lt.to + ' at ' + clock(lt.at) + (lt.reason ? ' — ' + lt.reason : '') }) : null),
      el('div', { class: 'scroll' }, el('table', { class: 'sides' },
        el('thead', null, el('tr', null, ['side', 'ended', 'completed', 'transferred', 'failed', 'abandoned'].map((h, i) => el('th', { class: i ? 'num' : null, text: h })), el('th', { class: 'num hide-narrow', text: 'turn p99' }))),
        el('tbody', null, sideRow('from'), sideRow('to')))),
      verdicts.length ? el('div', { class: 'scroll' }, el('table', { class: 'verdicts' },
        el('thead', null, el('tr', null, ['criterion', 'aborts when', 'from', 'to', 'p-value', 'verdict'].map((h, i) => el('th', { class: i && i < 5 ? 'num' : null, text: h })))),
        el('tbody', null, verdicts))) : el('p', { class: 'muted small', text: 'No verdict before ' + int(r.min_calls) + ' ended calls on each side.' }));
    if (!card.msg.textContent.endsWith('…')) enableButtons(card);
    card.chart.replaceChildren(...chart(r));
  }

  // A chart of the share of new calls sent to `to` (steps) and to's failed-call ratio.
  function chart(r) {
    const pts = (r.series || []).filter((p) => Number.isFinite(p.at));
    if (!pts.length) return [];
    const W = 600; const H = 170; const L = 38; const R = 44; const T = 10; const B = 22;
    const t0 = pts[0].at; const t1 = Math.max(pts[pts.length - 1].at, t0 + 1);
    const fails = pts.map((p) => p.to_failed_ratio).filter((v) => Number.isFinite(v));
    const fmax = Math.max(0.05, ...fails.map((v) => v * 1.2));
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const ys = (s) => T + (1 - s / 100) * (H - T - B);
    const yf = (f) => T + (1 - f / fmax) * (H - T - B);
    let d = '';
    pts.forEach((p, i) => {
      const px = x(p.at).toFixed(1); const py = ys(p.share).toFixed(1);
      d += i ? ' H' + px + ' V' + py : 'M' + px + ' ' + py;
    });
    d += ' H' + x(t1).toFixed(1);
    let f = ''; let pen = false;
    for (const p of pts) {
      if (!Number.isFinite(p.to_failed_ratio)) { pen = false; continue; }
      f += (pen ? ' L' : ' M') + x(p.at).toFixed(1) + ' ' + yf(p.to_failed_ratio).toFixed(1);
      pen = true;
    }
    const grid = [0, 50, 100].map((v) => [
      svg('line', { class: 'axis', x1: L, x2: W - R, y1: ys(v), y2: ys(v) }),
      svg('text', { x: L - 4, y: ys(v) + 3, 'text-anchor': 'end' }, v + '%'),
    ]);
    const when = (t) => new Date(t * 1000).toLocaleTimeString('en-GB', { hour12: false });
    const g = svg('svg', { class: 'chart', viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': 'share of new calls to ' + r.to + ' and its failed-call ratio over time' },
      grid,
      svg('text', { x: W - R + 4, y: yf(fmax) + 3 }, pct(fmax)),
      svg('text', { x: W - R + 4, y: yf(0) + 3 }, '0%'),
      svg('text', { x: L, y: H - 6 }, when(t0)),
      svg('text', { x: W - R, y: H - 6, 'text-anchor': 'end' }, when(t1)),
      svg('path', { class: 'share', d }),
      f ? svg('path', { class: 'failed', d: f.trim() }) : null);
    return [el('div', { class: 'legend' },
      el('span', { class: 'k-share', text: 'share to ' + r.to + ' (left axis)' }),
      el('span', { class: 'k-failed', text: r.to + ' failed-call ratio (right axis)' })), g];
  }

  // ---- history ----------------------------------------------------------------------------
  const historyItems = new Map();
  function changesText(c) {
    if (!c) return '';
    const parts = [];
    for (const [k, label] of [['clusters_added', 'clusters added'], ['clusters_removed', 'clusters removed'],
      ['clusters_draining', 'draining'], ['clusters_undrained', 'no longer draining'], ['clusters_changed', 'clusters changed'],
      ['rules_added', 'rules added'], ['rules_removed', 'rules removed'], ['rules_changed', 'rules changed'],
      ['settings_changed', 'settings changed']]) {
      if (Array.isArray(c[k]) && c[k].length) parts.push(label + ': ' + c[k].join(', '));
    }
    return parts.join('; ');
  }
  function eventText(e) {
    if (e.kind === 'applied') {
      const plan = e.plan || {};
      const moved = (Array.isArray(plan.rules) ? plan.rules : [])
        .filter((m) => m && m.moved > 0)
        .map((m) => m.rule + ' moves ' + pct(m.moved) + ' of its new calls');
      const ch = changesText(plan.changes || plan);
      return 'generation ' + e.generation + ' applied (' + e.trigger + ')' +
        (ch ? ' — ' + ch : '') + (moved.length ? ' — ' + moved.join(', ') : '');
    }
    if (e.kind === 'reload_failed') {
      const errs = e.errors || [];
      const first = errs[0];
      return 'reload refused (' + e.trigger + '), ' + errs.length + (errs.length === 1 ? ' error' : ' errors') +
        (first ? ': ' + (first.line ? first.line + ':' + first.column + ' ' : '') + first.message : '') +
        ' — the running config stays';
    }
    if (e.kind === 'rollout') {
      return (e.rule || e.name || 'rollout') + ': ' + (e.from || '?') + ' → ' + (e.to || '?') + (e.reason ? ' — ' + e.reason : '');
    }
    return e.kind;
  }
  function renderHistory(hi) {
    const list = $('history');
    if (!hi || hi.status !== 200 || !hi.data || !Array.isArray(hi.data.events)) return;
    const keep = new Set();
    const nodes = hi.data.events.map((e) => {
      const key = String(e.seq) + '@' + e.at;
      keep.add(key);
      let li = historyItems.get(key);
      if (!li) {
        li = el('li', { 'data-seq': e.seq, 'data-kind': e.kind },
          el('span', { class: 'when', title: e.at, text: clock(e.at) }),
          badge(e.kind, e.kind.replace('_', ' ')), ' ',
          el('span', { class: 'what', text: eventText(e) }),
          el('details', null, el('summary', { text: 'details' }), el('pre', { text: JSON.stringify(e, null, 2) })));
        historyItems.set(key, li);
      }
      return li;
    });
    for (const k of [...historyItems.keys()]) if (!keep.has(k)) historyItems.delete(k);
    list.replaceChildren(...nodes);
  }

  tick();
})();
