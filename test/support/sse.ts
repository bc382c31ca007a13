/**
 * Reads an SSE body from the test upstream's `/sse` endpoint, noting when each event arrived next
 * to the `sent_at` the upstream stamped into it. Web streams only: runs in workerd and in Node.
 */
export interface TimedEvent {
  sentAt: number;
  arrivedAt: number;
}

export async function readTimedEvents(body: ReadableStream<Uint8Array>): Promise<TimedEvent[]> {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const events: TimedEvent[] = [];
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return events;
    buffered += value;
    const parts = buffered.split("\n\n");
    buffered = parts.pop() ?? "";
    for (const part of parts) events.push({ sentAt: (JSON.parse(part.slice(6)) as { sent_at: number }).sent_at, arrivedAt: Date.now() });
  }
}

/** True when every event reached the reader before the upstream had sent the next one. */
export const deliveredOneByOne = (events: TimedEvent[]) => events.every((event, index) => index + 1 === events.length || event.arrivedAt < events[index + 1]!.sentAt);
