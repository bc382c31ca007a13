/**
 * LLM usage metering without buffering the response.
 *
 * Request side: for a streamed chat/completions request that did not ask for usage, ask the
 * upstream for it (`stream_options.include_usage`) and remember to drop that extra chunk, so the
 * client sees exactly what it asked for. Response side: bytes pass through as they arrive while a
 * copy is read for `usage` (JSON body, or the final SSE chunk); without usage, the streamed content
 * deltas are counted instead.
 */
import { z } from "zod";

export const METERED_ENDPOINTS = /\/v1\/(chat\/)?completions$/;

export interface MeterPlan {
  /** The upstream was asked for usage the client did not ask for: drop it from the stream. */
  dropInjectedUsage: boolean;
}

const completionRequest = z.looseObject({
  stream: z.boolean().optional(),
  stream_options: z.looseObject({ include_usage: z.boolean().optional() }).nullable().optional(),
});

/**
 * The body to send upstream for a metered request (read whole: docs/contract.md §4 allows it within the limit),
 * and how to treat the response. A body that is not a JSON object is forwarded untouched.
 */
export function planMeteredRequest(bodyText: string): { body: string; plan: MeterPlan } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(bodyText);
  } catch {
    return { body: bodyText, plan: { dropInjectedUsage: false } };
  }
  const request = completionRequest.safeParse(parsed);
  if (!request.success || request.data.stream !== true || request.data.stream_options?.include_usage === true) {
    return { body: bodyText, plan: { dropInjectedUsage: false } };
  }
  const rewritten = { ...request.data, stream_options: { ...(request.data.stream_options ?? {}), include_usage: true } };
  return { body: JSON.stringify(rewritten), plan: { dropInjectedUsage: true } };
}

/** Whether a JSON request body asks for a streamed answer (`"stream": true`), as OpenAI's API reads it. */
export function requestsStream(bodyText: string): boolean {
  try {
    const request = completionRequest.safeParse(JSON.parse(bodyText));
    return request.success && request.data.stream === true;
  } catch {
    return false;
  }
}

export interface UsageTally {
  /** Tokens reported by the upstream's `usage`, when it sent one. */
  reported: number | null;
  /** Streamed content deltas seen (the fallback when no usage arrives). */
  deltas: number;
}

export const chargeableTokens = (tally: UsageTally) => tally.reported ?? tally.deltas;

const usageSchema = z.looseObject({
  total_tokens: z.number().optional(),
  prompt_tokens: z.number().optional(),
  completion_tokens: z.number().optional(),
});

function usageTokens(value: unknown): number | null {
  const usage = usageSchema.safeParse(value);
  if (!usage.success) return null;
  return usage.data.total_tokens ?? (usage.data.prompt_tokens ?? 0) + (usage.data.completion_tokens ?? 0);
}

interface ChunkShape {
  usage?: unknown;
  choices?: Array<{ delta?: { content?: unknown }; text?: unknown }>;
}

/**
 * A pass-through stream that tallies usage. For SSE with `dropInjectedUsage`, output is released
 * event by event (a usage-only chunk the client did not ask for is dropped); otherwise every chunk
 * is forwarded the moment it arrives, byte for byte.
 */
export function meteringStream(contentType: string, plan: MeterPlan, tally: UsageTally): TransformStream<Uint8Array, Uint8Array> {
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  if (!contentType.includes("text/event-stream")) {
    const json = contentType.includes("json");
    let text = "";
    return new TransformStream({
      transform(chunk, controller) {
        controller.enqueue(chunk);
        if (json && text.length < 4 * 1024 * 1024) text += decoder.decode(chunk, { stream: true });
      },
      flush() {
        if (!json) return;
        try {
          tally.reported = usageTokens((JSON.parse(text + decoder.decode()) as ChunkShape).usage) ?? tally.reported;
        } catch {
          // not JSON after all: nothing to charge from it
        }
      },
    });
  }
  let pending = "";
  const inspect = (event: string): boolean => {
    // Returns false when the event must be dropped (the injected usage chunk).
    let keep = true;
    for (const line of event.split(/\r?\n/)) {
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "" || data === "[DONE]") continue;
      let chunk: ChunkShape;
      try {
        chunk = JSON.parse(data) as ChunkShape;
      } catch {
        continue;
      }
      const tokens = chunk.usage ? usageTokens(chunk.usage) : null;
      if (tokens !== null) {
        tally.reported = tokens;
        if (plan.dropInjectedUsage && Array.isArray(chunk.choices) && chunk.choices.length === 0) keep = false;
      }
      for (const choice of chunk.choices ?? []) {
        if (typeof choice.delta?.content === "string" && choice.delta.content !== "") tally.deltas++;
        else if (typeof choice.text === "string" && choice.text !== "") tally.deltas++;
      }
    }
    return keep;
  };
  const EVENT_END = /\r?\n\r?\n/;
  return new TransformStream({
    transform(chunk, controller) {
      if (!plan.dropInjectedUsage) controller.enqueue(chunk);
      pending += decoder.decode(chunk, { stream: true });
      for (let match = EVENT_END.exec(pending); match; match = EVENT_END.exec(pending)) {
        const end = match.index + match[0].length;
        const event = pending.slice(0, end);
        pending = pending.slice(end);
        if (inspect(event) && plan.dropInjectedUsage) controller.enqueue(encoder.encode(event));
      }
    },
    flush(controller) {
      pending += decoder.decode();
      if (pending !== "" && inspect(pending) && plan.dropInjectedUsage) controller.enqueue(encoder.encode(pending));
    },
  });
}
