// The browser client's unit behaviour, tested in Chromium against a real server
// (tests/e2e/client_app.py's /script/ endpoint, which the tests drive with "ctl" frames).
// tests/e2e/test_client.py runs each test through the DevTools protocol: window.suite.run(name).
import * as module from "/_trio_channels/client.mjs";
import { Client, RequestError, TimeoutError, TrioChannelsError, backoffDelay } from "/_trio_channels/client.mjs";

const SCRIPT = "/script/";
const DEAD = new URLSearchParams(location.search).get("dead"); // a ws:// URL nothing listens on
const FAST = { backoff: { base: 10, factor: 2, max: 40, jitter: 0.5 }, soon: 20 };

// ------------------------------------------------------------------ helpers

function mulberry32(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let mixed = state;
    mixed = Math.imul(mixed ^ (mixed >>> 15), mixed | 1);
    mixed ^= mixed + Math.imul(mixed ^ (mixed >>> 7), mixed | 61);
    return ((mixed ^ (mixed >>> 14)) >>> 0) / 4294967296;
  };
}

function equal(actual, expected, what = "value") {
  const [a, b] = [JSON.stringify(actual), JSON.stringify(expected)];
  if (a !== b) throw new Error(`${what}: expected ${b}, got ${a}`);
}

function check(condition, what) {
  if (!condition) throw new Error(what);
}

/** The next event of *type* for which *predicate* holds (subscribe before causing it). */
function next(client, type, predicate = () => true, timeout = 5000) {
  return new Promise((resolve, reject) => {
    let timer = null;
    const off = client.on(type, (event) => {
      if (predicate(event)) {
        clearTimeout(timer);
        off();
        resolve(event);
      }
    });
    timer = setTimeout(() => {
      off();
      reject(new Error(`no ${type} event within ${timeout} ms`));
    }, timeout);
  });
}

function record(client, type) {
  const seen = [];
  client.on(type, (event) => seen.push(event));
  return seen;
}

const hello = (client) => next(client, "message", (event) => event.stream === "ctl");
const frame = (stream, payload, extra = {}) => JSON.stringify({ stream, payload, ...extra });
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function rejection(promise) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("expected the promise to reject");
}

async function opened(options = {}) {
  const client = new Client(SCRIPT, { ...FAST, ...options, connect: false });
  const greeting = hello(client);
  client.connect();
  return [client, (await greeting).payload];
}

// ------------------------------------------------------------------ the tests

const tests = {
  async "the ES module and the classic script's global have the same members"() {
    const named = Object.keys(module).filter((name) => name !== "default").sort();
    equal(named, Object.keys(globalThis.TrioChannels).sort(), "exports");
    equal(Object.keys(module.default).sort(), named, "default export");
    check(module.Client !== globalThis.TrioChannels.Client, "two loads, two copies");
  },

  async "backoff grows by the factor up to the cap, each delay jittered by the seeded random"() {
    const options = { base: 20, factor: 2, max: 100, jitter: 0.5 };
    const client = new Client(DEAD, { backoff: options, random: mulberry32(7) });
    const delays = [];
    await new Promise((resolve) => {
      client.on("state", (event) => {
        if (event.state !== "reconnecting") return;
        delays.push([event.attempt, event.delay, event.code]);
        if (delays.length === 6) resolve();
      });
    });
    client.close();
    const expected = mulberry32(7);
    const raw = [20, 40, 80, 100, 100, 100];
    equal(delays, raw.map((ms, i) => [i + 1, Math.round(ms * (1 - 0.5 * expected())), 1006]), "delays");
    equal(backoffDelay(3, { ...options, jitter: 0 }), 80, "no jitter");
    equal(backoffDelay(9, options, () => 0), 100, "capped");
    equal(backoffDelay(1, { ...options, jitter: 1 }, () => 0.75), 5, "full jitter");
  },

  async "the attempt count starts again after a connection opened"() {
    const [client] = await opened();
    for (let round = 0; round < 2; round += 1) {
      const waiting = next(client, "state", (event) => event.state === "reconnecting");
      const back = next(client, "state", (event) => event.state === "open");
      client.send("ctl", { close: 1011 });
      equal((await waiting).attempt, 1, "attempt");
      await back;
    }
    equal(client.statistics().reconnects, 2, "reconnects");
    client.close();
  },

  async "the send queue is bounded: an overflow is an error event and send() returns false"() {
    const client = new Client(SCRIPT, { queueSize: 3, connect: false });
    const errors = record(client, "error");
    equal([0, 1, 2, 3].map((n) => client.send("echo", { n })), [true, true, true, false], "sends");
    equal(errors.map((error) => [error.type, error.size]), [["queue-full", 3]], "errors");
    equal(client.statistics().queued, 3, "queued");
    const echoes = record(client, "message");
    const end = next(client, "message", (event) => event.payload.n === "end");
    client.connect();
    await next(client, "state", (event) => event.state === "open");
    client.send("echo", { n: "end" });
    await end;
    equal(echoes.filter((e) => e.stream === "echo").map((e) => e.payload.n), [0, 1, 2, "end"], "delivered");
    client.close();
  },

  async "sends made while disconnected go out in order after the reconnect"() {
    const [client] = await opened({ soon: 300 });
    const messages = record(client, "message");
    const down = next(client, "state", (event) => event.state === "reconnecting");
    client.send("ctl", { close: 1012 });
    await down;
    for (let n = 0; n < 5; n += 1) check(client.send("echo", { n }), "queued");
    equal(client.statistics().queued, 5, "queued");
    await next(client, "message", (event) => event.payload.n === 4);
    const order = messages.map((event) => (event.stream === "ctl" ? "hello" : event.payload.n));
    equal(order, ["hello", 0, 1, 2, 3, 4], "after the new connection's hello, in order");
    client.close();
  },

  async "numbered messages are delivered once: an offset at or below the position is dropped"() {
    const [client] = await opened();
    const messages = record(client, "message");
    const offsets = [1, 2, 2, 1, 3];
    const frames = offsets.map((offset) => frame("a", { offset }, { offset, epoch: "e1" }));
    frames.push(frame("a", { offset: 1 }, { offset: 1, epoch: "e2" })); // a new epoch starts over
    frames.push(frame("a", { plain: true })); // no position: always delivered
    const last = next(client, "message", (event) => event.payload.plain);
    client.send("ctl", { frames });
    await last;
    equal(
      messages.map((event) => [event.epoch, event.offset]),
      [["e1", 1], ["e1", 2], ["e1", 3], ["e2", 1], [null, null]],
      "delivered",
    );
    equal(client.statistics().duplicates, 2, "duplicates");
    equal(client.position("a"), { epoch: "e2", offset: 1 }, "position");
    client.close();
  },

  async "a reconnect sends each stream's position in the URL, and the server reads it"() {
    const [client, first] = await opened();
    equal(first.positions, {}, "no positions at first");
    const frames = [
      frame("a", {}, { offset: 3, epoch: "e1" }),
      frame("b", {}, { offset: 7, epoch: "e2" }),
    ];
    const seen = next(client, "message", (event) => event.stream === "b");
    client.send("ctl", { frames });
    await seen;
    const again = hello(client);
    client.send("ctl", { close: 1012 });
    const { query, positions } = (await again).payload;
    equal(new URLSearchParams(query).getAll("recover"), ["a:e1:3", "b:e2:7"], "query");
    equal(positions, { a: ["e1", 3], b: ["e2", 7] }, "recover_positions");
    client.close();
  },

  async "saved positions are recovered from on the first connection; recover: false sends none"() {
    const [saved, hi] = await opened({ positions: { chat: { epoch: "e5", offset: 9 } } });
    equal(hi.positions, { chat: ["e5", 9] }, "saved");
    saved.close();
    const [quiet, none] = await opened({ recover: false, positions: { chat: { epoch: "e5", offset: 9 } } });
    equal(none.query, "", "recover: false");
    quiet.close();
  },

  async "a join frame moves the position forward only; recovered: false is a recover-failed event"() {
    const [client] = await opened();
    const failed = record(client, "recover-failed");
    const joins = record(client, "join");
    const frames = [
      frame("chat", {}, { offset: 5, epoch: "e1" }),
      JSON.stringify({ stream: "chat", join: { group: "g", epoch: "e1", offset: 4, recovered: true, replayed: 1 } }),
      JSON.stringify({ stream: "chat", join: { group: "g", epoch: "e9", offset: 2, recovered: false, reason: "epoch", replayed: 0 } }),
    ];
    const done = next(client, "join", (event) => event.epoch === "e9");
    client.send("ctl", { frames });
    await done;
    equal(joins.map((join) => join.recovered), [true, false], "joins");
    equal(failed, [{ stream: "chat", group: "g", reason: "epoch", epoch: "e9", offset: 2 }], "recover-failed");
    equal(client.position("chat"), { epoch: "e9", offset: 2 }, "position");
    client.close();
  },

  async "a request resolves with the server's reply"() {
    const [client] = await opened();
    equal(await client.request("rpc", { answer: 42 }), { answer: 42 }, "reply");
    equal(await client.stream("rpc").request({ answer: "x" }), { answer: "x" }, "through a stream");
    equal(client.statistics().pending, 0, "pending");
    client.close();
  },

  async "a request without a reply rejects with a TimeoutError, and a late reply is ignored"() {
    const [client] = await opened();
    const error = await rejection(client.request("rpc", { silent: true }, { timeout: 150 }));
    check(error instanceof TimeoutError && error instanceof TrioChannelsError, `got ${error}`);
    equal([error.name, error.stream, error.timeout], ["TimeoutError", "rpc", 150], "error");
    check(/no reply to request \d+ on stream "rpc" within 150 ms/.test(error.message), error.message);
    equal(client.statistics().pending, 0, "pending");
    const late = JSON.stringify({ stream: "rpc", reply: error.id, payload: {} });
    const after = next(client, "message", (event) => event.stream === "echo");
    client.send("ctl", { frames: [late, frame("echo", {})] });
    await after; // the late reply came first and changed nothing
    equal(await client.request("rpc", { answer: 1 }), { answer: 1 }, "still works");
    client.close();
  },

  async "a queued request that times out is never sent"() {
    const client = new Client(SCRIPT, { connect: false });
    const error = await rejection(client.request("rpc", { answer: 1 }, { timeout: 50 }));
    check(error instanceof TimeoutError, `got ${error}`);
    equal(client.statistics().queued, 0, "queued");
    client.close();
  },

  async "an error reply rejects with a RequestError carrying it"() {
    const [client] = await opened();
    const error = await rejection(client.request("rpc", { fail: "no such room" }));
    check(error instanceof RequestError, `got ${error}`);
    equal([error.reason, error.error], ["error", { message: "no such room" }], "error");
    client.close();
  },

  async "a request in flight when the socket closes rejects as disconnected"() {
    const [client] = await opened();
    const pending = client.request("rpc", { silent: true });
    client.send("ctl", { close: 1011 });
    const error = await rejection(pending);
    check(error instanceof RequestError && error.reason === "disconnected", `got ${error}`);
    client.close();
  },

  async "1001 and 1012 reconnect soon"() {
    for (const code of [1001, 1012]) {
      const [client] = await opened({ soon: 50, backoff: { base: 5000 } });
      const down = next(client, "state", (event) => event.state === "reconnecting");
      const back = next(client, "state", (event) => event.state === "open");
      client.send("ctl", { close: code });
      const event = await down;
      check(event.code === code && event.attempt === 1 && event.delay <= 50, JSON.stringify(event));
      await back;
      client.close();
    }
  },

  async "1008 closes for good"() {
    const [client] = await opened();
    const states = record(client, "state");
    const closed = next(client, "close");
    client.send("ctl", { close: 1008 });
    equal((await closed).willReconnect, false, "willReconnect");
    await pause(300); // FAST would have reconnected within 40 ms
    equal(states.map((event) => [event.state, event.code, event.byClient]), [["closed", 1008, false]], "states");
  },

  async "4000-4999 are surfaced and do not reconnect, unless a close listener returns true"() {
    const [client] = await opened();
    const closes = record(client, "close");
    const closed = next(client, "state", (event) => event.state === "closed");
    client.send("ctl", { close: 4001 });
    equal((await closed).code, 4001, "closed");
    equal(closes.map((event) => [event.code, event.willReconnect]), [[4001, false]], "close event");
    client.close();
    const [told] = await opened();
    told.on("close", (event) => event.code === 4001);
    const back = next(told, "state", (event) => event.state === "open");
    told.send("ctl", { close: 4001 });
    await back;
    told.close();
  },

  async "a close listener returning false stops reconnecting after any code"() {
    const [client] = await opened();
    client.on("close", () => false);
    const closed = next(client, "state", (event) => event.state === "closed");
    client.send("ctl", { close: 1011 });
    equal((await closed).code, 1011, "closed");
    equal(client.state, "closed", "state");
  },

  async "close() drops the queue, fails queued requests and refuses sends"() {
    const client = new Client(SCRIPT, { connect: false });
    const errors = record(client, "error");
    client.send("echo", { n: 1 });
    const request = client.request("rpc", { answer: 1 });
    client.close();
    const error = await rejection(request);
    equal([error.name, error.reason], ["RequestError", "closed"], "request");
    equal(client.send("echo", { n: 2 }), false, "send after close");
    equal(errors.map((e) => e.type), ["dropped", "closed"], "errors");
    equal(errors[0].count, 2, "dropped");
  },

  async "presence events, and frames the client does not know, are events of their own"() {
    const [client] = await opened();
    const presence = next(client, "presence");
    const other = record(client, "frame");
    const event = { presence: "join", group: "room", channel: "interface.x!y", info: { name: "ann" } };
    const last = next(client, "frame", (e) => e.data === "plain text");
    client.send("ctl", { frames: [JSON.stringify(event), JSON.stringify({ other: 1 }), "plain text"] });
    equal(await presence, event, "presence");
    await last;
    equal(other.map((e) => [e.data, e.json]), [['{"other":1}', { other: 1 }], ["plain text", undefined]], "frames");
    client.close();
  },

  async "a stream view sees its own stream only"() {
    const [client] = await opened();
    const chat = client.stream("chat");
    const seen = [];
    chat.on("message", (event) => seen.push(event.payload.n));
    const done = next(client, "message", (event) => event.payload.n === 3);
    chat.send({ n: 1 });
    client.send("other", { n: 2 });
    chat.send({ n: 3 });
    await done;
    equal(seen, [1, 3], "chat only");
    client.close();
  },

  async "a listener that throws does not stop the others"() {
    const [client] = await opened();
    client.on("message", () => {
      throw new Error("thrown by a listener, on purpose");
    });
    const reached = next(client, "message", (event) => event.stream === "echo");
    client.send("echo", {});
    await reached;
    client.close();
  },

  async "bad arguments fail at once, naming the value"() {
    const fails = (fn, kind, text) => {
      try {
        fn();
      } catch (error) {
        check(error instanceof kind && error.message.includes(text), `${error}`);
        return;
      }
      throw new Error(`expected ${kind.name} mentioning ${text}`);
    };
    fails(() => new Client(SCRIPT, { bogus: 1 }), TypeError, '"bogus"');
    fails(() => new Client(SCRIPT, { backoff: { jitter: 2 } }), RangeError, "jitter");
    fails(() => new Client(SCRIPT, { queueSize: -1 }), RangeError, "queueSize");
    fails(() => new Client("ftp://example.com/", {}), SyntaxError, "ftp:");
    const client = new Client(SCRIPT, { connect: false });
    fails(() => client.send("chat", "text"), TypeError, '"text"');
    fails(() => client.send("", {}), TypeError, "stream name");
    fails(() => client.on("recoverFailed", () => {}), TypeError, '"recoverFailed"');
    fails(() => client.setPosition("chat", "e1", -1), TypeError, "-1");
    client.close();
  },
};

window.suite = {
  names: Object.keys(tests),
  async run(name) {
    try {
      await tests[name]();
      return { name, ok: true };
    } catch (error) {
      return { name, ok: false, error: String(error && error.stack ? error.stack : error) };
    }
  },
};
window.dispatchEvent(new Event("suite-ready"));
