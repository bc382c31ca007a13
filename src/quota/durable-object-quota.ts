/** QuotaService on the UserQuota Durable Object: one object per handle, reached by RPC. */
import type { TokenIdentity } from "../auth/token-store";
import type { UserLimits } from "../shared/config";
import type { AuthorizeRequest, Authorization, QuotaService, RequestOutcome, UserProfile } from "./quota";
import type { UserQuota, UsageSnapshot } from "./user-quota";

/** The stub of a handle's one UserQuota object. */
export function userQuotaStub(namespace: DurableObjectNamespace<UserQuota>, handle: string) {
  return namespace.get(namespace.idFromName(handle));
}

export class DurableObjectQuota implements QuotaService {
  constructor(private readonly namespace: DurableObjectNamespace<UserQuota>) {}

  authorize(request: AuthorizeRequest): Promise<Authorization> {
    return userQuotaStub(this.namespace, request.token.handle).authorize(request);
  }

  profile(token: TokenIdentity, now: number, defaults: UserLimits, timezone: string): Promise<UserProfile | null> {
    return userQuotaStub(this.namespace, token.handle).profile(token, now, defaults, timezone);
  }

  renew(token: TokenIdentity, leaseId: string, leaseMs: number): Promise<boolean> {
    return userQuotaStub(this.namespace, token.handle).renew(leaseId, leaseMs, token);
  }

  release(handle: string, leaseId: string, outcome: RequestOutcome, now: number, timezone: string): Promise<void> {
    return userQuotaStub(this.namespace, handle).release(leaseId, outcome, now, timezone);
  }
}

export function usageSnapshot(namespace: DurableObjectNamespace<UserQuota>, handle: string, now: number, timezone: string): Promise<UsageSnapshot> {
  return userQuotaStub(namespace, handle).snapshot(now, timezone);
}
