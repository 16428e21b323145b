// The demo's page: a chat on trio_channels' browser client (docs/client.rst). No build step.
//
// The server (trio_channels/demo/routing.py) speaks the demultiplexer's frames on
// /chat/<room>/?name=<name>: "chat" carries messages (numbered: the client recovers what it
// missed after a reconnect), "here" carries snapshots of who is here, and presence events keep
// them current. A request {"get": "history"} reloads the room when recovery is not possible.
import { Client } from "/_trio_channels/client.mjs";

const DEFAULT_ROOMS = ["lobby", "trio", "random"];
const ROOM_PATTERN = /^[A-Za-z0-9_-]{1,50}$/;
const NAME_KEY = "trio-channels-demo-name";
const COLOURS = 6;

const $ = (id) => document.getElementById(id);
const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const fullDate = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

const page = {
  name: sessionStorage.getItem(NAME_KEY),
  room: null,
  client: null,
  here: new Map(), // channel -> name, in this room
  rooms: new Map(), // channel -> room, everywhere
  sinceOpen: [], // presence events since the socket opened, re-applied over each snapshot
  shown: new Set(), // "epoch:offset" of every message on screen
  pending: new Map(), // message id -> its element, until the room echoes it
  joinedOnce: false,
};
// For the tests, and for anyone curious in the console.
window.demo = page;

function roomFromHash() {
  const room = decodeURIComponent(location.hash.slice(1));
  return ROOM_PATTERN.test(room) ? room : "lobby";
}

function colourOf(name) {
  let hash = 0;
  for (const char of name) hash = (hash * 31 + char.codePointAt(0)) >>> 0;
  return `c${hash % COLOURS}`;
}

function element(tag, className, text) {
  const made = document.createElement(tag);
  if (className) made.className = className;
  if (text !== undefined) made.textContent = text;
  return made;
}

// ------------------------------------------------------------------ the log

function append(node) {
  const log = $("log");
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 48;
  log.append(node);
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function notice(text, kind = "") {
  append(element("p", `notice ${kind}`.trim(), text));
}

// *pending*: what to say under a message of ours the room has not echoed yet.
function messageElement(said, pending = "") {
  const item = element("article", `msg${pending ? " pending" : ""} new`);
  const who = element("span", `who ${colourOf(said.name)}`, said.name);
  const when = element("time");
  const date = new Date(said.time * 1000);
  when.dateTime = date.toISOString();
  when.title = fullDate.format(date);
  when.textContent = clock.format(date);
  item.append(who, when, element("div", "text", said.text));
  if (pending) item.append(element("span", "state", pending));
  return item;
}

function show(said, offset, epoch) {
  if (offset !== null && offset !== undefined) {
    const key = `${epoch}:${offset}`;
    if (page.shown.has(key)) return; // a reload of the room brought it again
    page.shown.add(key);
  }
  const waiting = said.id ? page.pending.get(said.id) : undefined;
  if (waiting) {
    // Our own message came back from the room: it is delivered.
    page.pending.delete(said.id);
    waiting.replaceWith(messageElement(said));
    return;
  }
  append(messageElement(said));
}

// ------------------------------------------------------------------ who is here, and the rooms

function names() {
  return new Set(page.here.values());
}

function applyPresence(event, announce) {
  if (event.group === `chat-${page.room}`) {
    const name = event.info?.name ?? "someone";
    const before = names();
    if (event.presence === "join") page.here.set(event.channel, name);
    else page.here.delete(event.channel);
    // Several tabs of one person are one person: say so once.
    if (announce && event.presence === "join" && !before.has(name)) notice(`${name} joined`);
    if (announce && event.presence === "leave" && !names().has(name)) notice(`${name} left`);
    renderHere();
  } else if (event.group === "rooms") {
    if (event.presence === "join") page.rooms.set(event.channel, event.info?.room);
    else page.rooms.delete(event.channel);
    renderRooms();
  }
}

function applySnapshot({ group, members }) {
  const map = group === "rooms" ? page.rooms : page.here;
  map.clear();
  for (const [channel, info] of Object.entries(members)) {
    map.set(channel, group === "rooms" ? info?.room : info?.name ?? "someone");
  }
  // Events since the socket opened may be older or newer than the snapshot: applying them
  // again is right either way (a join adds, a leave removes).
  for (const event of page.sinceOpen) if (event.group === group) applyPresence(event, false);
  if (group === "rooms") renderRooms();
  else renderHere();
}

function renderHere() {
  const counts = new Map();
  for (const name of page.here.values()) counts.set(name, (counts.get(name) ?? 0) + 1);
  const list = $("here");
  list.replaceChildren();
  for (const name of [...counts.keys()].sort((a, b) => a.localeCompare(b))) {
    const item = element("li", "", name);
    if (counts.get(name) > 1) item.append(element("span", "you", `(${counts.get(name)} tabs)`));
    if (name === page.name) item.append(element("span", "you", "(you)"));
    list.append(item);
  }
  $("here-count").textContent = counts.size ? `(${counts.size})` : "";
}

function renderRooms() {
  const counts = new Map(DEFAULT_ROOMS.map((room) => [room, 0]));
  if (!counts.has(page.room)) counts.set(page.room, 0);
  for (const room of page.rooms.values()) if (room) counts.set(room, (counts.get(room) ?? 0) + 1);
  const ordered = [
    ...DEFAULT_ROOMS,
    ...[...counts.keys()].filter((room) => !DEFAULT_ROOMS.includes(room)).sort(),
  ];
  const list = $("rooms");
  list.replaceChildren();
  for (const room of ordered) {
    const link = element("a", "", `#${room}`);
    link.href = `#${room}`;
    if (room === page.room) link.setAttribute("aria-current", "page");
    const count = counts.get(room);
    const badge = element("span", "count", count ? String(count) : "");
    badge.setAttribute("aria-label", count === 1 ? "1 person" : `${count} people`);
    link.append(badge);
    const item = element("li");
    item.append(link);
    list.append(item);
  }
}

// ------------------------------------------------------------------ the connection

function showState(event) {
  const status = $("status");
  status.dataset.state = event.state;
  $("here").parentElement.dataset.stale = String(event.state !== "open");
  $("reconnect").hidden = event.state !== "closed";
  let text = "Connected";
  let hint = "";
  if (event.state === "connecting") {
    text = event.attempt ? "Reconnecting…" : "Connecting…";
  } else if (event.state === "reconnecting") {
    text = `Reconnecting… (try ${event.attempt} in ${(event.delay / 1000).toFixed(1)} s)`;
    hint = "The connection is down. What you send now goes out when it is back.";
  } else if (event.state === "closed") {
    text = event.byClient ? "Disconnected" : `Disconnected (${event.code})`;
  }
  if (event.state === "connecting" && event.attempt) {
    hint = "The connection is down. What you send now goes out when it is back.";
  }
  status.textContent = text;
  $("composer-hint").textContent = hint;
}

function onJoin(join) {
  if (join.stream !== "chat") return;
  if (!page.joinedOnce) {
    page.joinedOnce = true;
    notice(`You joined #${page.room}${join.replayed ? `: the last ${join.replayed} messages are above` : ""}.`);
  } else if (join.recovered) {
    const missed = join.replayed === 1 ? "1 message" : `${join.replayed} messages`;
    notice(`Back online: ${join.replayed ? `${missed} you missed, recovered` : "you missed nothing"}.`);
  }
}

async function onRecoverFailed(client, failed) {
  if (failed.stream !== "chat") return;
  const why =
    failed.reason === "epoch"
      ? "the server lost its history (it restarted?)"
      : `the server no longer has it all (${failed.reason})`;
  notice(`Back online, but what you missed could not be replayed: ${why}. Reloading the room.`, "alert recover-failed");
  try {
    const reply = await client.request("chat", { get: "history" });
    if (client !== page.client) return; // we moved to another room meanwhile
    for (const said of reply.messages) show(said, said.offset, reply.epoch);
  } catch (error) {
    notice(`The room could not be reloaded: ${error.message}`, "alert");
  }
}

function wire(client) {
  client.on("state", showState);
  client.on("open", () => {
    page.sinceOpen = [];
  });
  client.on("message", ({ stream, payload, offset, epoch }) => {
    if (stream === "chat") show(payload, offset, epoch);
    else if (stream === "here") applySnapshot(payload);
  });
  client.on("join", onJoin);
  client.on("recover-failed", (failed) => onRecoverFailed(client, failed));
  client.on("presence", (event) => {
    page.sinceOpen.push(event);
    applyPresence(event, true);
  });
  client.on("close", ({ code }) => {
    if (code === 4400) {
      askName("The server did not take that name: try another one.");
      return false;
    }
    return undefined;
  });
  client.on("error", (error) => notice(error.message, "alert"));
}

// Join *room*; with *positions* (a rename), stay in it and carry on from where the log is.
function enter(room, positions) {
  if (page.client) page.client.close(1000, positions ? "renamed" : "changing rooms");
  page.room = room;
  page.here.clear();
  page.sinceOpen = [];
  page.joinedOnce = false;
  if (!positions) {
    page.shown.clear();
    page.pending.clear();
    $("log").replaceChildren();
  }
  $("room-name").textContent = room;
  $("composer-input").placeholder = `Message #${room}`;
  document.title = `#${room}: trio_channels demo`;
  renderHere();
  renderRooms();
  const client = new Client(`/chat/${room}/?name=${encodeURIComponent(page.name)}`, { positions });
  wire(client);
  page.client = client;
}

// ------------------------------------------------------------------ the forms

function askName(error = "") {
  $("name-error").textContent = error;
  $("name-input").value = page.name ?? "";
  $("name-dialog").showModal();
}

$("name-form").addEventListener("submit", () => {
  const name = $("name-input").value.trim().replace(/\s+/g, " ");
  if (!name) return;
  const renamed = page.client !== null && page.name !== name;
  page.name = name;
  sessionStorage.setItem(NAME_KEY, name);
  $("me-name").textContent = name;
  if (renamed) enter(page.room, page.client.positions);
  else if (!page.client || page.client.state === "closed") enter(roomFromHash());
  $("composer-input").focus();
});

$("name-dialog").addEventListener("cancel", (event) => {
  if (!page.name) event.preventDefault(); // Escape: there is no chat without a name
});
$("rename").addEventListener("click", () => askName());
$("reconnect").addEventListener("click", () => page.client?.connect());

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("composer-input");
  const text = input.value.trim();
  if (!text || !page.client) return;
  const id = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
  if (!page.client.send("chat", { text, id })) return; // the "error" event said why
  const waiting = page.client.state === "open" ? "sending…" : "waiting for the connection…";
  const item = messageElement({ name: page.name, text, time: Date.now() / 1000 }, waiting);
  page.pending.set(id, item);
  append(item);
  input.value = "";
});

$("new-room").addEventListener("submit", (event) => {
  event.preventDefault();
  const room = $("new-room-name").value.trim();
  if (!ROOM_PATTERN.test(room)) return;
  $("new-room-name").value = "";
  location.hash = room;
});

window.addEventListener("hashchange", () => {
  const room = roomFromHash();
  if (page.name && room !== page.room) enter(room);
});

$("echo-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const socket = new WebSocket(`${scheme}${location.host}/echo/`);
  const result = $("echo-result");
  socket.onopen = () => socket.send($("echo-input").value);
  socket.onmessage = (message) => {
    result.textContent = `echoed: ${message.data}`;
    socket.close();
  };
  socket.onerror = () => {
    result.textContent = "the echo endpoint did not answer";
  };
});

if (page.name) {
  $("me-name").textContent = page.name;
  enter(roomFromHash());
} else {
  renderRooms();
  askName();
}
