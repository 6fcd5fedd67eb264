// guacr's built-in web client: lists the connections a user may open, and shows one session at a time
// through guacr's WebSocket tunnel with guacamole-common-js.
//
// Credentials travel in the URL fragment (#key=… or #token=…), which browsers never send to a server:
// the access key goes to guacr only as a request header (connection list) or in the tunnel's query.

import Guacamole from './vendor/guacamole-common.js';

const $ = (id) => document.getElementById(id);

// Plain words for each Guacamole status code (guacd's names in comments).
const STATUS_TEXT = {
  0x0100: 'The remote side does not support this.', // UNSUPPORTED
  0x0200: 'guacr had an internal error. Try again; if it keeps happening, look at guacr\'s log.', // SERVER_ERROR
  0x0201: 'guacr is busy right now. Try again in a moment.', // SERVER_BUSY
  0x0202: 'The remote desktop did not answer in time.', // UPSTREAM_TIMEOUT
  0x0203: 'The remote desktop or its session failed and the session ended.', // UPSTREAM_ERROR
  0x0204: 'The connection you asked for does not exist.', // RESOURCE_NOT_FOUND
  0x0205: 'The connection is in use and cannot be opened again.', // RESOURCE_CONFLICT
  0x0206: 'The connection has been closed.', // RESOURCE_CLOSED
  0x0207: 'The remote desktop cannot be reached: check its address and that it is running.', // UPSTREAM_NOT_FOUND
  0x0208: 'The remote desktop is not available right now.', // UPSTREAM_UNAVAILABLE
  0x0209: 'Someone else took over this session.', // SESSION_CONFLICT
  0x020A: 'The remote session timed out.', // SESSION_TIMEOUT
  0x020B: 'The remote session was closed by the server.', // SESSION_CLOSED
  0x0300: 'The browser sent something guacr could not understand.', // CLIENT_BAD_REQUEST
  0x0301: 'Not authorised: the link, token or access key was not accepted (it may have expired), or the remote desktop refused the credentials.', // CLIENT_UNAUTHORIZED
  0x0303: 'Not allowed: you may not open this connection, or the request tried to change where it goes.', // CLIENT_FORBIDDEN
  0x0308: 'This browser stopped responding and was disconnected.', // CLIENT_TIMEOUT
  0x030D: 'This browser sent too much data at once.', // CLIENT_OVERRUN
  0x030F: 'This browser sent data of a kind that is not accepted.', // CLIENT_BAD_TYPE
  0x031D: 'Too many sessions are open from here.', // CLIENT_TOO_MANY
};

const STATE_TEXT = ['Idle', 'Connecting…', 'Waiting for the remote desktop…', 'Connected', 'Disconnecting…', 'Disconnected'];

function describeStatus(status) {
  return STATUS_TEXT[status.code] || `The session ended with an unexpected error (status ${status.code}).`;
}

// --- where we are ---------------------------------------------------------------------------------

const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get('key')) sessionStorage.setItem('guacr.key', fragment.get('key'));
const token = fragment.get('token');
const wanted = fragment.get('connection');
// Keep the access key out of the address bar (and out of copied links); this tab remembers it.
if (fragment.has('key')) {
  fragment.delete('key');
  const rest = fragment.toString();
  history.replaceState(null, '', location.pathname + location.search + (rest ? '#' + rest : ''));
}

let client = null;
let target = null; // {label, data(): string}
let lastError = null;
let sessionState = 0;
const transfers = [];
const filesystems = [];

// What the browser tests (and a curious person in the console) can look at.
window.guacr = {
  get state() { return sessionState; },
  get error() { return lastError; },
  get client() { return client; },
  get scale() { return client ? client.getDisplay().getScale() : 0; },
  get displaySize() { return client ? [client.getDisplay().getWidth(), client.getDisplay().getHeight()] : [0, 0]; },
  get transfers() { return transfers.map((t) => ({ name: t.name, state: t.state, message: t.message })); },
  ready: true,
};

// --- status line --------------------------------------------------------------------------------

function setState(text, kind) {
  const el = $('state');
  el.textContent = text;
  el.className = 'state' + (kind ? ' ' + kind : '');
}

function showError(status) {
  if (lastError) return; // the first reason is the real one; later ones are its echoes
  lastError = { code: status.code, message: describeStatus(status) };
  setState(`Error ${status.code}`, 'problem');
  $('overlay-text').textContent = lastError.message;
  $('overlay-code').textContent = `Guacamole status ${status.code}` + (status.message && status.message !== String(status.code) ? `: ${status.message}` : '');
  $('overlay').hidden = false;
  $('reconnect').hidden = false;
}

// --- the list of connections ---------------------------------------------------------------------

function homeMessage(text, isError) {
  const el = $('home-message');
  el.textContent = text || '';
  el.className = isError ? 'error' : '';
}

function showHome(message) {
  disconnect();
  $('session').hidden = true;
  $('home').hidden = false;
  $('show-list').hidden = true;
  $('title').textContent = '';
  homeMessage(message, false);
  if (!token) setState('Not connected');
}

async function loadConnections() {
  const key = sessionStorage.getItem('guacr.key');
  $('key-form').hidden = false;
  if (!key) {
    homeMessage('Enter your access key to see your connections (or open a link that carries one).', false);
    return;
  }
  let response;
  try {
    response = await fetch('api/connections', { headers: { Authorization: 'Bearer ' + key }, cache: 'no-store' });
  } catch (e) {
    homeMessage('guacr cannot be reached: ' + e.message, true);
    return;
  }
  if (response.status === 401) {
    sessionStorage.removeItem('guacr.key');
    homeMessage('That access key was not accepted.', true);
    return;
  }
  if (!response.ok) {
    homeMessage(`guacr answered ${response.status} for the connection list.`, true);
    return;
  }
  const list = await response.json();
  $('key-form').hidden = true;
  const ul = $('connections');
  ul.replaceChildren();
  for (const c of list.connections) {
    const li = document.createElement('li');
    const button = document.createElement('button');
    button.type = 'button';
    button.dataset.connection = c.name;
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = c.name;
    const meta = document.createElement('span');
    meta.className = 'meta';
    meta.textContent = [c.protocol.toUpperCase(), c.read_only ? 'view only' : '', c.description].filter(Boolean).join(' · ');
    button.append(name, meta);
    button.addEventListener('click', () => openNamed(c, key));
    li.append(button);
    ul.append(li);
  }
  homeMessage(list.connections.length
    ? `Signed in as ${list.user}. Choose a connection.`
    : `Signed in as ${list.user}, who may open no connection.`, false);
  if (wanted) {
    const c = list.connections.find((x) => x.name === wanted);
    if (c) openNamed(c, key);
    else homeMessage(`You may not open "${wanted}".`, true);
  }
}

function openNamed(connection, key) {
  connect({
    label: `${connection.name} (${connection.protocol})`,
    protocol: connection.protocol,
    query: { connection: connection.name, key },
  });
}

// --- a session -----------------------------------------------------------------------------------

function displaySize() {
  const area = $('display-area');
  return [Math.max(area.clientWidth, 64), Math.max(area.clientHeight, 64)];
}

function connectData(query) {
  const [width, height] = displaySize();
  const p = new URLSearchParams(query);
  p.set('width', String(width));
  p.set('height', String(height));
  p.set('dpi', String(Math.round(96 * (window.devicePixelRatio || 1))));
  try {
    p.set('timezone', Intl.DateTimeFormat().resolvedOptions().timeZone);
  } catch (e) { /* no timezone: the server's default */ }
  for (const type of ['image/png', 'image/jpeg', 'image/webp']) p.append('image', type);
  return p.toString();
}

function rescale() {
  if (!client) return;
  const display = client.getDisplay();
  const w = display.getWidth();
  const h = display.getHeight();
  if (!w || !h) return;
  const area = $('display-area');
  let scale = Math.min(area.clientWidth / w, area.clientHeight / h);
  if (!$('enlarge').checked) scale = Math.min(scale, 1);
  display.scale(scale);
}

let resizeTimer = null;
window.addEventListener('resize', () => {
  rescale();
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    if (client && sessionState === 3) client.sendSize(...displaySize());
  }, 300);
});
$('enlarge').addEventListener('change', rescale);

function connect(newTarget) {
  disconnect();
  target = newTarget;
  lastError = null;
  $('home').hidden = true;
  $('session').hidden = false;
  $('overlay').hidden = true;
  $('reconnect').hidden = true;
  $('disconnect').hidden = false;
  $('show-list').hidden = !!token;
  $('title').textContent = target.label;
  filesystems.length = 0;
  renderFilesystems();
  $('files-support').textContent = target.protocol === 'vnc'
    ? 'VNC has no file transfer: uploads will be refused by the remote side.'
    : 'Files dropped on the remote display, or chosen here, are offered to the remote side.';

  const tunnel = new Guacamole.WebSocketTunnel('websocket-tunnel');
  const c = new Guacamole.Client(tunnel);
  client = c;
  const display = c.getDisplay();
  const element = display.getElement();
  $('display').replaceChildren(element);

  c.onstatechange = (state) => {
    if (client !== c) return;
    sessionState = state;
    if (lastError) return;
    const kind = state === 3 ? 'connected' : state === 5 ? '' : 'busy';
    setState(STATE_TEXT[state] || String(state), kind);
    if (state === 3) $('display-area').focus();
    if (state === 5) {
      $('reconnect').hidden = false;
      $('overlay-text').textContent = 'The session has ended.';
      $('overlay-code').textContent = '';
      $('overlay').hidden = false;
    }
  };
  c.onerror = (status) => { if (client === c) showError(status); };
  tunnel.onerror = (status) => { if (client === c) showError(status); };
  c.onname = (name) => { if (client === c) $('title').textContent = `${target.label} — ${name}`; };
  display.onresize = rescale;

  // Pointer: the remote cursor becomes the local one where the browser allows it.
  const mouse = new Guacamole.Mouse(element);
  mouse.onEach(['mousedown', 'mousemove', 'mouseup'], (e) => c.sendMouseState(e.state, true));
  const touch = new Guacamole.Mouse.Touchscreen(element);
  touch.onEach(['mousedown', 'mousemove', 'mouseup'], (e) => c.sendMouseState(e.state, true));
  display.oncursor = (canvas, x, y) => display.showCursor(!mouse.setCursor(canvas, x, y));

  c.onclipboard = receiveClipboard;
  c.onfile = receiveFile;
  c.onfilesystem = (object, name) => {
    filesystems.push({ object, name });
    $('files-support').textContent = 'This connection offers files: upload here or drop them on the display; browse below.';
    renderFilesystems();
  };

  setState(STATE_TEXT[1], 'busy');
  c.connect(connectData(target.query));
}

function disconnect() {
  if (!client) return;
  const c = client;
  client = null;
  c.disconnect();
  keyboard.reset();
  sessionState = 5;
  $('disconnect').hidden = true;
}

$('disconnect').addEventListener('click', () => {
  disconnect();
  setState('Disconnected');
  $('reconnect').hidden = false;
  $('overlay-text').textContent = 'You disconnected.';
  $('overlay-code').textContent = '';
  $('overlay').hidden = false;
});
for (const id of ['reconnect', 'overlay-reconnect']) {
  $(id).addEventListener('click', () => { if (target) connect(target); });
}
$('overlay-back').addEventListener('click', () => {
  if (token) return;
  showHome();
  loadConnections();
});
$('show-list').addEventListener('click', () => { showHome(); loadConnections(); });

// Keyboard: only while the display has the focus, so the panels stay usable for typing.
const area = $('display-area');
const keyboard = new Guacamole.Keyboard(area);
keyboard.onkeydown = (keysym) => {
  if (!client || sessionState !== 3) return true;
  client.sendKeyEvent(1, keysym);
  return false;
};
keyboard.onkeyup = (keysym) => { if (client && sessionState === 3) client.sendKeyEvent(0, keysym); };
area.addEventListener('mousedown', () => area.focus(), true);
area.addEventListener('touchstart', () => area.focus(), { capture: true, passive: true });
area.addEventListener('blur', () => keyboard.reset());

// --- clipboard -----------------------------------------------------------------------------------

function clipboardNote(text) {
  $('clipboard-status').textContent = text;
}

function receiveClipboard(stream, mimetype) {
  if (!/^text\//.test(mimetype)) {
    stream.sendAck('Only text is supported.', Guacamole.Status.Code.UNSUPPORTED);
    return;
  }
  const reader = new Guacamole.StringReader(stream);
  let text = '';
  reader.ontext = (part) => { text += part; };
  reader.onend = () => {
    $('clipboard-text').value = text;
    clipboardNote('Received from the remote desktop.');
    // Into the local clipboard too, where the browser allows it (it needs focus and permission).
    if (navigator.clipboard && navigator.clipboard.writeText) navigator.clipboard.writeText(text).catch(() => {});
  };
}

function sendClipboard() {
  if (!client || sessionState !== 3) {
    clipboardNote('Not connected.');
    return;
  }
  const stream = client.createClipboardStream('text/plain');
  const writer = new Guacamole.StringWriter(stream);
  writer.sendText($('clipboard-text').value);
  writer.sendEnd();
  clipboardNote('Sent to the remote desktop.');
}

let clipboardTimer = null;
$('clipboard-text').addEventListener('input', () => {
  clearTimeout(clipboardTimer);
  clipboardTimer = setTimeout(sendClipboard, 400);
});
$('clipboard-send').addEventListener('click', sendClipboard);

function togglePanel(button, panel) {
  const open = $(panel).hidden;
  $(panel).hidden = !open;
  $(button).setAttribute('aria-pressed', String(open));
  setTimeout(rescale, 0);
}
$('toggle-clipboard').addEventListener('click', () => togglePanel('toggle-clipboard', 'clipboard-panel'));
$('toggle-files').addEventListener('click', () => togglePanel('toggle-files', 'files-panel'));

// --- files ---------------------------------------------------------------------------------------

function addTransfer(name, direction) {
  const t = { name, direction, state: 'in progress', message: '', li: document.createElement('li') };
  transfers.push(t);
  renderTransfer(t);
  $('transfers').prepend(t.li);
  return t;
}

function renderTransfer(t) {
  t.li.textContent = `${t.direction === 'up' ? '↑' : '↓'} ${t.name}: ${t.state}${t.message ? ' — ' + t.message : ''}`;
  t.li.className = t.state === 'failed' ? 'error' : '';
}

function finishTransfer(t, state, message) {
  t.state = state;
  t.message = message || '';
  renderTransfer(t);
}

function upload(file) {
  if (!client || sessionState !== 3) return;
  const t = addTransfer(file.name, 'up');
  const mimetype = file.type || 'application/octet-stream';
  const fs = filesystems[0];
  const stream = fs ? fs.object.createOutputStream(mimetype, '/' + file.name) : client.createFileStream(mimetype, file.name);
  const writer = new Guacamole.BlobWriter(stream);
  writer.onack = (status) => {
    if (status.isError()) {
      finishTransfer(t, 'failed', status.code === Guacamole.Status.Code.UNSUPPORTED
        ? 'this connection does not accept files'
        : describeStatus(status));
    }
  };
  writer.oncomplete = () => {
    writer.sendEnd();
    if (t.state === 'in progress') finishTransfer(t, 'done');
  };
  writer.onerror = (blob, offset, error) => finishTransfer(t, 'failed', String(error));
  writer.sendBlob(file);
}

function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

function receiveFile(stream, mimetype, filename) {
  const t = addTransfer(filename, 'down');
  const reader = new Guacamole.BlobReader(stream, mimetype);
  stream.sendAck('Ready', Guacamole.Status.Code.SUCCESS);
  reader.onprogress = () => stream.sendAck('Received', Guacamole.Status.Code.SUCCESS);
  reader.onend = () => {
    saveBlob(reader.getBlob(), filename);
    finishTransfer(t, 'done');
  };
}

const STREAM_INDEX = 'application/vnd.glyptodon.guacamole.stream-index+json';

function renderFilesystems() {
  const root = $('filesystems');
  root.replaceChildren();
  for (const fs of filesystems) {
    const h = document.createElement('h3');
    h.textContent = fs.name;
    const list = document.createElement('ul');
    root.append(h, list);
    browse(fs, '/', list);
  }
}

function browse(fs, path, list) {
  fs.object.requestInputStream(path, (stream, mimetype) => {
    if (mimetype !== STREAM_INDEX) {
      stream.sendAck('Not a directory.', Guacamole.Status.Code.CLIENT_BAD_TYPE);
      return;
    }
    const reader = new Guacamole.JSONReader(stream);
    stream.sendAck('Ready', Guacamole.Status.Code.SUCCESS);
    reader.onprogress = () => stream.sendAck('Received', Guacamole.Status.Code.SUCCESS);
    reader.onend = () => {
      list.replaceChildren();
      const entries = reader.getJSON() || {};
      for (const name of Object.keys(entries).sort()) {
        const li = document.createElement('li');
        const a = document.createElement('a');
        a.href = '#';
        a.textContent = name.split('/').pop() + (entries[name] === STREAM_INDEX ? '/' : '');
        a.addEventListener('click', (e) => {
          e.preventDefault();
          if (entries[name] === STREAM_INDEX) {
            const sub = document.createElement('ul');
            li.append(sub);
            browse(fs, name, sub);
          } else {
            download(fs, name);
          }
        });
        li.append(a);
        list.append(li);
      }
    };
  });
}

function download(fs, path) {
  const name = path.split('/').pop();
  const t = addTransfer(name, 'down');
  fs.object.requestInputStream(path, (stream, mimetype) => {
    const reader = new Guacamole.BlobReader(stream, mimetype);
    stream.sendAck('Ready', Guacamole.Status.Code.SUCCESS);
    reader.onprogress = () => stream.sendAck('Received', Guacamole.Status.Code.SUCCESS);
    reader.onend = () => {
      saveBlob(reader.getBlob(), name);
      finishTransfer(t, 'done');
    };
  });
}

$('file-input').addEventListener('change', (e) => {
  for (const file of e.target.files) upload(file);
  e.target.value = '';
});
const session = $('session');
session.addEventListener('dragover', (e) => {
  e.preventDefault();
  e.dataTransfer.dropEffect = 'copy';
  document.body.classList.add('drop-target');
});
session.addEventListener('dragleave', () => document.body.classList.remove('drop-target'));
session.addEventListener('drop', (e) => {
  e.preventDefault();
  document.body.classList.remove('drop-target');
  if (!client || sessionState !== 3) return;
  if ($('files-panel').hidden) togglePanel('toggle-files', 'files-panel');
  for (const file of e.dataTransfer.files) upload(file);
});

// --- start ---------------------------------------------------------------------------------------

$('boot').hidden = true;
$('overlay-back').hidden = !!token;
$('key-form').addEventListener('submit', (e) => {
  e.preventDefault();
  sessionStorage.setItem('guacr.key', $('key-input').value.trim());
  $('key-input').value = '';
  loadConnections();
});
window.addEventListener('beforeunload', disconnect);

if (token) {
  connect({ label: 'Connection from link', protocol: '', query: { token } });
} else {
  showHome();
  loadConnections();
}
