// Typings of trio-channels.js, the browser client of trio_channels (docs/client.rst).
// Served at /_trio_channels/client.d.ts beside client.mjs (the ES module) and client.js (the
// classic script, whose global `TrioChannels` has the same members).

export as namespace TrioChannels;

/** The connection's state: "connecting", "open", "reconnecting" (waiting to retry) or "closed". */
export type State = "connecting" | "open" | "reconnecting" | "closed";

/** A stream's place in its group's history. */
export interface Position {
  epoch: string;
  offset: number;
}

export interface BackoffOptions {
  /** The first reconnect's delay, in ms (default 500). */
  base?: number;
  /** Each further attempt waits this many times longer (default 2). */
  factor?: number;
  /** The longest wait, in ms (default 15000). */
  max?: number;
  /** Up to this fraction of each wait is taken off at random, 0 to 1 (default 0.5). */
  jitter?: number;
}

export interface ClientOptions {
  /** Reconnect after a close the client did not ask for (default true). */
  reconnect?: boolean;
  backoff?: BackoffOptions;
  /** After 1001 or 1012, the first reconnect comes within this many ms, at random (default 1000). */
  soon?: number;
  /** How many sends wait while no socket is open (default 100); more are refused with an "error" event. */
  queueSize?: number;
  /** request()'s timeout, in ms (default 10000). */
  timeout?: number;
  /** Send the last position of each stream when reconnecting (default true). */
  recover?: boolean;
  /** Positions to recover from on the first connection (saved before a page reload). */
  positions?: Record<string, Position>;
  /** WebSocket subprotocols, or a function giving them for each connection. */
  protocols?: string | string[] | (() => string | string[] | undefined);
  /** Connect at once (default true); false: call connect(). */
  connect?: boolean;
  /** The source of jitter (default Math.random), returning numbers in [0, 1). */
  random?: () => number;
}

export type StateEvent =
  | { state: "connecting"; attempt: number }
  | { state: "open" }
  | { state: "reconnecting"; attempt: number; delay: number; code: number; reason: string }
  | { state: "closed"; code: number; reason: string; byClient: boolean };

export interface OpenEvent {
  url: string;
  protocol: string;
}

export interface CloseEvent {
  code: number;
  reason: string;
  wasClean: boolean;
  /** What the client will do unless a listener returns true (reconnect) or false (stop). */
  willReconnect: boolean;
}

export interface MessageEvent<P = unknown> {
  stream: string;
  payload: P;
  /** The message's place in its group's history (null for a group without history). */
  offset: number | null;
  epoch: string | null;
}

export interface JoinEvent {
  stream: string;
  group: string;
  epoch?: string | null;
  offset?: number | null;
  recovered: boolean;
  replayed: number;
  reason?: string;
}

export interface RecoverFailedEvent {
  stream: string;
  group: string;
  /** "epoch", "trimmed", "ahead", "no room", ... (docs/presence-history.rst). */
  reason: string;
  epoch: string | null;
  offset: number | null;
}

export interface PresenceEvent<I = Record<string, unknown>> {
  presence: "join" | "leave";
  group: string;
  channel: string;
  info: I | null;
}

export interface FrameEvent {
  /** The frame as received: a string, or an ArrayBuffer for a binary frame. */
  data: string | ArrayBuffer;
  /** The frame parsed as JSON, when it was JSON. */
  json: unknown;
}

export interface ErrorEvent {
  type: "queue-full" | "closed" | "dropped" | "connect";
  message: string;
  size?: number;
  count?: number;
  frame?: string;
  error?: unknown;
}

export interface EventMap {
  state: StateEvent;
  open: OpenEvent;
  close: CloseEvent;
  message: MessageEvent;
  join: JoinEvent;
  "recover-failed": RecoverFailedEvent;
  presence: PresenceEvent;
  frame: FrameEvent;
  error: ErrorEvent;
}

/** A "close" listener may return true (reconnect, even after 4000-4999) or false (stop). */
export type Listener<K extends keyof EventMap> = K extends "close"
  ? (event: EventMap[K]) => boolean | void
  : (event: EventMap[K]) => void;

export interface RequestOptions {
  /** This request's timeout, in ms (default: the client's `timeout`). */
  timeout?: number;
}

export interface Statistics {
  state: State;
  attempt: number;
  queued: number;
  pending: number;
  duplicates: number;
  reconnects: number;
}

export type Payload = Record<string, unknown>;

export class Client {
  constructor(url: string | URL | (() => string | URL), options?: ClientOptions);
  readonly state: State;
  /** The open WebSocket, or null. */
  readonly socket: WebSocket | null;
  /** Every stream's position, a copy. */
  readonly positions: Record<string, Position>;
  on<K extends keyof EventMap>(type: K, listener: Listener<K>): () => void;
  stream(name: string): Stream;
  connect(): void;
  close(code?: number, reason?: string): void;
  send(stream: string, payload: Payload): boolean;
  request<R = unknown>(stream: string, payload?: Payload, options?: RequestOptions): Promise<R>;
  position(stream: string): Position | undefined;
  setPosition(stream: string, epoch: string, offset: number): void;
  forget(stream: string): void;
  statistics(): Statistics;
}

export type StreamEventName = "message" | "join" | "recover-failed";

export class Stream {
  readonly client: Client;
  readonly name: string;
  readonly position: Position | undefined;
  send(payload: Payload): boolean;
  request<R = unknown>(payload?: Payload, options?: RequestOptions): Promise<R>;
  on<K extends StreamEventName>(type: K, listener: Listener<K>): () => void;
}

export class TrioChannelsError extends Error {}

export class TimeoutError extends TrioChannelsError {
  readonly stream: string;
  readonly id: number;
  readonly timeout: number;
}

export class RequestError extends TrioChannelsError {
  readonly stream: string;
  readonly id: number;
  readonly reason: "disconnected" | "queue-full" | "closed" | "error";
  /** The server's error (reason "error"), e.g. {message: "..."}. */
  readonly error?: unknown;
}

/** The delay before reconnect attempt `attempt` (1 for the first), in ms. */
export function backoffDelay(
  attempt: number,
  options: Required<BackoffOptions>,
  random?: () => number,
): number;

export const EVENTS: readonly (keyof EventMap)[];
/** The payload key of a request's correlation id: "__request__". */
export const REQUEST_KEY: "__request__";
export const VERSION: string;

declare const TrioChannels: {
  Client: typeof Client;
  Stream: typeof Stream;
  TrioChannelsError: typeof TrioChannelsError;
  TimeoutError: typeof TimeoutError;
  RequestError: typeof RequestError;
  backoffDelay: typeof backoffDelay;
  EVENTS: typeof EVENTS;
  REQUEST_KEY: typeof REQUEST_KEY;
  VERSION: typeof VERSION;
};
export default TrioChannels;
