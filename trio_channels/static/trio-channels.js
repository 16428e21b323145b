/*
 * trio-channels.js: the browser client of trio_channels. One file, no dependencies, no build step.
 *
 * The server serves it at /_trio_channels/client.js (a classic script: the global `TrioChannels`)
 * and /_trio_channels/client.mjs (an ES module: `import { Client } from ...`), with its typings at
 * /_trio_channels/client.d.ts. docs/client.rst documents every option, event and method; the wire
 * format it speaks is in docs/presence-history.rst ("The wire format for WebSocket clients").
 *
 * How it works: one Client owns at most one WebSocket at a time. When the socket closes without
 * the app asking, the close code decides (1008 and 4000-4999: stop; 1001/1012: come back soon;
 * anything else: exponential backoff with jitter) and the next socket's URL carries the last
 * position seen per stream (?recover=<stream>:<epoch>:<offset>) so the server replays what was
 * missed. Messages the server numbers (offset, epoch) are delivered once: an offset at or below
 * the stream's position in the same epoch is a duplicate and is dropped. Sends made while no
 * socket is open wait in a bounded queue and go out, in order, when one opens.
 */
/* exported TrioChannels */
// A `var`: in a classic script it is the global `TrioChannels`; client.mjs is this file plus
// `export` lines, where it stays module-scoped.
// eslint-disable-next-line no-var
var TrioChannels = (() => {
  "use strict";

  const VERSION = "0.1.0";

  /** The events a Client emits, and so the names `on()` accepts. */
  const EVENTS = Object.freeze([
    "state",
    "open",
    "close",
    "message",
    "join",
    "recover-failed",
    "presence",
    "frame",
    "error",
  ]);
  const STREAM_EVENTS = new Set(["message", "join", "recover-failed"]);

  /** Close codes after which the client comes back soon: "going away", "service restart". */
  const SOON_CODES = new Set([1001, 1012]);
  /** The close code after which the client never reconnects on its own: "policy violation". */
  const POLICY_CODE = 1008;
  /** The key of a request's correlation id in its payload (trio_channels.generic.REQUEST_KEY). */
  const REQUEST_KEY = "__request__";
  const OPEN = 1; // WebSocket.OPEN, spelled out so the file also loads where WebSocket is absent

  const DEFAULTS = Object.freeze({
    reconnect: true,
    backoff: Object.freeze({ base: 500, factor: 2, max: 15000, jitter: 0.5 }),
    soon: 1000,
    queueSize: 100,
    timeout: 10000,
    recover: true,
    positions: undefined,
    protocols: undefined,
    connect: true,
    random: Math.random,
  });

  class TrioChannelsError extends Error {
    constructor(message) {
      super(message);
      this.name = new.target.name;
    }
  }

  /** A request got no reply in time. */
  class TimeoutError extends TrioChannelsError {
    constructor(message, { stream, id, timeout }) {
      super(message);
      this.stream = stream;
      this.id = id;
      this.timeout = timeout;
    }
  }

  /**
   * A request that failed before its reply: `reason` is "disconnected" (the socket closed after
   * it went out, so its reply cannot come), "queue-full", "closed" (client.close() was called) or
   * "error" (the server replied with an error: see `error`).
   */
  class RequestError extends TrioChannelsError {
    constructor(message, { stream, id, reason, error }) {
      super(message);
      this.stream = stream;
      this.id = id;
      this.reason = reason;
      this.error = error;
    }
  }

  function isObject(value) {
    return typeof value === "object" && value !== null && !Array.isArray(value);
  }

  function describe(value) {
    try {
      return JSON.stringify(value) ?? String(value);
    } catch {
      return String(value);
    }
  }

  function reportLater(error) {
    // A listener's exception must not break the client: report it as uncaught, asynchronously,
    // as EventTarget does.
    setTimeout(() => {
      throw error;
    }, 0);
  }

  function checkNumber(name, value, minimum) {
    if (typeof value !== "number" || !Number.isFinite(value) || value < minimum) {
      throw new RangeError(`option ${name} must be a number >= ${minimum}, got ${describe(value)}`);
    }
    return value;
  }

  function readOptions(options) {
    if (options !== undefined && !isObject(options)) {
      throw new TypeError(`the Client options must be an object, got ${describe(options)}`);
    }
    const given = { ...options };
    for (const name of Object.keys(given)) {
      if (!(name in DEFAULTS)) {
        throw new TypeError(
          `unknown Client option ${describe(name)}; the options are ${Object.keys(DEFAULTS).join(", ")}`,
        );
      }
    }
    const merged = { ...DEFAULTS, ...given };
    if (given.backoff !== undefined && !isObject(given.backoff)) {
      throw new TypeError(`option backoff must be an object, got ${describe(given.backoff)}`);
    }
    const backoff = { ...DEFAULTS.backoff, ...given.backoff };
    for (const name of Object.keys(backoff)) {
      if (!(name in DEFAULTS.backoff)) {
        throw new TypeError(`unknown backoff option ${describe(name)}; use base, factor, max and jitter`);
      }
    }
    checkNumber("backoff.base", backoff.base, 0);
    checkNumber("backoff.factor", backoff.factor, 1);
    checkNumber("backoff.max", backoff.max, backoff.base);
    checkNumber("backoff.jitter", backoff.jitter, 0);
    if (backoff.jitter > 1) {
      throw new RangeError(`option backoff.jitter must be from 0 to 1, got ${backoff.jitter}`);
    }
    merged.backoff = Object.freeze(backoff);
    checkNumber("soon", merged.soon, 0);
    checkNumber("timeout", merged.timeout, 0);
    if (!Number.isInteger(merged.queueSize) || merged.queueSize < 0) {
      throw new RangeError(`option queueSize must be an integer >= 0, got ${describe(merged.queueSize)}`);
    }
    if (typeof merged.random !== "function") {
      throw new TypeError(`option random must be a function returning [0, 1), got ${describe(merged.random)}`);
    }
    return merged;
  }

  /**
   * The delay in ms before reconnect attempt `attempt` (1 for the first): `base * factor **
   * (attempt - 1)`, capped at `max`, then shortened by up to `jitter` of itself at random (so a
   * thousand clients of a restarted server do not all come back in the same millisecond).
   */
  function backoffDelay(attempt, { base, factor, max, jitter }, random = Math.random) {
    const raw = Math.min(max, base * factor ** Math.max(0, attempt - 1));
    return Math.round(raw * (1 - jitter * random()));
  }

  /** The WebSocket URL for `url` (absolute or relative; http(s) becomes ws(s)). */
  function socketUrl(url) {
    const base = globalThis.location ? globalThis.location.href : undefined;
    const parsed = new URL(url, base);
    if (parsed.protocol === "http:") parsed.protocol = "ws:";
    if (parsed.protocol === "https:") parsed.protocol = "wss:";
    if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
      throw new SyntaxError(`a trio_channels URL must be ws:, wss:, http: or https:, got ${describe(url)}`);
    }
    return parsed;
  }

  class Stream {
    /** A view of one stream of a Client: its sends, requests and events. */
    constructor(client, name) {
      this.client = client;
      this.name = name;
    }

    send(payload) {
      return this.client.send(this.name, payload);
    }

    request(payload, options) {
      return this.client.request(this.name, payload, options);
    }

    on(type, listener) {
      if (!STREAM_EVENTS.has(type)) {
        throw new TypeError(
          `a stream emits ${[...STREAM_EVENTS].join(", ")}; listen for ${describe(type)} on the client`,
        );
      }
      return this.client.on(type, (event) => (event.stream === this.name ? listener(event) : undefined));
    }

    get position() {
      return this.client.position(this.name);
    }
  }

  class Client {
    /**
     * A connection to a trio_channels server at `url` (a ws(s):// or http(s):// URL, a path such as
     * "/chat/lobby/", or a function returning one, called before each connection). It connects at
     * once unless `options.connect` is false. See docs/client.rst for the options.
     */
    constructor(url, options) {
      if (typeof url !== "function") socketUrl(url); // a bad URL fails here, not on a timer later
      this._url = url;
      this._options = readOptions(options);
      this._listeners = new Map(EVENTS.map((type) => [type, new Set()]));
      this._socket = null;
      this._state = "closed";
      this._attempt = 0;
      this._timer = null;
      this._queue = [];
      this._pending = new Map(); // request id -> {resolve, reject, timer, stream, sent}
      this._lastId = 0;
      this._positions = new Map();
      this._duplicates = 0;
      this._reconnects = 0;
      this._closedByApp = false;
      this._onOnline = () => this._connectNow();
      for (const [stream, position] of Object.entries(this._options.positions || {})) {
        this.setPosition(stream, position.epoch, position.offset);
      }
      if (this._options.connect) this.connect();
    }

    /** "connecting", "open", "reconnecting" or "closed". */
    get state() {
      return this._state;
    }

    /** The open WebSocket, or null. */
    get socket() {
      return this._socket && this._socket.readyState === OPEN ? this._socket : null;
    }

    /** Subscribe to an event; returns a function that unsubscribes. */
    on(type, listener) {
      const listeners = this._listeners.get(type);
      if (listeners === undefined) {
        throw new TypeError(`unknown event ${describe(type)}; the events are ${EVENTS.join(", ")}`);
      }
      if (typeof listener !== "function") {
        throw new TypeError(`a listener must be a function, got ${describe(listener)}`);
      }
      const entry = (event) => listener.call(this, event);
      listeners.add(entry);
      return () => listeners.delete(entry);
    }

    /** A view of stream `name`: send(), request(), on() for its own events, and its position. */
    stream(name) {
      if (typeof name !== "string" || !name) {
        throw new TypeError(`a stream name must be a non-empty string, got ${describe(name)}`);
      }
      return new Stream(this, name);
    }

    /** Open a socket now (after connect: false, or a close that did not reconnect). */
    connect() {
      if (this._state === "open" || this._state === "connecting") return;
      this._closedByApp = false;
      this._clearTimer();
      this._open();
    }

    /**
     * Close the socket and stop reconnecting. Queued sends are dropped and waiting requests fail
     * with RequestError("closed"); connect() starts again.
     */
    close(code = 1000, reason = "") {
      this._closedByApp = true;
      this._clearTimer();
      this._stopWatchingOnline();
      const socket = this._socket;
      this._socket = null;
      if (socket) {
        try {
          socket.close(code, reason);
        } catch (error) {
          socket.close();
          reportLater(error);
        }
      }
      const dropped = this._queue.length;
      this._queue = [];
      for (const id of [...this._pending.keys()]) this._fail(id, "closed", "the client was closed");
      if (dropped) {
        this._emit("error", { type: "dropped", count: dropped, message: `close() dropped ${dropped} queued sends` });
      }
      if (this._state !== "closed") {
        this._setState({ state: "closed", code, reason, byClient: true });
      }
    }

    /**
     * Send `payload` (a JSON object) on `stream`: `{"stream": ..., "payload": ...}`. Without an
     * open socket it waits in the queue; returns false (and emits "error") if the queue is full
     * or the client was closed.
     */
    send(stream, payload) {
      this._checkFrame("send", stream, payload);
      return this._transmit(JSON.stringify({ stream, payload }), null);
    }

    /**
     * Send `payload` on `stream` as a request and resolve with the server's reply payload; rejects
     * with TimeoutError after `options.timeout` ms (default: the client's), or RequestError.
     */
    request(stream, payload = {}, options = {}) {
      this._checkFrame("request", stream, payload);
      const timeout = checkNumber("timeout", options.timeout ?? this._options.timeout, 0);
      const id = ++this._lastId;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          const waiting = this._pending.get(id);
          if (!waiting) return;
          this._pending.delete(id);
          this._queue = this._queue.filter((item) => item.id !== id);
          reject(
            new TimeoutError(`no reply to request ${id} on stream ${describe(stream)} within ${timeout} ms`, {
              stream,
              id,
              timeout,
            }),
          );
        }, timeout);
        this._pending.set(id, { resolve, reject, timer, stream, sent: false });
        const text = JSON.stringify({ stream, payload: { ...payload, [REQUEST_KEY]: id } });
        if (!this._transmit(text, id)) {
          const [reason, why] = this._closedByApp
            ? ["closed", "the client is closed"]
            : ["queue-full", "the send queue is full"];
          this._fail(id, reason, why);
        }
      });
    }

    /** The last position seen on `stream`, `{epoch, offset}`, or undefined. */
    position(stream) {
      const position = this._positions.get(stream);
      return position ? { ...position } : undefined;
    }

    /** Every stream's position: `{stream: {epoch, offset}}` (save it to resume after a reload). */
    get positions() {
      return Object.fromEntries([...this._positions].map(([stream, position]) => [stream, { ...position }]));
    }

    /** Set the position of `stream` (one saved before a reload); the next connection recovers from it. */
    setPosition(stream, epoch, offset) {
      if (typeof stream !== "string" || !stream || typeof epoch !== "string" || !epoch || epoch.includes(":")) {
        throw new TypeError(`a position needs a stream and an epoch (strings), got ${describe([stream, epoch])}`);
      }
      if (!Number.isInteger(offset) || offset < 0) {
        throw new TypeError(`an offset must be an integer >= 0, got ${describe(offset)}`);
      }
      this._positions.set(stream, { epoch, offset });
    }

    /** Forget the position of `stream`: the next connection joins it as a newcomer. */
    forget(stream) {
      this._positions.delete(stream);
    }

    /** Counters: the attempt number, queued sends, pending requests, duplicates dropped, reconnects. */
    statistics() {
      return {
        state: this._state,
        attempt: this._attempt,
        queued: this._queue.length,
        pending: this._pending.size,
        duplicates: this._duplicates,
        reconnects: this._reconnects,
      };
    }

    // ---------------------------------------------------------------- the connection

    _connectionUrl() {
      const url = socketUrl(typeof this._url === "function" ? this._url() : this._url);
      url.searchParams.delete("recover");
      if (this._options.recover) {
        for (const [stream, { epoch, offset }] of this._positions) {
          url.searchParams.append("recover", `${stream}:${epoch}:${offset}`);
        }
      }
      return url.href;
    }

    _open() {
      let socket;
      try {
        const protocols = this._options.protocols;
        const chosen = typeof protocols === "function" ? protocols() : protocols;
        socket = new WebSocket(this._connectionUrl(), chosen);
      } catch (error) {
        // A URL or subprotocol the browser refuses: no retry can fix it.
        this._socket = null;
        this._emit("error", { type: "connect", error, message: String(error) });
        this._setState({ state: "closed", code: 1006, reason: String(error), byClient: false });
        return;
      }
      socket.binaryType = "arraybuffer";
      this._socket = socket;
      this._setState({ state: "connecting", attempt: this._attempt });
      socket.onopen = () => {
        if (socket !== this._socket) return;
        if (this._attempt > 0) this._reconnects += 1;
        this._attempt = 0;
        this._stopWatchingOnline();
        this._setState({ state: "open" });
        this._emit("open", { url: socket.url, protocol: socket.protocol });
        this._flush();
      };
      socket.onmessage = (event) => {
        if (socket === this._socket) this._receive(event.data);
      };
      socket.onclose = (event) => {
        if (socket === this._socket) this._closed(event);
      };
    }

    _closed(event) {
      this._socket = null;
      for (const [id, waiting] of [...this._pending]) {
        if (waiting.sent) this._fail(id, "disconnected", `the connection closed (${event.code}) before the reply`);
      }
      const code = event.code;
      let reconnect = this._options.reconnect && code !== POLICY_CODE && !(code >= 4000 && code <= 4999);
      const answers = this._emit("close", {
        code,
        reason: event.reason,
        wasClean: event.wasClean,
        willReconnect: reconnect,
      });
      // A listener may decide: false stops reconnecting, true reconnects (after a 4xxx code too).
      if (answers.includes(false)) reconnect = false;
      else if (answers.includes(true)) reconnect = true;
      if (!reconnect) {
        this._setState({ state: "closed", code, reason: event.reason, byClient: false });
        return;
      }
      this._attempt += 1;
      const delay =
        this._attempt === 1 && SOON_CODES.has(code)
          ? Math.round(this._options.soon * this._options.random())
          : backoffDelay(this._attempt, this._options.backoff, this._options.random);
      this._setState({ state: "reconnecting", attempt: this._attempt, delay, code, reason: event.reason });
      this._timer = setTimeout(() => {
        this._timer = null;
        this._open();
      }, delay);
      if (globalThis.addEventListener) globalThis.addEventListener("online", this._onOnline);
    }

    _connectNow() {
      // The browser says the network is back: skip the rest of the wait.
      if (this._state === "reconnecting" && this._timer !== null) {
        this._clearTimer();
        this._open();
      }
    }

    _stopWatchingOnline() {
      if (globalThis.removeEventListener) globalThis.removeEventListener("online", this._onOnline);
    }

    _clearTimer() {
      if (this._timer !== null) {
        clearTimeout(this._timer);
        this._timer = null;
      }
    }

    _setState(detail) {
      this._state = detail.state;
      this._emit("state", detail);
    }

    // ---------------------------------------------------------------- sending

    _checkFrame(what, stream, payload) {
      if (typeof stream !== "string" || !stream) {
        throw new TypeError(`${what}() needs a stream name (a non-empty string), got ${describe(stream)}`);
      }
      if (!isObject(payload)) {
        throw new TypeError(`${what}() payloads must be JSON objects (the demultiplexer's rule), got ${describe(payload)}`);
      }
    }

    _transmit(text, id) {
      const socket = this.socket;
      if (socket && this._queue.length === 0) {
        socket.send(text);
        if (id !== null) this._pending.get(id).sent = true;
        return true;
      }
      if (this._closedByApp) {
        this._emit("error", { type: "closed", message: "the client is closed: call connect() first" });
        return false;
      }
      if (this._queue.length >= this._options.queueSize) {
        this._emit("error", {
          type: "queue-full",
          size: this._options.queueSize,
          message: `the send queue is full (${this._options.queueSize}); this send was dropped`,
          frame: text,
        });
        return false;
      }
      this._queue.push({ text, id });
      return true;
    }

    _flush() {
      while (this._queue.length) {
        const socket = this.socket;
        if (!socket) return;
        const { text, id } = this._queue.shift();
        socket.send(text);
        const waiting = id !== null ? this._pending.get(id) : undefined;
        if (waiting) waiting.sent = true;
      }
    }

    _fail(id, reason, message) {
      const waiting = this._pending.get(id);
      if (!waiting) return;
      this._pending.delete(id);
      clearTimeout(waiting.timer);
      this._queue = this._queue.filter((item) => item.id !== id);
      waiting.reject(
        new RequestError(`request ${id} on stream ${describe(waiting.stream)} failed: ${message}`, {
          stream: waiting.stream,
          id,
          reason,
        }),
      );
    }

    // ---------------------------------------------------------------- receiving

    _receive(data) {
      let frame;
      if (typeof data === "string") {
        try {
          frame = JSON.parse(data);
        } catch {
          frame = undefined;
        }
      }
      if (!isObject(frame)) {
        this._emit("frame", { data, json: frame });
        return;
      }
      if (typeof frame.presence === "string" && "group" in frame && "channel" in frame) {
        this._emit("presence", {
          presence: frame.presence,
          group: frame.group,
          channel: frame.channel,
          info: frame.info ?? null,
        });
      } else if (typeof frame.stream === "string" && "reply" in frame) {
        this._reply(frame);
      } else if (typeof frame.stream === "string" && isObject(frame.join)) {
        this._join(frame.stream, frame.join);
      } else if (typeof frame.stream === "string" && "payload" in frame) {
        this._message(frame);
      } else {
        this._emit("frame", { data, json: frame });
      }
    }

    _message(frame) {
      const { stream, payload } = frame;
      const numbered = Number.isInteger(frame.offset) && typeof frame.epoch === "string";
      if (numbered) {
        const known = this._positions.get(stream);
        if (known && known.epoch === frame.epoch && frame.offset <= known.offset) {
          this._duplicates += 1; // replayed and live both, or replayed twice: deliver once
          return;
        }
        this._positions.set(stream, { epoch: frame.epoch, offset: frame.offset });
      }
      this._emit("message", {
        stream,
        payload,
        offset: numbered ? frame.offset : null,
        epoch: numbered ? frame.epoch : null,
      });
    }

    _join(stream, join) {
      if (typeof join.epoch === "string" && Number.isInteger(join.offset)) {
        const known = this._positions.get(stream);
        if (!known || known.epoch !== join.epoch || known.offset < join.offset) {
          this._positions.set(stream, { epoch: join.epoch, offset: join.offset });
        }
      }
      const detail = { stream, ...join };
      this._emit("join", detail);
      if (join.recovered === false) {
        this._emit("recover-failed", {
          stream,
          group: join.group,
          reason: join.reason ?? "unknown",
          epoch: join.epoch ?? null,
          offset: join.offset ?? null,
        });
      }
    }

    _reply(frame) {
      const waiting = this._pending.get(frame.reply);
      if (!waiting) return; // its request timed out already, or was not ours
      this._pending.delete(frame.reply);
      clearTimeout(waiting.timer);
      if ("error" in frame) {
        const error = frame.error;
        const text = isObject(error) && typeof error.message === "string" ? error.message : describe(error);
        waiting.reject(
          new RequestError(`request ${frame.reply} on stream ${describe(frame.stream)} failed: ${text}`, {
            stream: frame.stream,
            id: frame.reply,
            reason: "error",
            error,
          }),
        );
      } else {
        waiting.resolve(frame.payload);
      }
    }

    _emit(type, detail) {
      const answers = [];
      for (const listener of [...this._listeners.get(type)]) {
        try {
          answers.push(listener(detail));
        } catch (error) {
          reportLater(error);
        }
      }
      return answers;
    }
  }

  return Object.freeze({
    Client,
    Stream,
    TrioChannelsError,
    TimeoutError,
    RequestError,
    backoffDelay,
    EVENTS,
    REQUEST_KEY,
    VERSION,
  });
})();
