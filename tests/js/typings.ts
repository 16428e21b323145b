// Type-checked (never run) by `nox -s jslint` (tsc --noEmit --strict): the typings in
// trio_channels/static/trio-channels.d.ts describe the client as docs/client.rst uses it.
import TrioChannels, { Client, RequestError, TimeoutError, type Position } from "../../trio_channels/static/trio-channels";

const client = new Client("/chat/lobby/?name=ann", {
  backoff: { base: 500, factor: 2, max: 15000, jitter: 0.5 },
  soon: 1000,
  queueSize: 100,
  timeout: 10000,
  positions: { chat: { epoch: "9f2c41d07a3b", offset: 42 } },
  protocols: () => ["chat"],
});
const off: () => void = client.on("state", (event) => {
  if (event.state === "reconnecting") console.log(event.attempt, event.delay, event.code);
  if (event.state === "closed") console.log(event.byClient);
});
off();
client.on("close", (event) => event.code === 4001);
client.on("message", ({ stream, payload, offset, epoch }) => console.log(stream, payload, offset, epoch));
client.on("recover-failed", ({ reason }) => console.log(reason.toUpperCase()));
client.on("presence", ({ presence, info }) => console.log(presence === "join", info?.name));
client.on("error", (error) => console.log(error.type, error.message));
const sent: boolean = client.send("chat", { text: "hi" });
const position: Position | undefined = client.position("chat");
console.log(sent, position, client.positions, client.statistics().duplicates, TrioChannels.VERSION);

async function ask(): Promise<number> {
  try {
    const reply = await client.request<{ offset: number }>("chat", { get: "history" }, { timeout: 5000 });
    return reply.offset;
  } catch (error) {
    if (error instanceof TimeoutError) return error.timeout;
    if (error instanceof RequestError && error.reason === "error") return -1;
    throw error;
  }
}
void ask();
const chat = client.stream("chat");
chat.on("join", (join) => console.log(join.recovered, join.replayed));
chat.send({ text: "hello" });
client.close(1000, "bye");

// @ts-expect-error: events are named; a typo does not compile
client.on("recoverFailed", () => undefined);
// @ts-expect-error: payloads are JSON objects
client.send("chat", "text");
