/** QuotaService on the UserQuota Durable Object: one object per handle. */
import type { AdmitRequest, Admission, QuotaService, RequestOutcome } from "./quota";
import type { UserQuota, UsageSnapshot } from "./user-quota";

/** The one UserQuota object of a handle. */
export function userQuota(namespace: DurableObjectNamespace<UserQuota>, handle: string) {
  return namespace.get(namespace.idFromName(handle));
}

export class DurableObjectQuota implements QuotaService {
  constructor(private readonly namespace: DurableObjectNamespace<UserQuota>) {}

  private stub(handle: string) {
    return userQuota(this.namespace, handle);
  }

  admit(request: AdmitRequest): Promise<Admission> {
    return this.stub(request.handle).admit(request);
  }

  renew(handle: string, leaseId: string, leaseMs: number): Promise<void> {
    return this.stub(handle).renew(leaseId, leaseMs);
  }

  release(handle: string, leaseId: string, outcome: RequestOutcome, now: number, timezone: string): Promise<void> {
    return this.stub(handle).release(leaseId, outcome, now, timezone);
  }
}

export function usageSnapshot(namespace: DurableObjectNamespace<UserQuota>, handle: string, now: number, timezone: string): Promise<UsageSnapshot> {
  return userQuota(namespace, handle).snapshot(now, timezone);
}
