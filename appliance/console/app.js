// The Cairn console: a router, an API helper and one function per page. No build step.

import { LineChart } from '/assets/chart.js';

const auth = { csrf: null, user: null, onboarded: null, fingerprint: null };
let page = { timers: [], aborts: [] };
const main = document.getElementById('main');

// DOM helpers

/** Builds an element: h('p', {class: 'x'}, 'text', child). Text is never parsed as HTML. */
function h(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const k of kids.flat(Infinity)) if (k !== null && k !== undefined && k !== false) e.append(k instanceof Node ? k : String(k));
  return e;
}

/** Replaces the children of `el`, skipping null and false. */
function put(el, ...kids) {
  el.replaceChildren(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false));
}

const fmtBytes = (n) => {
  if (typeof n !== 'number') return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
};
const fmtSecs = (s) => {
  if (typeof s !== 'number') return '–';
  s = Math.floor(s);
  const d = Math.floor(s / 86400), hr = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return d ? `${d} d ${hr} h` : hr ? `${hr} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
};
const fmtTime = (ms) => (ms ? new Date(ms).toLocaleString() : '–'); // the auth API counts seconds: pass s * 1000
const fmtUsd = (x) => `$${(x || 0).toFixed(4)}`;

function table(cols, rows, empty = 'Nothing yet.') {
  if (!rows.length) return h('p', { class: 'muted' }, empty);
  return h('div', { class: 'table' }, h('table', {},
    h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col' }, c[0])))),
    h('tbody', {}, rows.map((r) => h('tr', {}, cols.map((c) => h('td', {}, c[1](r))))))));
}

function kv(pairs) {
  return h('dl', { class: 'kv' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '–')]));
}

function section(title, ...kids) {
  return h('section', { 'aria-label': title }, h('h2', {}, title), ...kids);
}

/** A visible panel for features this version has no backend for. */
function unavailable(title, what) {
  return h('section', { class: 'na', 'aria-label': title }, h('h2', {}, title),
    h('p', {}, h('strong', {}, 'Not available in this version. '), what));
}

function toast(text, bad = false) {
  const p = h('p', { class: bad ? 'bad' : '' }, text);
  document.getElementById('toast').append(p);
  setTimeout(() => p.remove(), 5000);
}

// API

class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const e = (body && body.error) || {};
    super(e.message || (typeof body === 'string' && body) || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || e.type || null;
    this.field = e.field || e.param || null;
    this.retryAfter = retryAfter;
  }
}

const unsafe = (m) => !['GET', 'HEAD', 'OPTIONS'].includes(m);

function headers(method, extra = {}) {
  const hd = { ...extra };
  if (unsafe(method) && auth.csrf) hd['X-CSRF-Token'] = auth.csrf;
  return hd;
}

/** One JSON API call; throws ApiError with the server's code, message and field. */
async function api(method, path, body, extraHeaders = {}) {
  const init = { method, credentials: 'same-origin', headers: headers(method, extraHeaders) };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (r.status === 401 && !path.startsWith('/api/v1/auth/')) {
    auth.user = null;
    go('/login');
  }
  if (!r.ok) throw new ApiError(r.status, data, r.headers.get('Retry-After'));
  return data;
}

/** Sends `body` (a file) with `hdrs`, showing the upload in the progress bar `bar` (fetch has no
 * upload progress); resolves with the answer's JSON or rejects with ApiError. */
function uploadWithProgress(method, path, hdrs, body, bar) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open(method, path);
    x.withCredentials = true;
    for (const [k, v] of Object.entries(hdrs)) x.setRequestHeader(k, v);
    x.upload.onprogress = (e) => { if (e.lengthComputable) { bar.max = e.total; bar.value = e.loaded; } };
    // Sent: the bar turns indeterminate while the appliance checks what it got.
    x.upload.onload = () => bar.removeAttribute('value');
    x.onload = () => {
      let data = null;
      try { data = JSON.parse(x.responseText); } catch { data = x.responseText; }
      if (x.status >= 200 && x.status < 300) resolve(data);
      else reject(new ApiError(x.status, data, x.getResponseHeader('Retry-After')));
    };
    x.onerror = () => reject(new ApiError(0, 'the upload was cut off'));
    x.send(body);
  });
}

/** Calls `f`, reporting a failure as a toast; answers undefined on failure. */
async function attempt(f, what) {
  try { return await f(); } catch (e) { toast(`${what}: ${e.message}`, true); return undefined; }
}

// forms

let fieldSeq = 0;

/** A form with labelled fields whose server errors appear next to the named field. */
function form({ fields, submit, onSubmit, label }) {
  const inputs = {};
  const errs = {};
  const general = h('p', { class: 'form-error', role: 'alert' });
  const button = h('button', { type: 'submit' }, submit);
  const f = h('form', { novalidate: true, 'aria-label': label || submit });
  for (const fd of fields) {
    const id = `f${++fieldSeq}`;
    const err = h('p', { class: 'field-error', id: `${id}-err`, 'aria-live': 'polite' });
    let input;
    const common = { id, name: fd.name, 'aria-describedby': `${id}-err`, required: fd.required, autocomplete: fd.autocomplete || 'off', placeholder: fd.placeholder };
    if (fd.type === 'select') {
      input = h('select', common, (fd.options || []).map((o) => {
        const [v, t] = Array.isArray(o) ? o : [o, o];
        return h('option', { value: v, selected: fd.value === v }, t);
      }));
    } else if (fd.type === 'textarea') {
      input = h('textarea', { ...common, rows: fd.rows || 6 });
      input.value = fd.value || '';
    } else if (fd.type === 'checkbox') {
      input = h('input', { ...common, type: 'checkbox', checked: !!fd.value });
    } else {
      input = h('input', { ...common, type: fd.type || 'text', value: fd.value ?? '', accept: fd.accept, inputmode: fd.inputmode, min: fd.min, max: fd.max, step: fd.step });
    }
    inputs[fd.name] = input;
    errs[fd.name] = err;
    const lab = h('label', { for: id }, fd.label);
    f.append(fd.type === 'checkbox' ? h('div', { class: 'check' }, input, ' ', lab, err) : h('div', {}, lab, input, fd.hint ? h('small', { class: 'muted' }, fd.hint) : null, err));
  }
  f.append(general, h('div', { class: 'row' }, button));
  const clear = () => {
    general.textContent = '';
    for (const n in errs) { errs[n].textContent = ''; inputs[n].removeAttribute('aria-invalid'); }
  };
  const show = (field, message) => {
    if (field && errs[field]) {
      errs[field].textContent = message;
      inputs[field].setAttribute('aria-invalid', 'true');
      inputs[field].focus();
    } else general.textContent = message;
  };
  f.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clear();
    const values = {};
    for (const [n, i] of Object.entries(inputs)) values[n] = i.type === 'checkbox' ? i.checked : i.type === 'file' ? i.files[0] : i.value;
    for (const fd of fields) {
      if (fd.required && (values[fd.name] === '' || values[fd.name] === undefined)) return show(fd.name, `${fd.label} is required.`);
    }
    button.disabled = true;
    f.setAttribute('aria-busy', 'true');
    try {
      await onSubmit(values, { show, inputs, form: f });
    } catch (e) {
      let field = e.field;
      let msg = e.message;
      // Router errors name the field as a "field: message" prefix.
      const m = /^([A-Za-z_][\w.[\]]*): (.*)$/s.exec(msg || '');
      if (!field && m && errs[m[1]]) { field = m[1]; msg = m[2]; }
      if (!field && e.code && CODE_FIELD[e.code] && errs[CODE_FIELD[e.code]]) field = CODE_FIELD[e.code];
      if (e.status === 429 && e.retryAfter && !/try again/i.test(msg)) msg += ` Try again in ${fmtSecs(Number(e.retryAfter))}.`;
      show(field, msg || 'The request failed.');
    } finally {
      button.disabled = false;
      f.removeAttribute('aria-busy');
    }
  });
  f.inputs = inputs;
  return f;
}

// Error codes of the auth contract that belong to one field even when the answer names none.
const CODE_FIELD = { bad_code: 'code', bad_credentials: 'password', locked: 'username', bad_password: 'current', wrong_passphrase: 'passphrase', bad_passphrase: 'passphrase' };

// router

const routes = {
  '/onboard': pageOnboard, '/login': pageLogin, '/': pageOverview, '/chat': pageChat,
  '/agents': pageAgents, '/workflows': pageWorkflows, '/memory': pageMemory, '/models': pageModels,
  '/events': pageEvents, '/audit': pageAudit, '/settings': pageSettings, '/backup': pageBackup,
  '/power': pagePower,
};
const titles = {
  '/onboard': 'Set up', '/login': 'Log in', '/': 'Overview', '/chat': 'Chat', '/agents': 'Agents',
  '/workflows': 'Workflows', '/memory': 'Memory', '/models': 'Models and routing', '/events': 'Events',
  '/audit': 'Audit', '/settings': 'Settings', '/backup': 'Backup', '/power': 'Power',
};

function go(path, replace = false) {
  if (location.pathname !== path) history[replace ? 'replaceState' : 'pushState'](null, '', path);
  render();
}

function leave() {
  page.timers.forEach(clearInterval);
  page.aborts.forEach((a) => a.abort());
  page = { timers: [], aborts: [] };
}

/** Repeats `f` every `ms` while the page is shown (first call at once). */
function every(ms, f) {
  f();
  page.timers.push(setInterval(f, ms));
}

let shown = 0;
async function render() {
  leave();
  const mine = ++shown;
  let path = location.pathname;
  if (!routes[path]) path = '/';
  if (auth.onboarded === false && path !== '/onboard') return go('/onboard', true);
  if (auth.onboarded && !auth.user && path !== '/login') return go('/login', true);
  if (auth.user && (path === '/login' || path === '/onboard')) return go('/', true);
  const anon = !auth.user;
  document.body.classList.toggle('anon', anon);
  nav.hidden = anon;
  menu.hidden = anon;
  document.getElementById('who').textContent = auth.user ? `${auth.user.name} (${auth.user.scope})` : '';
  for (const a of nav.querySelectorAll('a')) {
    if (a.getAttribute('href') === path) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (window.matchMedia('(max-width: 760px)').matches) setMenu(false);
  document.title = `${titles[path]} · ${siteName}`;
  put(main, h('h1', {}, titles[path]));
  try {
    await routes[path](main);
  } catch (e) {
    if (mine === shown) main.append(h('p', { class: 'form-error', role: 'alert' }, `This page could not load: ${e.message}`));
  }
}

const nav = document.getElementById('nav');
const menu = document.getElementById('menu');
function setMenu(open) {
  nav.classList.toggle('closed', !open);
  menu.setAttribute('aria-expanded', String(open));
}
menu.addEventListener('click', () => setMenu(nav.classList.contains('closed')));

document.addEventListener('click', (ev) => {
  const a = ev.target.closest && ev.target.closest('a[href^="/"]');
  if (!a || a.hasAttribute('download') || a.target || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
  const path = a.getAttribute('href');
  if (!routes[path]) return;
  ev.preventDefault();
  go(path);
});
window.addEventListener('popstate', render);

document.getElementById('logout').addEventListener('click', async () => {
  await attempt(() => api('POST', '/api/v1/auth/logout'), 'Log out');
  forgetChat();
  auth.user = null;
  auth.csrf = null;
  go('/login');
});

let siteName = 'Cairn';
async function loadSiteName() {
  try {
    const s = await api('GET', '/api/v1/settings/site');
    if (typeof s.value === 'string' && s.value) siteName = s.value;
  } catch { /* no site name set: keep the default */ }
  document.getElementById('site').textContent = siteName;
}

function signedIn(answer) {
  auth.user = answer.user;
  auth.csrf = answer.csrf;
  auth.onboarded = true;
  loadSiteName();
}

// pages: onboarding and login

async function pageOnboard(m) {
  m.append(
    h('p', {}, 'This appliance has no administrator yet. Enter the one-time setup code shown on its console (or in the log of ', h('code', {}, 'cairn serve'), ') and choose the administrator account.'),
    auth.fingerprint ? h('p', { class: 'muted' }, 'Check that your browser shows this certificate fingerprint: ', h('code', {}, auth.fingerprint)) : null,
    form({
      submit: 'Create administrator',
      fields: [
        { name: 'code', label: 'Setup code', required: true, placeholder: 'XXXX-XXXX-XXXX', autocomplete: 'one-time-code' },
        { name: 'username', label: 'Administrator user name', required: true, autocomplete: 'username' },
        { name: 'password', label: 'Password', type: 'password', required: true, autocomplete: 'new-password', hint: '10 to 256 characters.' },
        { name: 'confirm', label: 'Confirm password', type: 'password', required: true, autocomplete: 'new-password' },
      ],
      async onSubmit(v, { show }) {
        if (v.password !== v.confirm) return show('confirm', 'The passwords do not match.');
        signedIn(await api('POST', '/api/v1/auth/onboard', { code: v.code.trim(), username: v.username.trim(), password: v.password }));
        go('/');
      },
    }),
    section('Or restore a backup',
      h('p', {}, 'Replacing another box? Restore its backup instead of creating an administrator: this box comes back with that box\'s accounts, agents, memory and settings.'),
      restoreForm({ setupCode: true })));
}

async function pageLogin(m) {
  m.append(
    form({
      submit: 'Log in',
      fields: [
        { name: 'username', label: 'User name', required: true, autocomplete: 'username' },
        { name: 'password', label: 'Password', type: 'password', required: true, autocomplete: 'current-password' },
      ],
      async onSubmit(v) {
        signedIn(await api('POST', '/api/v1/auth/login', { username: v.username.trim(), password: v.password }));
        go('/');
      },
    }),
    auth.fingerprint ? h('p', { class: 'muted' }, 'Certificate fingerprint: ', h('code', {}, auth.fingerprint)) : null);
}

// overview

async function pageOverview(m) {
  const health = h('span', { class: 'badge' }, '…');
  const facts = h('div');
  const boot = h('div');
  const res = h('div');
  const net = h('div');
  const models = h('div');
  const usage = h('div');
  const charts = h('div', { class: 'grid' });
  const c = (title, unit, digits) => { const d = h('section'); charts.append(d); return new LineChart(d, { title, unit, digits }); };
  const tps = c('Tokens generated per second', 'tok/s', 1);
  const rps = c('Requests per minute', 'req/min', 1);
  const lat = c('API round-trip latency (measured by this browser)', 'ms', 0);
  m.append(
    h('p', {}, 'Health: ', health),
    charts,
    h('div', { class: 'grid' }, section('System', facts), section('Boot timeline', boot), section('Resources', res)),
    section('Network', net), section('Loaded models', models), section('Router usage today', usage));
  let prev = null;
  every(3000, async () => {
    const t0 = performance.now();
    let s;
    try { s = await api('GET', '/api/v1/system'); } catch (e) { health.textContent = `unreachable: ${e.message}`; health.className = 'badge bad'; return; }
    lat.push(performance.now() - t0);
    const hz = await api('GET', '/healthz').catch(() => ({ status: 'unreachable' }));
    health.textContent = hz.status;
    health.className = `badge ${hz.status === 'ok' ? 'ok' : 'bad'}`;
    const cnt = s.inference.counters;
    const now = performance.now();
    if (prev) {
      const dt = (now - prev.at) / 1000;
      tps.push(Math.max(0, cnt.completion_tokens - prev.c.completion_tokens) / dt);
      rps.push((Math.max(0, cnt.requests - prev.c.requests) / dt) * 60);
    }
    prev = { at: now, c: cnt };
    put(facts, kv([
      ['Version', s.version], ['Mode', s.mode], ['Host name', s.hostname], ['Architecture', s.arch], ['Kernel', s.kernel],
      ['Uptime', fmtSecs(s.uptime_secs)], ['Service uptime', fmtSecs(s.appliance_uptime_secs)],
      ['Data', `${s.data.mode}${s.data.reason ? ` (${s.data.reason})` : ''}`],
      ['Inference', `${s.inference.device}, kernels ${s.inference.kernels}`],
      ['Requests', `${cnt.requests} (${cnt.completed} completed), ${cnt.completion_tokens} tokens generated`],
    ]));
    if (s.boot && s.boot.timeline) {
      const tl = s.boot.timeline;
      put(boot, kv([
        ['Kernel → init', `${tl.init_ms} ms`], ['Drivers settled', `${tl.modules_ms} ms`], ['Disks mounted', `${tl.disks_ms} ms`],
        ['Network up', tl.network_ms != null ? `${tl.network_ms} ms` : 'not yet'], ['Appliance ready', tl.ready_ms != null ? `${tl.ready_ms} ms` : 'not yet'],
      ]), (s.boot.warnings || []).length ? h('ul', {}, s.boot.warnings.map((w) => h('li', { class: 'warn' }, w))) : null);
    } else put(boot, h('p', { class: 'muted' }, 'No boot timeline: this instance runs hosted, not under cairn-init.'));
    const bar = (used, total) => {
      const fill = h('span');
      fill.style.width = `${Math.min(100, (used / total) * 100).toFixed(1)}%`; // CSSOM: allowed by the CSP
      return h('div', { class: 'bar', role: 'img', 'aria-label': `${Math.round((used / total) * 100)} % used` }, fill);
    };
    const mem = s.memory;
    put(res, kv([
      ['CPU', s.cpu ? `${s.cpu.count} × ${s.cpu.model}` : '–'],
      ['CPU features', s.cpu ? s.cpu.features.join(' ') : '–'],
      ['Memory', mem ? `${fmtBytes(mem.total_bytes - mem.available_bytes)} of ${fmtBytes(mem.total_bytes)} used` : '–'],
    ]), mem ? bar(mem.total_bytes - mem.available_bytes, mem.total_bytes) : null,
    ...(s.disks || []).map((d) => [h('p', {}, `Disk ${d.path}: ${fmtBytes(d.total_bytes - d.free_bytes)} of ${fmtBytes(d.total_bytes)} used`), bar(d.total_bytes - d.free_bytes, d.total_bytes)]).flat(),
    h('p', {}, `Processes: ${(s.processes || []).map((p) => `${p.name} ${fmtBytes(p.rss_kib * 1024)}`).join(', ')}`));
    put(net, table([['Interface', (i) => i.name], ['State', (i) => i.state], ['MAC', (i) => i.mac || '–'], ['Addresses', (i) => i.addresses.join(', ') || '–']], s.network || [], 'No network interfaces.'));
    const eng = s.inference.engines || {};
    put(models, table([
      ['Model', (x) => x.id], ['Kind', (x) => x.kind], ['Loaded', (x) => (x.loaded ? 'yes' : 'no')], ['Origin', (x) => x.origin],
      ['Queue', (x) => (eng[x.id] ? `${eng[x.id].active} active, ${eng[x.id].waiting} waiting` : '–')],
    ], s.inference.models || [], 'No local models are installed.'),
    (s.inference.warnings || []).length ? h('ul', {}, s.inference.warnings.map((w) => h('li', { class: 'warn' }, w))) : null);
  });
  every(10000, async () => {
    const u = await api('GET', '/api/v1/router/usage?days=1').catch(() => null);
    if (!u) return;
    const rows = Object.entries(u.by_provider || {});
    put(usage, table([
      ['Provider', (r) => r[0]], ['Calls', (r) => r[1].calls], ['Failures', (r) => r[1].failures],
      ['Tokens in / out', (r) => `${r[1].prompt_tokens} / ${r[1].completion_tokens}`], ['Cost', (r) => fmtUsd(r[1].cost_usd)],
    ], rows, 'No routed calls today.'));
  });
}

// chat

// The conversation lives in this tab's sessionStorage only (gone with the tab, cleared at
// logout); older versions kept it in localStorage, which is purged here.
const CHAT_KEY = 'cairn.chat';
const CHAT_MODEL_KEY = 'cairn.chat.model';
function forgetChat() {
  for (const store of [sessionStorage, localStorage]) {
    try { store.removeItem(CHAT_KEY); store.removeItem(CHAT_MODEL_KEY); } catch { /* storage disabled */ }
  }
}
try { localStorage.removeItem(CHAT_KEY); localStorage.removeItem(CHAT_MODEL_KEY); } catch { /* storage disabled */ }
function loadChat() {
  try { return JSON.parse(sessionStorage.getItem(CHAT_KEY)) || []; } catch { return []; }
}

async function pageChat(m) {
  const [models, router] = await Promise.all([api('GET', '/v1/models'), api('GET', '/api/v1/router').catch(() => null)]);
  const chatModels = models.data.filter((x) => x.kind !== 'embedding').map((x) => [x.id, `${x.id} (local)`]);
  for (const p of (router && router.providers) || []) {
    if (p.enabled) for (const md of p.models) if (md.kind !== 'embedding') chatModels.push([`${p.name}/${md.id}`, `${p.name}/${md.id}`]);
  }
  const policies = ((router && router.policies) || []).map((p) => [p, p]);
  const history = loadChat();
  const log = h('div', { class: 'chatlog', role: 'log', 'aria-live': 'polite', 'aria-label': 'Conversation' });
  const status = h('p', { class: 'form-error', role: 'alert' });
  const bubble = (msg) => {
    const b = h('div', { class: `msg ${msg.role}` }, h('span', { class: 'sr-label' }, msg.role === 'user' ? 'You: ' : 'Reply: '));
    const text = document.createTextNode(msg.content);
    b.append(text);
    if (msg.meta) b.append(h('small', {}, msg.meta));
    log.append(b);
    return { b, text };
  };
  history.forEach(bubble);
  const id = `f${++fieldSeq}`;
  const modelSel = h('select', { id: `${id}m`, name: 'model' }, h('option', { value: 'auto' }, 'auto (the router decides)'), chatModels.map(([v, t]) => h('option', { value: v }, t)));
  const saved = sessionStorage.getItem(CHAT_MODEL_KEY);
  if (saved && [...modelSel.options].some((o) => o.value === saved)) modelSel.value = saved;
  const policySel = h('select', { id: `${id}p`, name: 'policy' }, h('option', { value: '' }, `default (${(router && router.settings && router.settings.policy) || 'router setting'})`), policies.map(([v, t]) => h('option', { value: v }, t)));
  const input = h('textarea', { id: `${id}i`, name: 'message', rows: 3, required: true });
  const send = h('button', { type: 'submit' }, 'Send');
  const stop = h('button', { type: 'button', class: 'secondary', disabled: true }, 'Stop');
  const clear = h('button', { type: 'button', class: 'secondary' }, 'Clear conversation');
  const f = h('form', { 'aria-label': 'Send a message' },
    h('div', { class: 'row' }, h('div', {}, h('label', { for: modelSel.id }, 'Model'), modelSel), h('div', {}, h('label', { for: policySel.id }, 'Routing policy'), policySel)),
    h('label', { for: input.id }, 'Message'), input, status, h('div', { class: 'row' }, send, stop, clear));
  m.append(section('Conversation', log), f);
  if (!chatModels.length) m.append(h('p', { class: 'warn' }, 'No chat model is installed locally and no provider is configured: replies will fail until one is.'));
  let ctrl = null;
  stop.addEventListener('click', () => ctrl && ctrl.abort());
  clear.addEventListener('click', () => { history.length = 0; sessionStorage.removeItem(CHAT_KEY); put(log); });
  input.addEventListener('keydown', (ev) => { if (ev.key === 'Enter' && !ev.shiftKey) { ev.preventDefault(); f.requestSubmit(); } });
  f.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    status.textContent = '';
    const text = input.value.trim();
    if (!text) { status.textContent = 'Type a message first.'; return; }
    sessionStorage.setItem(CHAT_MODEL_KEY, modelSel.value);
    history.push({ role: 'user', content: text });
    bubble(history[history.length - 1]);
    input.value = '';
    const reply = { role: 'assistant', content: '' };
    const { b, text: node } = bubble(reply);
    b.setAttribute('aria-busy', 'true');
    send.disabled = true;
    stop.disabled = false;
    ctrl = new AbortController();
    page.aborts.push(ctrl);
    const t0 = performance.now();
    let usage = null;
    let target = '';
    let first = 0;
    try {
      const hd = headers('POST', { 'Content-Type': 'application/json' });
      if (policySel.value) hd['X-Cairn-Policy'] = policySel.value;
      const body = { model: modelSel.value, stream: true, stream_options: { include_usage: true }, messages: history.filter((x) => x !== reply).map(({ role, content }) => ({ role, content })) };
      const r = await fetch('/v1/chat/completions', { method: 'POST', credentials: 'same-origin', headers: hd, body: JSON.stringify(body), signal: ctrl.signal });
      if (!r.ok) {
        const t = await r.text();
        let d = t; try { d = JSON.parse(t); } catch { /* plain text error */ }
        throw new ApiError(r.status, d);
      }
      target = [r.headers.get('x-cairn-provider'), r.headers.get('x-cairn-model')].filter(Boolean).join(' / ');
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const ev2 = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          for (const line of ev2.split('\n')) {
            if (!line.startsWith('data:')) continue;
            const data = line.slice(5).trim();
            if (data === '[DONE]') continue;
            const j = JSON.parse(data);
            if (j.error) throw new ApiError(500, j);
            if (j.usage) usage = j.usage;
            const delta = j.choices && j.choices[0] && j.choices[0].delta;
            if (delta && delta.content) {
              if (!first) first = performance.now();
              reply.content += delta.content;
              node.appendData(delta.content);
              log.scrollTop = log.scrollHeight;
            }
          }
        }
      }
    } catch (e) {
      if (e.name === 'AbortError') reply.content += ' [stopped]';
      else status.textContent = `The reply failed: ${e.message}`;
      node.data = reply.content;
    } finally {
      const secs = (performance.now() - t0) / 1000;
      const gen = first ? (performance.now() - first) / 1000 : 0;
      const rate = usage && gen > 0 ? `, ${(usage.completion_tokens / gen).toFixed(1)} tok/s` : '';
      const ttft = first ? `first token after ${((first - t0) / 1000).toFixed(1)} s, ` : '';
      reply.meta = [target, usage ? `${usage.completion_tokens} tokens${rate}` : null, `${ttft}${secs.toFixed(1)} s in all`].filter(Boolean).join(' · ');
      b.append(h('small', {}, reply.meta));
      b.removeAttribute('aria-busy');
      if (reply.content) history.push(reply); else b.remove();
      sessionStorage.setItem(CHAT_KEY, JSON.stringify(history.slice(-100)));
      send.disabled = false;
      stop.disabled = true;
      ctrl = null;
    }
  });
}

// agents

function uploadPackage(file, start, progress) {
  return uploadWithProgress('POST', `/api/v1/agents?start=${start}`, headers('POST', { 'Content-Type': 'application/octet-stream' }), file, progress);
}

async function pageAgents(m) {
  const list = h('div');
  const runs = h('div');
  const detail = h('div', { 'aria-live': 'polite' });
  const trust = h('div');
  const result = h('div', { 'aria-live': 'polite' });
  const progress = h('progress', { hidden: true, 'aria-label': 'Upload progress' });
  let agents = [];
  const taskForm = form({
    submit: 'Run task', label: 'Submit a task',
    fields: [
      { name: 'agent', label: 'Agent', type: 'select', options: [] },
      { name: 'input', label: 'Input', type: 'textarea', rows: 3, required: true },
    ],
    async onSubmit(v, { show }) {
      if (!v.agent) return show('agent', 'Install an agent first.');
      put(result, h('p', { class: 'muted' }, 'Running…'));
      const r = await api('POST', `/api/v1/agents/${encodeURIComponent(v.agent)}/runs`, { input: v.input, wait: true });
      put(result, runView(r));
      refresh();
    },
  });
  const act = async (name, action) => {
    if (action === 'uninstall' && !confirm(`Uninstall ${name}?`)) return;
    await attempt(() => (action === 'uninstall' ? api('DELETE', `/api/v1/agents/${encodeURIComponent(name)}`) : api('POST', `/api/v1/agents/${encodeURIComponent(name)}/${action}`)), `${action} ${name}`);
    refresh();
  };
  const showRun = async (id) => {
    const r = await attempt(() => api('GET', `/api/v1/runs/${encodeURIComponent(id)}`), 'Run');
    if (r) put(detail, section(`Run ${id}`, runView(r)));
  };
  async function refresh() {
    const [a, r, t] = await Promise.all([api('GET', '/api/v1/agents'), api('GET', '/api/v1/runs?limit=50'), api('GET', '/api/v1/trust').catch(() => null)]);
    agents = a.agents;
    const sel = taskForm.inputs.agent;
    const cur = sel.value;
    put(sel, ...agents.map((x) => h('option', { value: x.name, selected: x.name === cur }, x.name)));
    put(list, table([
      ['Name', (x) => x.name], ['Version', (x) => x.version], ['State', (x) => h('span', { class: 'badge' }, x.state)],
      ['Running', (x) => x.running], ['Publisher', (x) => h('code', {}, x.publisher.slice(0, 16) + '…')],
      ['Actions', (x) => h('div', { class: 'actions' }, ['start', 'stop', 'pause', 'resume', 'kill', 'uninstall'].map((ac) =>
        h('button', { type: 'button', class: ac === 'kill' || ac === 'uninstall' ? 'danger' : 'secondary', 'aria-label': `${ac} ${x.name}`, onclick: () => act(x.name, ac) }, ac)))],
    ], agents, 'No agents installed.'));
    put(runs, table([
      ['Run', (x) => h('button', { type: 'button', class: 'secondary', onclick: () => showRun(x.id) }, x.id.slice(0, 12))],
      ['Agent', (x) => x.agent], ['Status', (x) => x.status], ['Created', (x) => fmtTime(x.created_ms)],
      ['Tokens', (x) => x.usage.prompt_tokens + x.usage.completion_tokens], ['Cost', (x) => fmtUsd(x.usage.cost_usd)],
    ], r.runs, 'No runs yet.'));
    if (t) put(trust, table([['Name', (k) => k.name], ['Key', (k) => h('code', {}, k.key)], ['Revoked', (k) => (k.revoked_ms ? 'yes' : 'no')]], t.keys, 'No trusted publishers.'));
  }
  const upload = form({
    submit: 'Install', label: 'Install a package',
    fields: [
      { name: 'package', label: 'Signed package file (.cpkg)', type: 'file' },
      { name: 'start', label: 'Start after installing', type: 'checkbox', value: true },
    ],
    async onSubmit(v, { show }) {
      if (!v.package) return show('package', 'Choose a package file.');
      progress.hidden = false;
      try {
        const info = await uploadPackage(v.package, v.start, progress);
        toast(`Installed ${info.manifest ? info.manifest.name : 'the agent'}`);
      } catch (e) {
        if (!e.field) e.field = 'package';
        throw e;
      } finally {
        progress.hidden = true;
      }
      refresh();
    },
  });
  upload.insertBefore(progress, upload.lastChild);
  const trustForm = form({
    submit: 'Trust publisher', label: 'Trust a publisher key',
    fields: [{ name: 'key', label: 'Publisher public key (hex)', required: true }, { name: 'name', label: 'Name', required: true }],
    async onSubmit(v, { form: f }) { await api('POST', '/api/v1/trust', v); f.reset(); refresh(); },
  });
  m.append(section('Install', upload), section('Installed agents', list), section('Submit a task', taskForm, result), detail, section('Runs', runs), section('Trusted publishers', trust, trustForm));
  every(5000, () => refresh().catch((e) => toast(`Agents: ${e.message}`, true)));
}

function runView(r) {
  return h('div', {}, kv([
    ['Run', r.id], ['Agent', `${r.agent} ${r.version}`], ['Status', r.status], ['Started', fmtTime(r.started_ms)], ['Finished', fmtTime(r.finished_ms)],
    ['Usage', `${r.usage.prompt_tokens} prompt + ${r.usage.completion_tokens} completion tokens, ${fmtUsd(r.usage.cost_usd)}, fuel ${r.usage.fuel}, ${r.usage.host_calls} host calls`],
    r.error ? ['Error', h('span', { class: 'bad' }, r.error)] : null,
  ]), h('h3', {}, 'Output'), h('pre', { class: 'output' }, r.output ?? '(none)'),
  h('h3', {}, 'Trace'), waterfall(r),
  h('h3', {}, 'Logs'), (r.logs || []).length ? h('pre', {}, r.logs.map((l) => `${new Date(l.ms).toISOString()} ${l.level} ${l.message}`).join('\n')) : h('p', { class: 'muted' }, 'No log lines.'),
  r.logs_dropped ? h('p', { class: 'warn' }, `${r.logs_dropped} log lines were dropped.`) : null);
}

/** A run's trace as a waterfall: waiting, running, and each host call on one time axis. */
function waterfall(r) {
  const t0 = r.created_ms;
  const t1 = Math.max(r.finished_ms || Date.now(), ...(r.spans || []).map((x) => x.end_ms));
  const total = Math.max(1, t1 - t0);
  const rows = [{ name: 'queued', detail: '', start_ms: t0, end_ms: r.started_ms || t1 }];
  if (r.started_ms) rows.push({ name: 'run', detail: r.agent, start_ms: r.started_ms, end_ms: r.finished_ms || t1, error: r.error });
  rows.push(...(r.spans || []));
  const list = h('ol', { class: 'waterfall', 'aria-label': `Trace of run ${r.id}` });
  for (const x of rows) {
    const ms = x.end_ms - x.start_ms;
    const bar = h('span', { class: `wf-bar${x.error ? ' failed' : ''}`, 'aria-hidden': 'true' });
    // CSSOM, not a style attribute: the console's CSP forbids inline styles.
    bar.style.marginLeft = `${((x.start_ms - t0) / total) * 100}%`;
    bar.style.width = `${Math.max(0.4, (ms / total) * 100)}%`;
    const label = `${x.name}${x.detail ? ` · ${x.detail}` : ''}`;
    list.append(h('li', { class: 'wf-row' },
      h('span', { class: 'wf-label', title: label }, label),
      h('span', { class: 'wf-track' }, bar),
      h('span', { class: 'wf-ms' }, `${ms} ms${x.start_ms > t0 ? ` at +${x.start_ms - t0}` : ''}${x.error ? ` · ${x.error}` : ''}`)));
  }
  if (r.spans_dropped) list.append(h('li', { class: 'warn' }, `${r.spans_dropped} more host calls were not kept.`));
  return list;
}

// workflows

async function pageWorkflows(m) {
  const out = h('div', { 'aria-live': 'polite' });
  const runs = h('div');
  const saved = h('div');
  let watching = null;
  const f = form({
    submit: 'Validate', label: 'Workflow',
    fields: [
      { name: 'workflow', label: 'Workflow (TOML, or JSON starting with {)', type: 'textarea', rows: 12, required: true, placeholder: 'name = "pipeline"\n\n[topology]\nkind = "sequential"\nsteps = [{ agent = "echo" }, { agent = "echo" }]' },
      { name: 'input', label: 'Input', type: 'textarea', rows: 2 },
    ],
    async onSubmit(v, { form: fm }) {
      const intent = fm.dataset.intent;
      fm.dataset.intent = '';
      if (intent === 'save') {
        const name = workflowName(v.workflow);
        if (!name) throw new Error('The workflow has no name = "…" line.');
        const r = await api('PUT', `/api/v1/workflows/${encodeURIComponent(name)}`, { workflow: v.workflow });
        put(out, h('p', { class: 'ok' }, `Saved ${r.name} (version ${r.version}).`));
        loadSaved();
        return;
      }
      if (intent !== 'run') {
        const r = await api('POST', '/api/v1/workflows/validate', { workflow: v.workflow, input: v.input });
        put(out, h('p', { class: 'ok' }, `Valid. Agents: ${r.agents.join(', ')}`));
        return;
      }
      const r = await api('POST', '/api/v1/workflows/runs', { workflow: v.workflow, input: v.input, wait: false });
      watch(r.id);
    },
  });
  for (const [label, intent] of [['Run', 'run'], ['Save', 'save']]) {
    const b = h('button', { type: 'button' }, label);
    b.addEventListener('click', () => { f.dataset.intent = intent; f.requestSubmit(); });
    f.lastChild.append(b);
  }
  function watch(id) {
    if (watching) clearInterval(watching);
    const tick = async () => {
      const r = await api('GET', `/api/v1/workflows/runs/${encodeURIComponent(id)}`).catch((e) => { put(out, h('p', { class: 'bad' }, e.message)); return null; });
      if (!r) return;
      const view = workflowView(r);
      if (r.status === 'running') {
        view.prepend(h('button', { type: 'button', class: 'danger', onclick: async (ev) => {
          ev.target.disabled = true;
          await api('POST', `/api/v1/workflows/runs/${encodeURIComponent(id)}/cancel`).catch((e) => put(out, h('p', { class: 'bad' }, e.message)));
          tick();
        } }, 'Cancel run'));
      }
      put(out, view);
      if (r.status !== 'running') { clearInterval(watching); watching = null; loadRuns(); }
    };
    tick();
    watching = setInterval(tick, 1000);
    page.timers.push(watching);
  }
  async function loadRuns() {
    const r = await api('GET', '/api/v1/workflows/runs?limit=30');
    put(runs, table([
      ['Run', (x) => h('button', { type: 'button', class: 'secondary', onclick: () => watch(x.id) }, x.id.slice(0, 12))],
      ['Workflow', (x) => x.workflow], ['Kind', (x) => x.kind], ['Status', (x) => x.status], ['Created', (x) => fmtTime(x.created_ms)],
    ], r.runs, 'No workflow runs yet.'));
  }
  async function loadSaved() {
    const r = await api('GET', '/api/v1/workflows');
    const path = (x) => `/api/v1/workflows/${encodeURIComponent(x.name)}`;
    put(saved, table([
      ['Name', (x) => x.name], ['Kind', (x) => x.kind], ['Agents', (x) => x.agents.join(', ')], ['Version', (x) => String(x.version)],
      ['Saved', (x) => fmtTime(x.saved_ms)],
      ['Actions', (x) => h('div', { class: 'actions' },
        h('button', { type: 'button', 'aria-label': `run workflow ${x.name}`, onclick: async () => {
          const input = f.querySelector('[name=input]').value;
          const r = await api('POST', `${path(x)}/runs`, { input, wait: false }).catch((e) => { put(out, h('p', { class: 'bad' }, e.message)); return null; });
          if (r) watch(r.id);
        } }, 'run'),
        h('button', { type: 'button', class: 'secondary', 'aria-label': `edit workflow ${x.name}`, onclick: () => { f.querySelector('[name=workflow]').value = x.text; } }, 'edit'),
        h('button', { type: 'button', class: 'danger', 'aria-label': `delete workflow ${x.name}`, onclick: async () => {
          if (!confirm(`Delete the saved workflow ${x.name}? Its past runs stay.`)) return;
          await api('DELETE', path(x)).catch((e) => put(out, h('p', { class: 'bad' }, e.message)));
          loadSaved();
        } }, 'delete'))],
    ], r.workflows, 'No saved workflows yet. Write one above and press Save.'));
  }
  m.append(section('Define', f), section('Saved workflows', saved), section('Run', out), section('Recent runs', runs));
  await Promise.all([loadRuns(), loadSaved()]);
}

/** The `name` of a workflow file (TOML `name = "…"`, or JSON), or null. */
function workflowName(text) {
  const t = text.trim();
  if (t.startsWith('{')) { try { return JSON.parse(t).name || null; } catch { return null; } }
  const m = /^\s*name\s*=\s*"([^"]+)"/m.exec(t);
  return m ? m[1] : null;
}

function workflowView(r) {
  const steps = r.steps || [];
  const graph = h('div', { class: 'graph', role: 'list', 'aria-label': 'Steps' });
  steps.forEach((s, i) => {
    if (i) graph.append(h('span', { class: 'arrow', 'aria-hidden': 'true' }, '→'));
    graph.append(h('div', { role: 'listitem', class: `step ${s.succeeded ? 'ok' : s.error ? 'failed' : 'running'}`, title: s.output || s.error || '' },
      h('strong', {}, s.label), h('br'), h('small', {}, `${s.agent} · try ${s.attempt}${s.error ? ' · failed' : s.succeeded ? ' · ok' : ''}`)));
  });
  if (r.status === 'running') graph.append(h('span', { class: 'arrow' }, '…'));
  return h('div', {},
    kv([['Run', r.id], ['Workflow', `${r.workflow} (${r.kind})`], ['Status', h('span', { class: `badge ${r.status === 'succeeded' ? 'ok' : r.status === 'running' || r.status === 'cancelled' ? 'warn' : 'bad'}` }, r.status)],
      r.rerouted_to ? ['Rerouted to', r.rerouted_to] : null, r.error ? ['Error', h('span', { class: 'bad' }, r.error)] : null]),
    h('h3', {}, 'Steps'), steps.length ? graph : h('p', { class: 'muted' }, 'No step has finished yet.'),
    (r.judgements || []).length ? [h('h3', {}, 'Judges'), table([['Target', (j) => j.target], ['Passed', (j) => (j.passed ? 'yes' : 'no')], ['Score', (j) => j.score ?? '–'], ['Reasons', (j) => j.reasons.join('; ')]], r.judgements)] : null,
    h('h3', {}, 'Output'), h('pre', {}, r.output ?? '(none yet)'));
}

// memory

async function pageMemory(m) {
  const overview = h('div');
  const records = h('div');
  const hits = h('div', { 'aria-live': 'polite' });
  const nsSel = h('select', { id: 'mem-ns', name: 'namespace' });
  const exportLink = h('a', { download: true, href: '#' }, 'Export this namespace (JSON Lines)');
  const TIERS = ['working', 'episodic', 'semantic', 'procedural'];
  const recordsTable = (rs, empty) => table([
    ['Id', (r) => r.id], ['Tier', (r) => r.tier], ['Text', (r) => h('span', { class: 'record-text' }, r.text)], ['Created', (r) => fmtTime(r.created_ms)],
    ['Pinned', (r) => (r.pinned ? 'yes' : 'no')],
    ['Actions', (r) => h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'secondary', onclick: () => change(`/api/v1/memory/records/${r.id}/${r.pinned ? 'unpin' : 'pin'}`, 'POST') }, r.pinned ? 'unpin' : 'pin'),
      h('button', { type: 'button', class: 'danger', 'aria-label': `delete record ${r.id}`, onclick: () => confirm(`Delete record ${r.id}?`) && change(`/api/v1/memory/records/${r.id}`, 'DELETE') }, 'delete'))],
  ], rs, empty);
  async function change(path, method) {
    await attempt(() => api(method, path), 'Memory');
    load();
  }
  async function load() {
    const o = await api('GET', '/api/v1/memory');
    const names = Object.keys(o.namespaces).sort();
    const cur = nsSel.value || (names.includes('shared') ? 'shared' : names[0]);
    put(nsSel, ...names.map((n) => h('option', { value: n, selected: n === cur }, n)));
    put(overview, kv(Object.entries(o.store || {}).map(([k, v]) => [k.replace(/_/g, ' '), typeof v === 'object' ? JSON.stringify(v) : String(v)])),
      table([['Namespace', (x) => x[0]], ['Records', (x) => x[1].records], ['Quota', (x) => x[1].quota], ['Terms', (x) => x[1].terms]], Object.entries(o.namespaces), 'No namespaces.'));
    if (!nsSel.value) { put(records, h('p', { class: 'muted' }, 'No namespace yet.')); return; }
    exportLink.href = `/api/v1/memory/export?namespace=${encodeURIComponent(nsSel.value)}`;
    exportLink.setAttribute('download', `${nsSel.value}.jsonl`);
    const p = await api('GET', `/api/v1/memory/records?namespace=${encodeURIComponent(nsSel.value)}&limit=100`);
    put(records, recordsTable(p.records, 'No records in this namespace.'));
  }
  nsSel.addEventListener('change', load);
  const remember = form({
    submit: 'Remember', label: 'Remember a record',
    fields: [
      { name: 'namespace', label: 'Namespace', value: 'shared', required: true },
      { name: 'tier', label: 'Tier', type: 'select', options: TIERS, value: 'semantic' },
      { name: 'text', label: 'Text', type: 'textarea', rows: 3, required: true },
      { name: 'pinned', label: 'Pinned', type: 'checkbox' },
    ],
    async onSubmit(v, { form: f }) {
      const r = await api('POST', '/api/v1/memory/records', { namespace: v.namespace, tier: v.tier, text: v.text, pinned: v.pinned });
      toast(r.deduplicated ? `Already known as record ${r.deduplicated}` : `Remembered as record ${r.record.id}`);
      f.inputs.text.value = '';
      load();
    },
  });
  const search = form({
    submit: 'Search', label: 'Recall',
    fields: [
      { name: 'query', label: 'Search for', required: true },
      { name: 'namespaces', label: 'Namespaces (comma-separated, empty for all)' },
      { name: 'k', label: 'Results', type: 'number', value: '10', min: 1, max: 100 },
    ],
    async onSubmit(v) {
      const ns = v.namespaces.split(',').map((x) => x.trim()).filter(Boolean);
      const r = await api('POST', '/api/v1/memory/recall', { query: v.query, k: Number(v.k) || 10, namespaces: ns.length ? ns : undefined });
      put(hits,
        (r.notes || []).length ? h('p', { class: 'muted' }, r.notes.join(' ')) : null,
        table([['Score', (x) => x.score.toFixed(3)], ['Namespace', (x) => x.record.namespace], ['Id', (x) => x.record.id], ['Text', (x) => h('span', { class: 'hit-text' }, x.record.text)]], r.results, 'Nothing matches.'));
    },
  });
  m.append(h('div', { class: 'grid' }, section('Remember', remember), section('Recall', search, hits)),
    section('Records', h('label', { for: 'mem-ns' }, 'Namespace'), nsSel, h('p', {}, exportLink), records),
    section('Store', overview));
  await load();
}

// models and routing

/** A model's state: loaded, loading with a progress bar, failed, or a Load button. */
function modelState(x, reload) {
  if (x.loaded) {
    return h('span', {}, h('span', { class: 'badge ok' }, 'loaded'), ' ', h('button', { type: 'button', class: 'secondary', 'aria-label': `unload ${x.id}`, onclick: async () => {
      if (await attempt(() => api('POST', `/api/v1/models/${encodeURIComponent(x.id)}/unload`), `Unload ${x.id}`)) reload();
    } }, 'Unload'));
  }
  if (x.load && x.load.error) {
    return h('span', {}, h('span', { class: 'bad' }, `failed: ${x.load.error}`), ' ', h('button', { type: 'button', class: 'secondary', onclick: () => startLoad(x.id, reload) }, 'Retry'));
  }
  if (x.load) {
    const bar = h('progress', { max: x.load.total || 1, 'aria-label': `Loading ${x.id}` });
    if (x.load.total) bar.value = x.load.done;
    return h('span', { class: 'loading' }, bar, ` ${x.load.total ? Math.round((100 * x.load.done) / x.load.total) : 0}% · ${fmtSecs(Math.round((Date.now() - x.load.started_ms) / 1000))}`);
  }
  return h('button', { type: 'button', 'aria-label': `load ${x.id}`, onclick: () => startLoad(x.id, reload) }, 'Load');
}

async function startLoad(id, reload) {
  if (await attempt(() => api('POST', `/api/v1/models/${encodeURIComponent(id)}/load`), `Load ${id}`)) reload();
}

async function pageModels(m) {
  const local = h('div');
  let polling = null;
  async function loadLocal() {
    const lm = await api('GET', '/api/v1/models');
    put(local, h('p', { class: 'muted' }, `Device: ${lm.device}`), (lm.warnings || []).map((w) => h('p', { class: 'bad' }, w)),
      table([['Model', (x) => x.id], ['Kind', (x) => x.kind], ['Origin', (x) => x.origin], ['State', (x) => modelState(x, loadLocal)],
        ['', (x) => (x.origin === 'registered' ? h('button', { type: 'button', class: 'danger', 'aria-label': `remove model ${x.id}`, onclick: async () => {
          if (!confirm(`Remove model ${x.id}? An uploaded file is deleted.`)) return;
          // A removal answers 204 without a body: reload whatever the answer was.
          await attempt(() => api('DELETE', `/api/v1/models/${encodeURIComponent(x.id)}`), `Remove ${x.id}`);
          loadLocal();
        } }, 'remove') : '')]], lm.models, 'No local models are installed.'));
    // Poll while a load runs; stop when none does.
    const busy = lm.models.some((x) => x.load && !x.load.error);
    if (busy && !polling) { polling = setInterval(() => loadLocal().catch(() => {}), 500); page.timers.push(polling); }
    if (!busy && polling) { clearInterval(polling); polling = null; }
  }
  const providers = h('div');
  const breakers = h('div');
  const usage = h('div');
  const policyBox = h('div');
  async function load() {
    const [pr, st, br, us] = await Promise.all([api('GET', '/api/v1/router/providers'), api('GET', '/api/v1/router'), api('GET', '/api/v1/router/breakers'), api('GET', '/api/v1/router/usage?days=7')]);
    await loadLocal();
    put(providers, table([
      ['Name', (p) => p.name], ['Kind', (p) => p.kind], ['Base URL', (p) => p.base_url], ['Models', (p) => p.models.map((x) => x.id).join(', ')],
      ['Key', (p) => (p.key_set ? 'set' : 'none')], ['Enabled', (p) => (p.enabled ? 'yes' : 'no')],
      ['', (p) => h('button', { type: 'button', class: 'danger', 'aria-label': `delete provider ${p.name}`, onclick: async () => { if (confirm(`Delete provider ${p.name}?`)) { await attempt(() => api('DELETE', `/api/v1/router/providers/${encodeURIComponent(p.name)}`), 'Delete'); load(); } } }, 'delete')],
    ], pr.providers, 'No remote providers: only local models are used.'));
    put(policyBox, form({
      submit: 'Save routing settings', label: 'Routing settings',
      fields: [
        { name: 'policy', label: 'Default policy', type: 'select', options: st.policies, value: st.settings.policy },
        { name: 'offline', label: 'Offline: never use remote providers', type: 'checkbox', value: st.settings.offline },
      ],
      async onSubmit(v) { await api('PUT', '/api/v1/router/settings', { policy: v.policy, offline: v.offline }); toast('Routing settings saved'); },
    }), h('h3', {}, 'Budgets'), h('pre', {}, JSON.stringify(st.settings.budgets, null, 2)));
    put(breakers, table([
      ['Provider', (b) => b.provider], ['State', (b) => h('span', { class: `badge ${b.state === 'closed' ? 'ok' : 'bad'}` }, b.state)],
      ['Failures', (b) => b.consecutive_failures], ['Opened', (b) => b.opened], ['Retry in', (b) => (b.retry_in_ms != null ? `${b.retry_in_ms} ms` : '–')],
    ], br.breakers, 'No breaker has seen a call yet.'));
    // Cost and calls per day over the week, every day shown (0 when nothing was routed).
    const days = [];
    for (let i = 6; i >= 0; i--) days.push(new Date(Date.now() - i * 86400000).toISOString().slice(0, 10));
    const costHost = h('div', { class: 'chart-cell' });
    const callsHost = h('div', { class: 'chart-cell' });
    const cost = new LineChart(costHost, { title: 'Cost per day, last 7 days', unit: 'USD', size: 7, digits: 4 });
    const calls = new LineChart(callsHost, { title: 'Routed calls per day, last 7 days', unit: 'calls', size: 7, digits: 0 });
    for (const d of days) {
      const rows = us.rows.filter((r) => r.day === d);
      cost.push(rows.reduce((a, r) => a + (r.cost_usd || 0), 0));
      calls.push(rows.reduce((a, r) => a + (r.calls || 0), 0));
    }
    put(usage, h('div', { class: 'grid' }, costHost, callsHost), table([
      ['Day', (r) => r.day], ['Caller', (r) => r.caller], ['Provider', (r) => r.provider], ['Model', (r) => r.model], ['Calls', (r) => r.calls],
      ['Failures', (r) => r.failures || 0], ['Tokens in / out', (r) => `${r.prompt_tokens} / ${r.completion_tokens}`], ['Cost', (r) => fmtUsd(r.cost_usd)],
    ], us.rows, 'No routed calls in the last 7 days.'));
  }
  const create = form({
    submit: 'Add provider', label: 'Add a provider',
    fields: [
      { name: 'name', label: 'Name', required: true, placeholder: 'openai' },
      { name: 'kind', label: 'Protocol', type: 'select', options: [['openai', 'OpenAI-compatible'], ['anthropic', 'Anthropic']] },
      { name: 'base_url', label: 'Base URL', type: 'url', required: true, placeholder: 'https://api.example/v1' },
      { name: 'models', label: 'Model ids (comma-separated)', required: true },
      { name: 'key', label: 'API key (write-only: never shown again)', type: 'password', autocomplete: 'new-password' },
      { name: 'tls_sha256', label: 'Pinned certificate SHA-256 (optional)' },
    ],
    async onSubmit(v, { form: f }) {
      const body = { name: v.name.trim(), kind: v.kind, base_url: v.base_url.trim(), models: v.models.split(',').map((x) => x.trim()).filter(Boolean).map((id) => ({ id })) };
      if (v.key) body.key = v.key;
      if (v.tls_sha256.trim()) body.tls_sha256 = v.tls_sha256.trim();
      try {
        await api('POST', '/api/v1/router/providers', body);
      } catch (e) {
        if (/^models\[/.test(e.message)) e.message = e.message.replace(/^models\[\d+\][\w.]*: /, 'models: ');
        throw e;
      }
      f.reset();
      toast('Provider added');
      load();
    },
  });
  const bar = h('progress', { value: 0, max: 1, 'aria-label': 'Upload progress', hidden: true });
  const upload = form({
    submit: 'Upload model', label: 'Add a model',
    fields: [
      { name: 'id', label: 'Model id', required: true, placeholder: 'my-model', hint: '1-64 of a-z, 0-9, ".", "_", "-": what clients ask for.' },
      { name: 'file', label: 'GGUF file (chat model)', type: 'file', required: true, accept: '.gguf' },
    ],
    async onSubmit(v, { form: f }) {
      bar.hidden = false;
      bar.removeAttribute('value');
      // The hash goes with the upload, so the appliance can tell a cut or altered file.
      const sha = [...new Uint8Array(await crypto.subtle.digest('SHA-256', await v.file.arrayBuffer()))].map((b) => b.toString(16).padStart(2, '0')).join('');
      try {
        await uploadWithProgress('PUT', `/api/v1/models/${encodeURIComponent(v.id.trim())}`, headers('PUT', { 'X-Cairn-Sha256': sha }), v.file, bar);
      } finally {
        bar.hidden = true;
      }
      f.reset();
      toast('Model added');
      loadLocal();
    },
  });
  m.append(section('Local models', local, h('h3', {}, 'Add a model'), upload, bar), section('Routing', policyBox), section('Providers', providers, h('h3', {}, 'Add a provider'), create),
    section('Circuit breakers', breakers), section('Usage, last 7 days', usage));
  await load();
}

// events, audit

async function pageEvents(m) {
  const out = h('pre', { class: 'log', 'aria-live': 'polite', 'aria-label': 'Log lines' });
  const note = h('p', { class: 'muted' });
  let since = 0;
  let lines = [];
  const f = form({
    submit: 'Apply', label: 'Filter',
    fields: [
      { name: 'level', label: 'Level', type: 'select', options: ['info', 'warn', 'error', 'debug'], value: 'info' },
      { name: 'contains', label: 'Containing' },
    ],
    async onSubmit() { since = 0; lines = []; await tick(); },
  });
  async function tick() {
    const { level, contains } = f.inputs;
    const q = `since=${since}&limit=500&level=${level.value}${contains.value ? `&contains=${encodeURIComponent(contains.value)}` : ''}`;
    const r = await api('GET', `/api/v1/system/logs?${q}`);
    since = r.next;
    lines = lines.concat(r.lines.map((l) => `${l.time} ${l.level.padEnd(5)} ${l.message}`)).slice(-500);
    out.textContent = lines.join('\n') || '(no lines yet)';
    note.textContent = `Live: the appliance's last ${lines.length} log lines, newest last, refreshed every 3 s.`;
  }
  m.append(eventStream(), section('Log', f, note, out));
  every(3000, () => tick().catch((e) => { note.textContent = e.message; }));
}

const EVENT_KINDS = [['', 'all kinds'], ['agent', 'agents'], ['agent.run', 'agent runs'], ['agent.denied', 'capability denials'],
  ['router', 'router'], ['router.call', 'model calls'], ['router.breaker', 'breakers'], ['auth.login', 'logins'],
  ['operator.action', 'operator actions'], ['machine.settings', 'machine settings']];

/** The structured event stream, newest first, with filters; polled every 2 s. */
function eventStream() {
  const rows = h('div', { 'aria-live': 'polite' });
  const note = h('p', { class: 'muted' });
  let since = 0;
  let events = [];
  // Bumped by every filter change: an answer to a request made before it is dropped, so no
  // event of the old filter lands in the new list.
  let gen = 0;
  // The running request of the current generation: the 2 s poll does not start a second one.
  let inflight = null;
  const f = form({
    submit: 'Filter', label: 'Filter events',
    fields: [
      { name: 'kind', label: 'Kind', type: 'select', options: EVENT_KINDS, value: '' },
      { name: 'subject', label: 'Subject', placeholder: 'agent, provider or user' },
      { name: 'contains', label: 'Message containing' },
      { name: 'problems', label: 'Only warnings and errors', type: 'checkbox', value: false },
    ],
    async onSubmit() {
      gen += 1;
      since = 0;
      events = [];
      inflight = null;
      put(rows, h('p', { class: 'muted' }, 'Loading…'));
      await tick();
    },
  });
  function tick() {
    if (!inflight) {
      const mine = gen;
      inflight = fetchEvents(mine).finally(() => { if (gen === mine) inflight = null; });
    }
    return inflight;
  }
  async function fetchEvents(mine) {
    const i = f.inputs;
    const q = new URLSearchParams({ since: String(since), limit: '500' });
    if (i.kind.value) q.set('kind', i.kind.value);
    if (i.subject.value.trim()) q.set('subject', i.subject.value.trim());
    if (i.contains.value.trim()) q.set('contains', i.contains.value.trim());
    if (i.problems.checked) q.set('problems', 'true');
    const r = await api('GET', `/api/v1/events?${q}`);
    if (mine !== gen) return;
    since = r.next;
    events = events.concat(r.events).slice(-500);
    put(rows, table([
      ['Time', (e) => fmtTime(e.time_ms)], ['Kind', (e) => h('code', {}, e.kind)], ['Subject', (e) => e.subject],
      ['Event', (e) => h('span', { class: e.level === 'info' ? '' : e.level === 'warn' ? 'warn' : 'bad' }, e.message)],
    ], events.slice().reverse(), 'No events match yet.'));
    note.textContent = `Live: ${events.length} events, newest first, refreshed every 2 s.`;
  }
  every(2000, () => tick().catch((e) => { note.textContent = e.message; }));
  return section('Event stream', f, note, rows);
}

async function pageAudit(m) {
  const denials = h('div');
  const actions = h('div');
  m.append(section('Operator actions', actions), section('Agent capability denials', denials));
  every(10000, async () => {
    const [d, a] = await Promise.all([api('GET', '/api/v1/audit?limit=200').catch((e) => e), api('GET', '/api/v1/audit/actions?limit=200').catch((e) => e)]);
    put(denials, d instanceof Error ? h('p', { class: 'bad' }, d.message) : table([
      ['Time', (x) => fmtTime(x.ms)], ['Agent', (x) => x.agent || '–'], ['Run', (x) => x.run || '–'], ['Event', (x) => x.event], ['Detail', (x) => x.detail],
    ], d.entries, 'No denials recorded.'));
    put(actions, a instanceof Error ? h('p', { class: 'bad' }, a.status === 404 ? 'This version does not record operator actions.' : a.message) : table([
      ['Time', (x) => fmtTime(x.time * 1000)], ['Actor', (x) => x.actor], ['Request', (x) => `${x.method} ${x.path}`], ['Status', (x) => x.status],
    ], a.entries, 'No operator actions recorded.'));
  });
}

// settings

async function pageSettings(m) {
  const tokens = h('div');
  const fresh = h('div', { 'aria-live': 'polite' });
  const sys = await api('GET', '/api/v1/system');
  const site = await api('GET', '/api/v1/settings/site').catch(() => ({ value: '' }));
  const siteForm = form({
    submit: 'Save', label: 'Site',
    fields: [{ name: 'site', label: 'Site name', value: typeof site.value === 'string' ? site.value : '', required: true, hint: 'Shown in the header and the window title.' }],
    async onSubmit(v) {
      await api('PUT', '/api/v1/settings/site', v.site.trim());
      siteName = v.site.trim();
      document.getElementById('site').textContent = siteName;
      toast('Site name saved');
    },
  });
  async function loadTokens() {
    const t = await api('GET', '/api/v1/auth/tokens');
    put(tokens, table([
      ['Name', (x) => x.name], ['Scope', (x) => x.scope], ['Created', (x) => fmtTime(x.created * 1000)],
      ['Last used', (x) => (x.last_used == null ? 'never' : fmtTime(x.last_used * 1000))],
      ['Expires', (x) => (x.expires == null ? 'never' : `${fmtTime(x.expires * 1000)}${x.expires * 1000 <= Date.now() ? ' (expired)' : ''}`)],
      ['', (x) => h('button', { type: 'button', class: 'danger', 'aria-label': `revoke token ${x.name}`, onclick: async () => { if (confirm(`Revoke ${x.name}?`)) { await attempt(() => api('DELETE', `/api/v1/auth/tokens/${encodeURIComponent(x.id)}`), 'Revoke'); loadTokens(); } } }, 'revoke')],
    ], t.tokens, 'No API tokens.'));
  }
  const tokenForm = form({
    submit: 'Create token', label: 'New API token',
    fields: [{ name: 'name', label: 'Token name', required: true }, { name: 'scope', label: 'Scope', type: 'select', options: ['reader', 'operator', 'admin'], value: 'operator' },
      { name: 'expires_in', label: 'Expires', type: 'select', options: [[String(7 * 86400), 'in 7 days'], [String(30 * 86400), 'in 30 days'], [String(90 * 86400), 'in 90 days'], [String(365 * 86400), 'in a year'], ['never', 'never']], value: String(90 * 86400) }],
    async onSubmit(v, { form: f }) {
      const body = { name: v.name, scope: v.scope, expires_in: v.expires_in === 'never' ? 'never' : Number(v.expires_in) };
      const t = await api('POST', '/api/v1/auth/tokens', body);
      put(fresh, h('p', {}, `Token ${t.name} (${t.scope}). Copy it now: it is shown only once.`), h('p', { class: 'secret new-token' }, t.token));
      f.reset();
      loadTokens();
    },
  });
  const pw = form({
    submit: 'Change password', label: 'Password',
    fields: [
      { name: 'current', label: 'Current password', type: 'password', required: true, autocomplete: 'current-password' },
      { name: 'password', label: 'New password', type: 'password', required: true, autocomplete: 'new-password', hint: '10 to 256 characters.' },
      { name: 'confirm', label: 'Confirm new password', type: 'password', required: true, autocomplete: 'new-password' },
    ],
    async onSubmit(v, { show, form: f }) {
      if (v.password !== v.confirm) return show('confirm', 'The passwords do not match.');
      await api('POST', '/api/v1/auth/password', { current: v.current, password: v.password });
      f.reset();
      toast('Password changed');
    },
  });
  m.append(section('Site', siteForm),
    section('API tokens', tokens, h('h3', {}, 'New token'), tokenForm, fresh),
    section('Password', pw),
    await machineSections(),
    await offlineSection(),
    section('Certificate', kv([['SHA-256 fingerprint', h('code', { id: 'tls-fp' }, sys.tls_fingerprint)]]), h('p', { class: 'muted' }, 'Compare it with the fingerprint on the appliance console before trusting this connection.'),
      h('h3', {}, 'Replace the certificate'), certForm()));
  await loadTokens().catch((e) => put(tokens, h('p', { class: 'bad' }, e.message)));
}

/** Offline mode: no remote provider and no agent egress (the router's setting). */
async function offlineSection() {
  const st = await api('GET', '/api/v1/router').catch(() => null);
  if (!st) return section('Offline mode', h('p', { class: 'bad' }, 'The router did not answer.'));
  const state = h('p', { id: 'offline-state' }, st.settings.offline ? 'Offline: nothing leaves the appliance.' : 'Online: remote providers and granted agent egress are allowed.');
  const f = form({
    submit: 'Save offline mode', label: 'Offline mode',
    fields: [{ name: 'offline', label: 'Offline: never call remote providers, refuse all agent egress', type: 'checkbox', value: st.settings.offline }],
    async onSubmit(v) {
      const r = await api('PUT', '/api/v1/router/settings', { offline: v.offline });
      state.textContent = r.offline ? 'Offline: nothing leaves the appliance.' : 'Online: remote providers and granted agent egress are allowed.';
      toast(r.offline ? 'Offline mode on' : 'Offline mode off');
    },
  });
  return section('Offline mode', state, f);
}

/** Replaces the served certificate with one the site's CA issued (PEM certificate chain + key). */
function certForm() {
  return form({
    submit: 'Replace certificate', label: 'Replace the certificate',
    fields: [
      { name: 'certificate', label: 'Certificate chain (PEM)', type: 'textarea', required: true, rows: 5, placeholder: '-----BEGIN CERTIFICATE-----' },
      { name: 'key', label: 'Private key (PEM)', type: 'textarea', required: true, rows: 4, placeholder: '-----BEGIN PRIVATE KEY-----', hint: 'Sent once over this connection; never shown again.' },
    ],
    async onSubmit(v, { form: f }) {
      const r = await api('PUT', '/api/v1/tls', { certificate: v.certificate, key: v.key });
      f.reset();
      document.getElementById('tls-fp').textContent = r.fingerprint;
      toast(`Certificate replaced. New fingerprint ${r.fingerprint}: browsers will ask to trust it again.`);
    },
  });
}

/** Host name, network (with the confirm-or-revert probation) and clock. */
async function machineSections() {
  const box = h('div');
  async function load() {
    const st = await api('GET', '/api/v1/system/settings');
    const clock = await api('GET', '/api/v1/system/clock').catch(() => null);
    const net = st.settings.network;
    const notes = [];
    if (!st.managed) notes.push(h('p', { class: 'muted' }, 'This instance runs hosted: the settings are stored, but the host system manages its own name, network and clock.'));
    for (const o of st.overrides || []) notes.push(h('p', { class: 'bad' }, o));
    const live = st.in_force ? kv([
      ['Host name', st.in_force.hostname],
      ['Network', `${st.in_force.network.mode || '–'}: ${st.in_force.network.state || '–'}`],
      ['Addresses', (st.in_force.network.addresses || []).join(', ') || '–'],
      ['Gateway', st.in_force.network.gateway || '–'],
      ['Resolvers', (st.in_force.network.dns || []).join(', ') || '–'],
    ]) : null;
    const pending = h('div', { 'aria-live': 'polite' });
    if (st.pending) {
      const left = h('strong', { id: 'net-countdown' }, fmtSecs(st.pending.remaining_s));
      const deadline = Date.now() + st.pending.remaining_s * 1000;
      page.timers.push(setInterval(() => {
        const s = Math.max(0, Math.round((deadline - Date.now()) / 1000));
        left.textContent = fmtSecs(s);
        if (s === 0) load().catch(() => {});
      }, 1000));
      put(pending, h('div', { class: 'pending', role: 'alert' },
        h('p', {}, 'The network change is on probation. Keep it from the address you reach the appliance at now, or it is reverted in ', left, '.'),
        h('div', { class: 'row' },
          h('button', { type: 'button', id: 'net-confirm', onclick: async () => { if (await attempt(() => api('POST', '/api/v1/system/settings/confirm'), 'Confirm')) { toast('Network settings kept'); load(); } } }, 'Keep these settings'),
          h('button', { type: 'button', class: 'secondary', onclick: async () => { if (await attempt(() => api('POST', '/api/v1/system/settings/revert'), 'Revert')) { toast('Previous network settings restored'); load(); } } }, 'Revert now'))));
    }
    const hostForm = form({
      submit: 'Save host name', label: 'Change the host name',
      fields: [{ name: 'hostname', label: 'Host name', value: st.settings.hostname, required: true, hint: '1-63 letters, digits or -.' }],
      async onSubmit(v) {
        const r = await api('PUT', '/api/v1/system/settings', { hostname: v.hostname.trim() });
        await load();
        toast(r.status === 'unchanged' ? 'Host name unchanged' : 'Host name saved');
      },
    });
    const netForm = form({
      submit: 'Apply network settings', label: 'Change the network settings',
      fields: [
        { name: 'mode', label: 'Addressing', type: 'select', options: [['dhcp', 'DHCP'], ['static', 'Static']], value: net.mode },
        { name: 'interface', label: 'Interface', value: net.interface || '', placeholder: 'first wired interface' },
        { name: 'address', label: 'Address / prefix (static)', value: net.address || '', placeholder: '192.168.1.20/24' },
        { name: 'gateway', label: 'Gateway (static)', value: net.gateway || '', placeholder: '192.168.1.1' },
        { name: 'dns', label: 'Resolvers (static, comma-separated)', value: (net.dns || []).join(', ') },
        { name: 'confirm_within_s', label: 'Seconds to confirm', type: 'number', value: '120', min: 10, max: 3600, hint: 'Without a confirmation in time, the previous settings come back by themselves.' },
      ],
      async onSubmit(v) {
        const body = {
          network: { mode: v.mode, interface: v.interface, address: v.address, gateway: v.gateway, dns: v.dns.split(/[\s,]+/).filter(Boolean) },
          confirm_within_s: Number(v.confirm_within_s) || 120,
        };
        const r = await api('PUT', '/api/v1/system/settings', body);
        await load();
        toast(r.status === 'pending' ? 'Network settings applied on probation' : 'Network settings unchanged');
      },
    });
    const clockBox = h('div');
    if (clock) {
      const skew = Math.round(clock.unix - Date.now() / 1000);
      clockBox.append(kv([['Appliance time', fmtTime(clock.unix * 1000)], ['Difference to this browser', `${skew} s`], ['Source', clock.source || '–']]));
      if (clock.settable) {
        clockBox.append(h('button', { type: 'button', id: 'clock-set', onclick: async () => {
          if (await attempt(() => api('POST', '/api/v1/system/clock', { unix: Math.round(Date.now() / 1000) }), 'Set the clock')) { toast('Clock set'); load(); }
        } }, "Set the appliance's clock to this browser's time"));
      }
    }
    put(box, section('Host name', ...notes, hostForm),
      section('Network', live ? h('h3', {}, 'In force') : null, live, pending, h('h3', {}, 'Configured'), netForm),
      section('Time', clockBox));
  }
  await load().catch((e) => put(box, h('p', { class: 'bad' }, e.message)));
  return box;
}

// backup

/** Uploads a backup to restore (with the setup code before onboarding, else the session). */
function uploadBackup(file, passphrase, code, bar) {
  const hdrs = { 'X-Cairn-Passphrase': passphrase };
  if (code) hdrs['X-Cairn-Setup-Code'] = code;
  else if (auth.csrf) hdrs['X-CSRF-Token'] = auth.csrf;
  return uploadWithProgress('POST', '/api/v1/backup/restore', hdrs, file, bar);
}

/** Waits until the restarted appliance answers again (the old one answers 503 while it stops),
 * then shows the overview, or the log-in page when this browser's session is not in the
 * restored box. */
async function waitForRestart(status) {
  await new Promise((r) => setTimeout(r, 1500));
  for (let i = 0; i < 600; i++) {
    try {
      const r = await fetch('/api/v1/auth/state', { credentials: 'same-origin' });
      if (r.ok) {
        // The restored box's own sessions: this browser's is still valid only if the backup
        // holds it (a backup of this same box).
        const s = await r.json();
        auth.onboarded = s.onboarded;
        auth.user = s.user || null;
        auth.csrf = s.csrf || null;
        status.textContent = 'Restored.';
        toast('Backup restored');
        return go(auth.user ? '/' : '/login');
      }
    } catch { /* restarting */ }
    await new Promise((r) => setTimeout(r, 1000));
  }
  status.textContent = 'The appliance did not come back within 10 minutes; check its console.';
}

/** The restore form: a backup file and its passphrase (and the setup code before onboarding). */
function restoreForm({ setupCode }) {
  const bar = h('progress', { value: 0, max: 1, 'aria-label': 'Upload progress', hidden: true });
  const status = h('p', { role: 'status' });
  const fields = [];
  if (setupCode) fields.push({ name: 'code', label: 'Setup code for the restore', required: true, placeholder: 'XXXX-XXXX-XXXX', autocomplete: 'one-time-code' });
  fields.push({ name: 'file', label: 'Backup file', type: 'file', required: true, accept: '.age,application/octet-stream' },
    { name: 'passphrase', label: 'Backup passphrase', type: 'password', required: true, autocomplete: 'off' });
  const f = form({
    label: 'Restore a backup',
    submit: 'Restore',
    fields,
    async onSubmit(v) {
      if (!setupCode && !confirm('Restore this backup? Everything on this box is replaced by the backup; the appliance restarts.')) return;
      bar.hidden = false;
      status.textContent = 'Uploading and checking the backup…';
      try {
        const r = await uploadBackup(v.file, v.passphrase, setupCode ? v.code.trim() : null, bar);
        status.textContent = `Backup of ${r.backup.hostname} (Cairn ${r.backup.cairn}, ${r.files} files, ${fmtBytes(r.bytes)}) accepted; the appliance is restarting…`;
        await waitForRestart(status);
      } catch (e) {
        bar.hidden = true;
        status.textContent = '';
        throw e;
      }
    },
  });
  return h('div', {}, f, bar, status);
}

async function pageBackup(m) {
  const status = h('p', { role: 'status' });
  const download = form({
    label: 'Download a backup',
    submit: 'Download backup',
    fields: [
      { name: 'passphrase', label: 'Passphrase', type: 'password', required: true, autocomplete: 'new-password', hint: 'At least 10 characters. Without it the backup cannot be opened: keep it apart from the file.' },
      { name: 'confirm', label: 'Confirm passphrase', type: 'password', required: true, autocomplete: 'new-password' },
      { name: 'tls', label: "Include this box's TLS identity (its certificate and private key)", type: 'checkbox' },
    ],
    async onSubmit(v, { show }) {
      if (v.passphrase !== v.confirm) return show('confirm', 'The passphrases do not match.');
      status.textContent = 'Making the backup…';
      const r = await fetch('/api/v1/backup', {
        method: 'POST', credentials: 'same-origin',
        headers: headers('POST', { 'Content-Type': 'application/json' }),
        body: JSON.stringify({ passphrase: v.passphrase, tls: v.tls }),
      });
      if (!r.ok) {
        status.textContent = '';
        let data = null;
        try { data = await r.json(); } catch { /* not JSON */ }
        throw new ApiError(r.status, data, r.headers.get('Retry-After'));
      }
      const blob = await r.blob();
      const name = (/filename="([^"]+)"/.exec(r.headers.get('Content-Disposition') || '') || [])[1] || 'cairn-backup.tar.age';
      const url = URL.createObjectURL(blob);
      const a = h('a', { href: url, download: name }, name);
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      status.textContent = `Backup downloaded: ${name} (${fmtBytes(blob.size)}).`;
    },
  });
  m.append(
    section('Download a backup',
      h('p', {}, 'One encrypted file with everything that makes this box itself: accounts and API tokens, settings, agents and their state, memory, workflows, runs and usage, model providers (their keys stay sealed). Open it elsewhere with ', h('code', {}, 'age -d'), '.'),
      download, status),
    section('Restore a backup',
      h('p', {}, 'Replaces everything on this box with the backup. Writes made since the backup was taken are lost.'),
      restoreForm({ setupCode: false })));
}

// power

async function pagePower(m) {
  const msg = h('p', { role: 'alert' });
  const dlg = h('dialog', { 'aria-labelledby': 'power-q' });
  const q = h('p', { id: 'power-q' });
  const yes = h('button', { type: 'button', class: 'danger' }, 'Confirm');
  const no = h('button', { type: 'button', class: 'secondary' }, 'Cancel');
  dlg.append(q, h('div', { class: 'row' }, yes, no));
  let action = null;
  no.addEventListener('click', () => dlg.close());
  yes.addEventListener('click', async () => {
    dlg.close();
    try {
      await api('POST', '/api/v1/system/power', { action });
      msg.className = 'ok';
      msg.textContent = action === 'reboot' ? 'Rebooting: this page stops answering until the appliance is back.' : 'Shutting down.';
    } catch (e) {
      msg.className = 'bad';
      msg.textContent = e.message;
    }
  });
  const ask = (a, text) => () => { action = a; q.textContent = text; dlg.showModal(); };
  m.append(section('Power',
    h('p', {}, 'Running requests and agent runs are interrupted. Data already acknowledged is safe.'),
    h('div', { class: 'row' },
      h('button', { type: 'button', onclick: ask('reboot', 'Reboot the appliance now?') }, 'Reboot'),
      h('button', { type: 'button', class: 'danger', onclick: ask('poweroff', 'Shut the appliance down now? It stays off until someone powers it on.') }, 'Shut down')),
    msg), dlg);
}

// start

async function boot() {
  try {
    const s = await api('GET', '/api/v1/auth/state');
    auth.onboarded = s.onboarded;
    auth.fingerprint = s.fingerprint;
    auth.user = s.user;
    auth.csrf = s.csrf;
  } catch (e) {
    put(main, h('h1', {}, 'Cairn'), h('p', { class: 'form-error', role: 'alert' }, `The appliance did not answer: ${e.message}`));
    return;
  }
  if (auth.user) loadSiteName();
  render();
}

boot();
