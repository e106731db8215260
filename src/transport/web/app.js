// The chat's browser client. It speaks the protocol of PROTOCOL.md over a WebSocket
// (one text message = one envelope {"type":..., "data":"<inner JSON>"}), served with
// the page by chat-server (src/web.rs). Plain JavaScript, no framework, nothing loaded
// from elsewhere; user text is only ever set as text, never as HTML.
'use strict';

(() => {
  // The largest envelope the server accepts (its --max-frame), written into the page.
  const MAX_FRAME = parseInt(document.querySelector('meta[name="chat-max-frame"]').content, 10) || 65536;
  // What this page can read in one message: declared in the login, so the server does
  // not cut long messages short as it does for the tutorial's clients (8096 bytes).
  const READ_FRAME = 1 << 24;
  const PING_EVERY_MS = 25000;
  const PONG_WAIT_MS = 10000;
  const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000, 30000];

  const $ = (id) => document.getElementById(id);
  const ui = {
    conn: $('conn'), reconnect: $('reconnect'), me: $('me'), meName: $('me-name'), logout: $('logout'),
    auth: $('auth'), authTitle: $('auth-title'), authForm: $('auth-form'), userId: $('user-id'),
    nameRow: $('name-row'), userName: $('user-name'), password: $('password'),
    submit: $('submit'), authMsg: $('auth-msg'), mode: $('mode'), modeText: $('mode-text'),
    chat: $('chat'), convs: $('convs'), newPm: $('new-pm'), pmId: $('pm-id'),
    convTitle: $('conv-title'), convSub: $('conv-sub'), notice: $('notice'), log: $('log'),
    composer: $('composer'), text: $('text'), textLabel: $('text-label'), send: $('send'),
  };

  const st = {
    ws: null,
    open: false,
    // 'out': the login form; 'in': logged in; 'reconnecting': logged in, link lost.
    phase: 'out',
    mode: 'login',
    // What the form asked for, sent once the socket is open: 'login' or 'register'.
    asking: null,
    creds: null,          // {id, pwd}: kept in memory only, to log in again after a drop
    me: null,             // {id, name}
    online: new Map(),    // id -> name
    names: new Map(),     // id -> name, everyone seen
    convs: new Map(),     // 'group' or user id -> {items: [], unread: 0}
    current: 'group',
    pendingPm: [],        // private messages awaiting their SmsResMes (by msgId)
    hist: new Map(),      // conversation -> {asked, more, firstId}: its history as fetched
    pendingHist: [],      // conversations whose HistoryResMes is awaited, in order
    lastSent: null,       // {item, at}: the message a refusal (429) is about
    attempt: 0,
    retryTimer: null,
    retryAt: 0,
    tick: null,
    pingTimer: null,
    pongTimer: null,
    offlineCount: 0,
    ackUpto: 0,
    ackTimer: null,
    msgSeq: 0,
    session: Math.random().toString(36).slice(2, 8),
    authBlockedUntil: 0,
  };

  // ----- sending ------------------------------------------------------------------

  function encode(type, data) {
    return JSON.stringify({ type, data: JSON.stringify(data) });
  }

  function bytes(s) {
    return new TextEncoder().encode(s).length;
  }

  function send(type, data) {
    if (!st.ws || !st.open) return false;
    st.ws.send(encode(type, data));
    return true;
  }

  // ----- the connection -----------------------------------------------------------

  function wsUrl() {
    return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
  }

  function connect() {
    if (st.ws) return;
    const ws = new WebSocket(wsUrl());
    st.ws = ws;
    st.open = false;
    ws.onopen = () => {
      if (st.ws !== ws) return;
      st.open = true;
      onOpen();
    };
    ws.onmessage = (ev) => {
      if (st.ws !== ws) return;
      let env, data;
      try {
        env = JSON.parse(ev.data);
        data = JSON.parse(env.data);
      } catch (e) {
        console.warn('unreadable message from the server', ev.data);
        return;
      }
      alive();
      handle(env.type, data);
    };
    ws.onclose = (ev) => {
      if (st.ws !== ws) return;
      dropped(ev.code);
    };
  }

  // Forgets the socket (its late events are ignored) and closes it.
  function detach() {
    const ws = st.ws;
    st.ws = null;
    st.open = false;
    stopHeartbeat();
    if (ws) {
      try { ws.close(1000); } catch (e) { /* already closed */ }
    }
  }

  function onOpen() {
    st.attempt = 0;
    if (st.phase === 'reconnecting') {
      setConn('Connected again; logging in…', 'warn');
      sendLogin();
    } else if (st.asking === 'register') {
      sendRegister();
    } else if (st.asking === 'login') {
      sendLogin();
    }
  }

  function dropped(code) {
    st.ws = null;
    st.open = false;
    stopHeartbeat();
    if (st.phase === 'out') {
      // On the login form the socket is opened on demand: a close only matters if a
      // request was waiting for its answer.
      if (st.asking) {
        st.asking = null;
        authBusy(false);
        authMsg(code === 1009 ? 'That request was too large for the server.'
          : 'Cannot reach the chat server. Check your connection and try again.', 'bad');
      }
      return;
    }
    st.phase = 'reconnecting';
    const why = code === 1009 ? 'Your last message was too long, and the server closed the connection. '
      : 'The connection was lost. ';
    scheduleReconnect(why);
  }

  function scheduleReconnect(why, delayMs) {
    clearTimeout(st.retryTimer);
    const base = BACKOFF_MS[Math.min(st.attempt, BACKOFF_MS.length - 1)];
    const delay = delayMs !== undefined ? delayMs : Math.round(base * (1 + Math.random() * 0.2));
    st.attempt += 1;
    st.retryAt = Date.now() + delay;
    const show = () => {
      const s = Math.max(0, Math.ceil((st.retryAt - Date.now()) / 1000));
      setConn(why + (s > 0 ? `Reconnecting in ${s} s…` : 'Reconnecting…'), 'bad');
    };
    show();
    ui.reconnect.hidden = false;
    clearInterval(st.tick);
    st.tick = setInterval(show, 1000);
    st.retryTimer = setTimeout(() => {
      clearInterval(st.tick);
      ui.reconnect.hidden = true;
      setConn('Reconnecting…', 'bad');
      connect();
    }, delay);
    updateComposer();
  }

  function reconnectNow() {
    if (st.phase !== 'reconnecting' || st.ws) return;
    clearTimeout(st.retryTimer);
    clearInterval(st.tick);
    ui.reconnect.hidden = true;
    setConn('Reconnecting…', 'bad');
    connect();
  }

  ui.reconnect.addEventListener('click', reconnectNow);

  window.addEventListener('online', reconnectNow);

  // Keeps an idle connection alive through proxies, and finds a dead one.
  function startHeartbeat() {
    stopHeartbeat();
    st.pingTimer = setInterval(() => {
      if (!send('PingMes', {})) return;
      clearTimeout(st.pongTimer);
      st.pongTimer = setTimeout(() => {
        // No answer at all: the link is dead, whatever the socket says.
        detach();
        st.phase = 'reconnecting';
        scheduleReconnect('The server stopped answering. ');
      }, PONG_WAIT_MS);
    }, PING_EVERY_MS);
  }

  function stopHeartbeat() {
    clearInterval(st.pingTimer);
    clearTimeout(st.pongTimer);
  }

  function alive() {
    clearTimeout(st.pongTimer);
  }

  // ----- logging in ---------------------------------------------------------------

  function sendLogin() {
    send('LoginMes', {
      userId: st.creds.id, userPwd: st.creds.pwd, userName: '',
      maxFrame: READ_FRAME, ackOffline: true, compact: true,
    });
  }

  function sendRegister() {
    send('RegisterMes', {
      user: { userId: st.creds.id, userPwd: st.creds.pwd, userName: st.creds.name, userStatus: 0, sex: '' },
      maxFrame: READ_FRAME,
    });
  }

  function setMode(mode) {
    st.mode = mode;
    const reg = mode === 'register';
    ui.authTitle.textContent = reg ? 'Register' : 'Log in';
    ui.submit.textContent = reg ? 'Register and log in' : 'Log in';
    ui.nameRow.hidden = !reg;
    ui.modeText.textContent = reg ? 'Already registered?' : 'No account yet?';
    ui.mode.textContent = reg ? 'Log in' : 'Register';
    ui.password.autocomplete = reg ? 'new-password' : 'current-password';
    authMsg('');
  }

  function authMsg(text, kind) {
    ui.authMsg.textContent = text;
    ui.authMsg.className = 'msg' + (kind ? ' ' + kind : '');
  }

  function authBusy(busy) {
    ui.submit.disabled = busy || Date.now() < st.authBlockedUntil;
  }

  // Refused for a while (busy server, too many attempts): the button says when to try.
  function blockAuth(seconds, sentence) {
    st.authBlockedUntil = Date.now() + seconds * 1000;
    const show = () => {
      const s = Math.ceil((st.authBlockedUntil - Date.now()) / 1000);
      if (s <= 0) {
        clearInterval(timer);
        authMsg(sentence.replace('{s}', '0').replace(/ in 0 s/, ' now'), 'bad');
        ui.submit.disabled = false;
        return;
      }
      authMsg(sentence.replace('{s}', String(s)), 'bad');
      ui.submit.disabled = true;
    };
    const timer = setInterval(show, 1000);
    show();
  }

  ui.mode.addEventListener('click', () => setMode(st.mode === 'login' ? 'register' : 'login'));

  ui.authForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const idText = ui.userId.value.trim();
    const pwd = ui.password.value;
    const name = ui.userName.value;
    if (!/^[0-9]{1,15}$/.test(idText) || Number(idText) <= 0) {
      authMsg('Your user id is a whole number above 0, such as 100.', 'bad');
      ui.userId.focus();
      return;
    }
    if (pwd.length === 0) {
      authMsg('Type your password.', 'bad');
      ui.password.focus();
      return;
    }
    if (st.mode === 'register' && name.trim().length === 0) {
      authMsg('Choose a name for others to see (1 to 32 characters).', 'bad');
      ui.userName.focus();
      return;
    }
    st.creds = { id: Number(idText), pwd, name };
    st.asking = st.mode;
    authBusy(true);
    authMsg(st.mode === 'register' ? 'Registering…' : 'Logging in…');
    if (st.open) {
      onOpen();
    } else {
      connect();
    }
  });

  function onRegisterRes(d) {
    if (d.code === 200) {
      authMsg('Registered. Logging in…', 'ok');
      st.asking = 'login';
      sendLogin();
      return;
    }
    st.asking = null;
    authBusy(false);
    if (d.code === 505 && d.retryAfter) {
      blockAuth(d.retryAfter, 'The server is busy. Try again in {s} s.');
    } else if (d.code === 400 && /taken/.test(d.error || '')) {
      authMsg(`The user id ${st.creds.id} is already taken. Choose another, or log in.`, 'bad');
    } else if (d.code === 400) {
      authMsg('The server refused this registration: ' + (d.error || 'a field breaks the rules') + '.', 'bad');
    } else if (/may or may not/.test(d.error || '')) {
      authMsg('The server could not confirm the registration in time. Try logging in; if that fails, register again.', 'bad');
    } else {
      authMsg('The server cannot store new accounts right now (' + (d.error || 'error ' + d.code) + '). Try again later.', 'bad');
    }
  }

  function onLoginRes(d) {
    if (d.code === 200) {
      const again = st.phase === 'reconnecting';
      st.asking = null;
      enterChat(d, again);
      return;
    }
    const relogin = st.phase === 'reconnecting';
    if (d.code === 505 && d.retryAfter) {
      if (relogin) {
        // The connection stays open: the same login goes again when the server says.
        scheduleRelogin(d.retryAfter, 'The server is busy. ');
      } else {
        st.asking = null;
        authBusy(false);
        blockAuth(d.retryAfter, 'The server is busy checking other passwords. Try again in {s} s.');
      }
      return;
    }
    let sentence;
    if (d.code === 403) sentence = 'Wrong password.';
    else if (d.code === 500) sentence = `There is no user with id ${st.creds.id}. Check the number, or register.`;
    else if (d.code === 505) sentence = 'The server cannot check passwords right now (its storage is unavailable). Try again in a minute.';
    else sentence = 'The login was refused: ' + (d.error || 'error ' + d.code) + '.';
    if (relogin && d.code === 505) {
      scheduleRelogin(30, 'The server cannot check passwords right now. ');
      return;
    }
    st.asking = null;
    if (relogin) leaveChat();
    authBusy(false);
    authMsg(sentence, 'bad');
    if (d.code === 403) ui.password.select();
  }

  function scheduleRelogin(seconds, why) {
    clearTimeout(st.retryTimer);
    st.retryAt = Date.now() + seconds * 1000;
    const show = () => {
      const s = Math.max(0, Math.ceil((st.retryAt - Date.now()) / 1000));
      setConn(why + `Logging in again in ${s} s…`, 'warn');
    };
    show();
    clearInterval(st.tick);
    st.tick = setInterval(show, 1000);
    st.retryTimer = setTimeout(() => {
      clearInterval(st.tick);
      if (st.open) sendLogin(); else connect();
    }, seconds * 1000);
  }

  // ----- the chat -----------------------------------------------------------------

  function enterChat(d, again) {
    clearInterval(st.tick);
    clearTimeout(st.retryTimer);
    ui.reconnect.hidden = true;
    st.phase = 'in';
    st.attempt = 0;
    const users = listed(d);
    const myName = nameFromList(users, st.creds.id) || st.creds.name || st.names.get(st.creds.id) || '';
    st.me = { id: st.creds.id, name: myName };
    st.online = new Map();
    if (users) {
      for (const u of users) setOnline(u.userId, u.userName);
    } else {
      for (const id of d.UsersId || []) setOnline(id, st.names.get(id) || '');
      // The list was too long to come with names: ask for it.
      send('OnlineUsersMes', {});
    }
    if (!st.convs.has('group')) st.convs.set('group', { items: [], unread: 0 });
    st.pendingPm = [];
    ui.auth.hidden = true;
    ui.chat.hidden = false;
    ui.me.hidden = false;
    ui.meName.textContent = `${st.me.name || 'user'} (${st.me.id})`;
    setConn(again ? 'Connected again.' : 'Connected.', '');
    if (again) {
      system('group', 'Connected again.');
    }
    st.offlineCount = 0;
    st.pendingHist = [];
    if (!again) st.hist = new Map();
    // What was said before: the group's at login, and again after a drop (to fill the
    // gap); a private conversation's when it is first opened.
    askHistory('group');
    if (again && st.current !== 'group') askHistory(st.current);
    startHeartbeat();
    render();
    if (!again) ui.text.focus();
    updateComposer();
  }

  function leaveChat() {
    st.phase = 'out';
    st.me = null;
    clearInterval(st.tick);
    clearTimeout(st.retryTimer);
    ui.reconnect.hidden = true;
    ui.chat.hidden = true;
    ui.me.hidden = true;
    ui.auth.hidden = false;
    setConn('', '');
    ui.password.value = '';
    setMode('login');
    st.creds = null;
    st.convs = new Map();
    st.hist = new Map();
    st.pendingHist = [];
    st.current = 'group';
    busy();
    authBusy(false);
  }

  // The users a login reply names: its `users`, or `names` beside `UsersId` (the
  // compact form this page asks for); null if it names nobody.
  function listed(d) {
    if (Array.isArray(d.users)) return d.users;
    if (Array.isArray(d.names) && Array.isArray(d.UsersId)) {
      return d.UsersId.map((id, i) => ({ userId: id, userName: d.names[i] || '' }));
    }
    return null;
  }

  function nameFromList(list, id) {
    if (!Array.isArray(list)) return null;
    const u = list.find((u) => u.userId === id);
    return u ? u.userName : null;
  }

  function setOnline(id, name) {
    st.online.set(id, name || st.names.get(id) || '');
    if (name) st.names.set(id, name);
  }

  function who(id) {
    const n = st.names.get(id);
    return n ? `${n} (${id})` : `user ${id}`;
  }

  function conv(key) {
    let c = st.convs.get(key);
    if (!c) {
      c = { items: [], unread: 0 };
      st.convs.set(key, c);
    }
    return c;
  }

  function add(key, item) {
    const c = conv(key);
    c.items.push(item);
    if (c.items.length > 1000) c.items.splice(0, c.items.length - 1000);
    if (key !== st.current) {
      if (item.kind === 'theirs') c.unread += 1;
      renderConvs();
    } else {
      ui.log.appendChild(itemView(item));
      scrollDown();
    }
    return item;
  }

  function system(key, text) {
    return add(key, { kind: 'system', text, time: Date.now() });
  }

  function refresh(item) {
    if (item.el && item.el.isConnected) item.el.replaceWith(itemView(item));
  }

  function handle(type, d) {
    switch (type) {
      case 'LoginResMes': return onLoginRes(d);
      case 'RegisterResMes': return onRegisterRes(d);
      case 'NotifyUserStatusMes': return onStatus(d);
      case 'PresenceMes': return onPresence(d);
      case 'SmsMes': return onGroup(d);
      case 'SmsPrivateMes': return onPrivate(d);
      case 'SmsResMes': return onSmsRes(d);
      case 'OnlineUsersResMes': return onOnline(d);
      case 'HistoryResMes': return onHistory(d);
      case 'ErrorResMes': return onError(d);
      case 'PongMes': return undefined;
      default: console.warn('unknown message type', type, d);
    }
    return undefined;
  }

  function onStatus(d) {
    if (st.phase !== 'in') return;
    statusChanged(d.userId, d.status, d.userName);
    renderConvs();
    renderHead();
  }

  // Changes of who is online, in order, each [userId, status, userName]: drawn once.
  function onPresence(d) {
    if (st.phase !== 'in') return;
    for (const [id, status, name] of d.changes || []) statusChanged(id, status, name);
    renderConvs();
    renderHead();
  }

  function statusChanged(id, status, name) {
    if (name) st.names.set(id, name);
    if (status === 1) {
      if (st.online.delete(id)) system('group', `${who(id)} went offline.`);
    } else {
      const known = st.online.has(id);
      setOnline(id, name);
      if (!known) system('group', `${who(id)} came online.`);
    }
  }

  function onOnline(d) {
    st.online = new Map();
    for (const u of d.users || []) setOnline(u.userId, u.userName);
    renderConvs();
    renderHead();
  }

  function onGroup(d) {
    if (d.userName) st.names.set(d.userId, d.userName);
    add('group', { kind: 'theirs', from: d.userId, text: d.content, time: d.time || Date.now() });
  }

  function onPrivate(d) {
    if (d.userName) st.names.set(d.userId, d.userName);
    const item = add(d.userId, {
      kind: 'theirs', from: d.userId, text: d.content, time: d.time || Date.now(), offline: !!d.offline,
    });
    if (d.offline && typeof d.offlineId === 'number') {
      st.offlineCount += 1;
      st.ackUpto = Math.max(st.ackUpto, d.offlineId);
      // Acknowledged once shown: they then leave the server's store.
      clearTimeout(st.ackTimer);
      st.ackTimer = setTimeout(() => {
        send('OfflineAckMes', { upto: st.ackUpto });
        const n = st.offlineCount;
        notice(`${n} private message${n === 1 ? '' : 's'} arrived while you were offline.`);
      }, 0);
    }
    return item;
  }

  function onSmsRes(d) {
    // A message answered once written to its recipient may be answered after later
    // ones: matched by its msgId.
    const at = st.pendingPm.findIndex((p) => d.msgId && p.msgId === d.msgId);
    const item = at >= 0 ? st.pendingPm.splice(at, 1)[0] : st.pendingPm.shift();
    if (!item) return;
    item.code = d.code;
    const texts = {
      200: ['delivered', 'ok'],
      206: ['delivered, cut short: their client cannot read it whole', 'bad'],
      202: ['kept for them: delivered when they log in', 'ok'],
      400: ['not sent: ' + (d.error || 'refused'), 'bad'],
      404: ['not sent: there is no such user', 'bad'],
      503: ['not sent: the server cannot store messages right now', 'bad'],
      504: ['the server did not confirm it was stored; sending again is safe', 'bad'],
    };
    const [text, cls] = texts[d.code] || ['refused: ' + (d.error || 'error ' + d.code), 'bad'];
    item.status = text;
    item.statusCls = cls;
    item.retry = d.code === 503 || d.code === 504;
    refresh(item);
  }

  function onError(d) {
    const after = d.retryAfter ? ` Wait ${d.retryAfter} s.` : '';
    switch (d.code) {
      case 409:
        detach();
        leaveChat();
        authMsg('You logged in somewhere else, so this window was logged out.', 'bad');
        return;
      case 413:
        if (st.phase === 'out') authMsg('That request was too large.', 'bad');
        else notice('Your last message was too long for the server; it closed the connection.');
        return;
      case 429:
        if (st.phase === 'reconnecting') {
          // The automatic login after a drop was refused for now: it goes again later.
          scheduleRelogin(d.retryAfter || 10, 'Too many login attempts from this address. ');
          return;
        }
        if (st.phase === 'out' || st.asking) {
          st.asking = null;
          authBusy(false);
          if (/failed logins/.test(d.error || '')) {
            authMsg('Too many failed logins on this connection. Check your id and password, then try again.', 'bad');
          } else {
            blockAuth(d.retryAfter || 10, 'Too many login attempts from your address. Try again in {s} s.');
          }
          return;
        }
        refuseLast('not sent: you are sending too fast.' + after);
        return;
      case 503:
        if (st.phase === 'in' && st.pendingHist.length > 0) {
          const req = st.pendingHist.shift();
          histOf(req.key).asked = false;
          busy();
          notice('Earlier messages could not be loaded right now (the server\'s storage is busy or down).');
          return;
        }
        if (st.phase === 'out') {
          st.asking = null;
          authBusy(false);
          authMsg('The server is full right now. Try again in a minute.', 'bad');
        } else {
          notice('The server is full; reconnecting when it has room.');
        }
        return;
      case 401:
        // The login timeout of a form left alone: the socket closes, and the next
        // attempt opens a new one.
        if (st.phase === 'out' && !st.asking) return;
        if (st.phase === 'out') return authMsg('The server closed the connection; try again.', 'bad');
        return;
      case 206:
        if (st.lastSent) {
          st.lastSent.item.status = 'cut short for some: ' + (d.error || '');
          st.lastSent.item.statusCls = 'bad';
          refresh(st.lastSent.item);
        }
        return;
      case 400:
        if (st.phase === 'out') {
          st.asking = null;
          authBusy(false);
          authMsg('The server refused the request: ' + (d.error || 'bad request') + '.', 'bad');
          return;
        }
        refuseLast('not sent: ' + (d.error || 'refused'));
        return;
      default:
        notice('The server says: ' + (d.error || 'error ' + d.code) + after);
    }
  }

  // A refusal with no reply of its own: it is about the message sent last.
  function refuseLast(text) {
    const last = st.lastSent;
    if (last && Date.now() - last.at < 5000 && !last.item.code) {
      last.item.status = text;
      last.item.statusCls = 'bad';
      last.item.code = -1;
      const i = st.pendingPm.indexOf(last.item);
      if (i >= 0) {
        st.pendingPm.splice(i, 1);
        last.item.retry = true;
      }
      refresh(last.item);
    } else {
      notice(text.charAt(0).toUpperCase() + text.slice(1));
    }
  }

  function notice(text) {
    ui.notice.textContent = text;
    ui.notice.hidden = !text;
  }

  // ----- history ------------------------------------------------------------------

  function histOf(key) {
    let h = st.hist.get(key);
    if (!h) {
      h = { asked: false, more: false, firstId: 0 };
      st.hist.set(key, h);
    }
    return h;
  }

  function askHistory(key, before) {
    const data = { before: before || 0, limit: 30 };
    if (key !== 'group') data.with = key;
    histOf(key).asked = true;
    if (send('HistoryMes', data)) {
      st.pendingHist.push({ key, older: !!before });
      busy();
    }
  }

  // The conversation shown is busy while its history is on the way.
  function busy() {
    if (st.pendingHist.some((r) => r.key === st.current)) ui.log.setAttribute('aria-busy', 'true');
    else ui.log.removeAttribute('aria-busy');
  }

  // Entries already shown (live, or delivered while offline) are not shown twice: the
  // server's time and the sender name a message; one's own, shown as sent, by its text.
  function known(c, m, mine) {
    return c.items.some((it) => (it.from === m.userId && it.time === m.time && it.text === m.content)
      || (mine && it.kind === 'mine' && !it.history && it.text === m.content
        && Math.abs(it.time - m.time) < 120000));
  }

  function onHistory(d) {
    const req = st.pendingHist.shift();
    if (!req || !st.me) return;
    const c = conv(req.key);
    const h = histOf(req.key);
    const msgs = Array.isArray(d.messages) ? d.messages : [];
    if (req.older || h.firstId === 0) h.more = !!d.more;
    for (const m of msgs) {
      if (m.userName) st.names.set(m.userId, m.userName);
      if (h.firstId === 0 || m.id < h.firstId) h.firstId = m.id;
      const mine = m.userId === st.me.id;
      if (known(c, m, mine)) continue;
      c.items.push({
        kind: mine ? 'mine' : 'theirs', from: m.userId, text: m.content, time: m.time, history: true,
      });
    }
    c.items.sort((a, b) => a.time - b.time);
    if (req.key === st.current) render(req.older);
    else renderConvs();
    busy();
  }

  // ----- sending messages ---------------------------------------------------------

  function sendItem(item) {
    let type, data;
    if (item.to === 'group') {
      type = 'SmsMes';
      data = { content: item.text, userId: st.me.id, userPwd: '', userName: '', userStatus: 0, sex: '' };
    } else {
      type = 'SmsPrivateMes';
      data = { toUserId: item.to, content: item.text, msgId: item.msgId };
    }
    if (bytes(encode(type, data)) > MAX_FRAME) {
      item.status = `not sent: too long (the server takes at most ${MAX_FRAME} bytes)`;
      item.statusCls = 'bad';
      item.code = -1;
      return false;
    }
    if (!send(type, data)) {
      item.status = 'not sent: not connected';
      item.statusCls = 'bad';
      item.retry = true;
      item.code = -1;
      return false;
    }
    item.code = 0;
    item.retry = false;
    item.status = item.to === 'group' ? '' : 'sending…';
    item.statusCls = '';
    if (item.to !== 'group') st.pendingPm.push(item);
    st.lastSent = { item, at: Date.now() };
    return true;
  }

  ui.composer.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = ui.text.value;
    if (text.trim() === '' || st.phase !== 'in') return;
    const to = st.current;
    const item = { kind: 'mine', from: st.me.id, to, text, time: Date.now() };
    if (to !== 'group') item.msgId = `${st.session}-${++st.msgSeq}`;
    const ok = sendItem(item);
    add(to, item);
    if (ok || item.retry) ui.text.value = '';
    ui.text.focus();
  });

  ui.text.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      ui.composer.requestSubmit();
    }
  });

  ui.logout.addEventListener('click', () => {
    // The logout goes out before the close; the socket's later events are ignored.
    send('LogoutMes', {});
    detach();
    leaveChat();
    authMsg('You logged out.', 'ok');
    ui.userId.focus();
  });

  ui.newPm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = ui.pmId.value.trim();
    if (!/^[0-9]{1,15}$/.test(t) || Number(t) <= 0) {
      notice('A user id is a whole number above 0.');
      return;
    }
    const id = Number(t);
    ui.pmId.value = '';
    if (st.me && id === st.me.id) {
      notice('That is you.');
      return;
    }
    conv(id);
    select(id);
  });

  // ----- rendering ----------------------------------------------------------------

  function setConn(text, cls) {
    ui.conn.textContent = text;
    ui.conn.className = 'conn' + (cls ? ' ' + cls : '');
  }

  function select(key) {
    st.current = key;
    conv(key).unread = 0;
    notice('');
    if (!histOf(key).asked) askHistory(key);
    busy();
    render();
    ui.text.focus();
  }

  function render(keepScroll) {
    renderConvs();
    renderHead();
    const views = conv(st.current).items.map(itemView);
    if (histOf(st.current).more) views.unshift(earlierButton(st.current));
    const fromBottom = ui.log.scrollHeight - ui.log.scrollTop;
    ui.log.replaceChildren(...views);
    if (keepScroll) ui.log.scrollTop = ui.log.scrollHeight - fromBottom;
    else scrollDown();
  }

  function earlierButton(key) {
    const li = document.createElement('li');
    li.className = 'system earlier';
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = 'Show earlier messages';
    b.addEventListener('click', () => {
      b.disabled = true;
      askHistory(key, histOf(key).firstId);
    });
    li.appendChild(b);
    return li;
  }

  function scrollDown() {
    ui.log.scrollTop = ui.log.scrollHeight;
  }

  function renderHead() {
    const key = st.current;
    if (key === 'group') {
      ui.convTitle.textContent = 'Everyone';
      const n = st.online.size;
      ui.convSub.textContent = `${n} online. Messages go to everyone online now.`;
      ui.textLabel.textContent = 'Message to everyone';
    } else {
      ui.convTitle.textContent = who(key);
      ui.convSub.textContent = st.online.has(key)
        ? 'Online. Private conversation.'
        : 'Offline. Private messages are kept for them until they log in.';
      ui.textLabel.textContent = 'Private message to ' + who(key);
    }
    updateComposer();
  }

  function updateComposer() {
    const ok = st.phase === 'in';
    ui.send.disabled = !ok;
    ui.text.placeholder = ok
      ? 'Write a message. Enter sends, Shift+Enter starts a new line.'
      : 'Not connected: reconnecting…';
  }

  function convButton(key, label, idText, on, unread) {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.conv = String(key);
    if (key === st.current) b.setAttribute('aria-current', 'true');
    if (key !== 'group') {
      const dot = document.createElement('span');
      dot.className = 'dot' + (on ? ' on' : '');
      dot.setAttribute('aria-hidden', 'true');
      b.appendChild(dot);
    }
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = label;
    b.appendChild(name);
    if (idText) {
      const id = document.createElement('span');
      id.className = 'id';
      id.textContent = idText;
      b.appendChild(id);
    }
    let aria = label + (key === 'group' ? '' : on ? ', online' : ', offline');
    if (unread > 0) {
      const badge = document.createElement('span');
      badge.className = 'badge';
      badge.textContent = String(unread);
      b.appendChild(badge);
      aria += `, ${unread} unread`;
    }
    b.setAttribute('aria-label', aria);
    b.addEventListener('click', () => select(key));
    li.appendChild(b);
    return li;
  }

  function sep(text) {
    const li = document.createElement('li');
    li.className = 'sep';
    li.textContent = text;
    return li;
  }

  function renderConvs() {
    const items = [convButton('group', 'Everyone', '', true, conv('group').unread)];
    const me = st.me ? st.me.id : null;
    const online = [...st.online.keys()].filter((id) => id !== me).sort((a, b) => a - b);
    items.push(sep(`Online (${online.length})`));
    for (const id of online) {
      const c = st.convs.get(id);
      items.push(convButton(id, st.names.get(id) || `user ${id}`, String(id), true, c ? c.unread : 0));
    }
    const others = [...st.convs.keys()]
      .filter((k) => k !== 'group' && !st.online.has(k) && k !== me)
      .sort((a, b) => a - b);
    if (others.length > 0) items.push(sep('Offline'));
    for (const id of others) {
      items.push(convButton(id, st.names.get(id) || `user ${id}`, String(id), false, st.convs.get(id).unread));
    }
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.conv : undefined;
    ui.convs.replaceChildren(...items);
    if (focused !== undefined) {
      const again = ui.convs.querySelector(`button[data-conv="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }

  function clock(ms) {
    const d = new Date(ms);
    const today = new Date();
    const t = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    return d.toDateString() === today.toDateString() ? t : d.toLocaleDateString() + ' ' + t;
  }

  function itemView(item) {
    const li = document.createElement('li');
    li.className = item.kind;
    item.el = li;
    if (item.kind === 'system') {
      li.textContent = item.text;
      return li;
    }
    const bubble = document.createElement('div');
    bubble.className = 'bubble';
    const meta = document.createElement('div');
    meta.className = 'meta';
    const name = document.createElement('span');
    name.className = 'who';
    name.textContent = item.kind === 'mine' ? 'You' : who(item.from);
    const time = document.createElement('time');
    time.dateTime = new Date(item.time).toISOString();
    time.textContent = ' · ' + clock(item.time);
    meta.append(name, time);
    if (item.offline) meta.append(' · sent while you were offline');
    const text = document.createElement('div');
    text.className = 'text';
    text.textContent = item.text;
    bubble.append(meta, text);
    if (item.status || item.retry) {
      const s = document.createElement('div');
      s.className = 'meta status' + (item.statusCls ? ' ' + item.statusCls : '');
      s.textContent = item.status || '';
      if (item.retry) {
        const b = document.createElement('button');
        b.type = 'button';
        b.textContent = 'Send again';
        b.addEventListener('click', () => {
          sendItem(item);
          refresh(item);
        });
        s.appendChild(b);
      }
      bubble.appendChild(s);
    }
    li.appendChild(bubble);
    return li;
  }

  setMode('login');
})();
