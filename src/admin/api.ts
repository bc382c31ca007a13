/**
 * The admin API used by the CLI. Served only by the `AdminApi` entrypoint, which `halo-gate serve`
 * binds to loopback; the mesh-facing gateway has no admin paths at all (they 404 there).
 */
import { Hono } from "hono";
import { z } from "zod";
import { auditRecord, readAudit } from "../audit/audit-log";
import { durationProblem, MAX_ROTATE_GRACE, MAX_TTL, parseDuration } from "../shared/duration";
import { boundedNumber, HANDLE_PATTERN, HANDLE_RULE, LIMIT_BOUNDS, SCOPE_PATTERN, type GatewayConfig } from "../shared/config";
import { answerError, errors, gatewayError } from "../http/errors";
import { upstreamSchedulerStub } from "../queue/queue-wait";
import { MESH_USER_PATTERN } from "../shared/mesh-identity";
import { usageSnapshot, userQuotaStub } from "../quota/durable-object-quota";
import { AUDIT_END } from "../shared/admin-wire";
import { collectUsage, prometheusText } from "./metrics";
import { operatorAuth } from "./operator-auth";
import { importBearers } from "./import-bearers";
import { inviteUser, listUsers, revokeUser, rotateUser, updateUser } from "./users";

const handle = z.string().regex(HANDLE_PATTERN, `a handle is ${HANDLE_RULE}`);
const scopes = z.array(z.string().regex(SCOPE_PATTERN)).min(1);
// Capped: an overlong ttl would put the expiry beyond what a date can hold.
const ttl = z.string().superRefine((text, ctx) => {
  const problem = durationProblem(text, MAX_TTL);
  if (problem) ctx.addIssue({ code: "custom", message: `ttl ${problem}` });
});
const limits = {
  rps: boundedNumber(LIMIT_BOUNDS.rps).optional(),
  burst: boundedNumber(LIMIT_BOUNDS.burst).optional(),
  streams: boundedNumber(LIMIT_BOUNDS.streams).optional(),
  daily_tokens: boundedNumber(LIMIT_BOUNDS.daily_tokens).optional(),
};
/** The mesh user a user's tokens work from (issue 10): a Headscale user id; the CLI resolves names. */
const meshUser = z.string().regex(MESH_USER_PATTERN, "mesh_user is a numeric mesh (Headscale) user id, e.g. \"3\"");
const inviteBody = z.strictObject({ handle, scopes: scopes.optional(), ttl: ttl.optional(), ...limits, mesh_user: meshUser.optional() });
const updateBody = z.strictObject({ scopes: scopes.optional(), ttl: ttl.optional(), ...limits, mesh_user: meshUser.optional() });
const rotateBody = z.strictObject({
  grace: z
    .string()
    .superRefine((text, ctx) => {
      const problem = durationProblem(text, MAX_ROTATE_GRACE);
      if (problem) ctx.addIssue({ code: "custom", message: `grace ${problem}` });
    })
    .optional(),
});
const importBody = z.strictObject({ content: z.string().max(4 * 1024 * 1024), scopes: scopes.optional() });
/** A time with a zone, or a date alone (its midnight UTC). */
const auditQuery = z.strictObject({ since: z.union([z.iso.datetime({ offset: true, local: false }), z.iso.date()]).optional() });

async function body<T extends z.ZodType>(request: Request, schema: T): Promise<z.output<T>> {
  let raw: unknown;
  try {
    raw = await request.json();
  } catch {
    throw errors.badRequest("The request body must be JSON.", "invalid_json");
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const key = issue.code === "unrecognized_keys" ? issue.keys.join(", ") : issue.path.join(".");
    throw errors.badRequest(`${key ? `${key}: ` : ""}${issue.message}`, "invalid_body");
  }
  return parsed.data;
}

function handleParam(value: string): string {
  if (!HANDLE_PATTERN.test(value)) throw errors.badRequest(`"${value.slice(0, 40)}" is not a valid handle.`, "invalid_handle");
  return value;
}

export function createAdminApi(config: GatewayConfig, now: () => number = Date.now): Hono<{ Bindings: Env }> {
  const root = new Hono<{ Bindings: Env }>();
  root.use(operatorAuth({ tokenSha256: (env) => env.ADMIN_TOKEN_SHA256 }));
  /** Prometheus text; scrape with the operator token as a bearer credential. */
  root.get("/metrics", async (c) =>
    c.text(prometheusText(await collectUsage(c.env, config, now())), 200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }),
  );
  const admin = new Hono<{ Bindings: Env }>();

  admin.get("/usage", async (c) => c.json({ users: await collectUsage(c.env, config, now()) }));
  /** serve's shutdown (issue 12): every request waiting in the fair queue is answered 503 + Retry-After now. */
  admin.post("/queue/drain", async (c) => {
    const drained = config.routes.some((route) => route.max_in_flight !== undefined) ? await upstreamSchedulerStub(c.env.UPSTREAM_SCHEDULER).drain() : 0;
    return c.json({ drained });
  });

  admin.get("/users", async (c) => {
    const at = now();
    const users = await listUsers(c.env.DB, config, at);
    // Tokens today live in each user's quota object (ten users: ten small reads).
    const withUsage = await Promise.all(
      users.map(async (user) => ({ ...user, tokens_today: (await usageSnapshot(c.env.USER_QUOTA, user.handle, at, config.timezone)).tokensToday })),
    );
    return c.json({ users: withUsage });
  });

  admin.post("/users", async (c) => {
    const input = await body(c.req.raw, inviteBody);
    const issued = await inviteUser(
      c.env.DB,
      config,
      {
        handle: input.handle,
        scopes: input.scopes ?? config.default_scopes,
        ttlMs: input.ttl ? (parseDuration(input.ttl) as number) : config.default_ttl_ms,
        limits: { rps: input.rps, burst: input.burst, streams: input.streams, daily_tokens: input.daily_tokens },
        meshUser: input.mesh_user,
      },
      now(),
    );
    await userQuotaStub(c.env.USER_QUOTA, input.handle).reload();
    return c.json(issued, 201);
  });

  // The user's object decides on every request (issue 8), so each change reaches it before the
  // command returns: a revocation first (if D1 then fails, the token is refused all the same),
  // the other changes right after D1 has them.
  admin.post("/users/:handle/revoke", async (c) => {
    const handle = handleParam(c.req.param("handle"));
    await userQuotaStub(c.env.USER_QUOTA, handle).revoke(handle);
    return c.json(await revokeUser(c.env.DB, handle, now()));
  });
  admin.post("/users/:handle/rotate", async (c) => {
    const handle = handleParam(c.req.param("handle"));
    // An empty body (older CLIs) rotates with no grace.
    const input = c.req.header("content-type") === undefined || c.req.raw.body === null ? {} : await body(c.req.raw, rotateBody);
    const rotated = await rotateUser(c.env.DB, handle, now(), input.grace ? (parseDuration(input.grace) as number) : 0);
    await userQuotaStub(c.env.USER_QUOTA, handle).reload();
    return c.json(rotated);
  });

  admin.patch("/users/:handle", async (c) => {
    const input = await body(c.req.raw, updateBody);
    const target = handleParam(c.req.param("handle"));
    // An update changes only what it is given: a new rate keeps the user's current burst.
    const burst = input.burst ?? (input.rps === undefined ? undefined : (await listUsers(c.env.DB, config, now())).find((user) => user.handle === target)?.limits.burst);
    const user = await updateUser(
      c.env.DB,
      config,
      target,
      {
        scopes: input.scopes,
        ttlMs: input.ttl ? parseDuration(input.ttl) : undefined,
        limits: { rps: input.rps, burst, streams: input.streams, daily_tokens: input.daily_tokens },
        meshUser: input.mesh_user,
      },
      now(),
    );
    await userQuotaStub(c.env.USER_QUOTA, user.handle).reload();
    return c.json(user);
  });

  admin.post("/import-bearers", async (c) => {
    const input = await body(c.req.raw, importBody);
    return c.json(await importBearers(c.env.DB, config, input.content, input.scopes ?? config.default_scopes, now()));
  });

  /** NDJSON, one event a line, oldest first; read in pages so a large log never sits in memory. */
  admin.get("/audit", async (c) => {
    const query = auditQuery.safeParse(c.req.query());
    if (!query.success) throw errors.badRequest("since must be a date (2026-11-01) or an ISO 8601 time such as 2026-11-01T00:00:00Z.", "invalid_since");
    const since = query.data.since ? Date.parse(query.data.since) : 0;
    const db = c.env.DB;
    const encoder = new TextEncoder();
    let afterId = 0;
    let rows = 0;
    const stream = new ReadableStream<Uint8Array>({
      async pull(controller) {
        const page = await readAudit(db, since, afterId, 500);
        if (page.length === 0) {
          // The last line says the export is whole: a body cut short (a database error mid-export,
          // which workerd may still end cleanly) lacks it, and `halo-gate audit` then exits 1.
          controller.enqueue(encoder.encode(JSON.stringify({ [AUDIT_END]: true, rows }) + "\n"));
          return controller.close();
        }
        afterId = page[page.length - 1]!.id;
        rows += page.length;
        controller.enqueue(encoder.encode(page.map((row) => JSON.stringify(auditRecord(row)) + "\n").join("")));
      },
    });
    return new Response(stream, { headers: { "content-type": "application/x-ndjson" } });
  });

  root.route("/admin", admin);
  root.all("*", () => {
    throw gatewayError(404, { message: "No such admin endpoint.", type: "invalid_request_error", code: "not_found" });
  });
  root.onError(answerError("halo-gate admin"));
  return root;
}
