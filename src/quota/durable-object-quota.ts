/** QuotaService on the UserQuota Durable Object: one object per handle. */
import type { AdmitRequest, Admission, QuotaService, RequestOutcome } from "./quota";
import type { UserQuota, UsageSnapshot } from "./user-quota";

export class DurableObjectQuota implements QuotaService {
  constructor(private readonly namespace: DurableObjectNamespace<UserQuota>) {}

  private stub(handle: string) {
    return this.namespace.get(this.namespace.idFromName(handle));
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
  return namespace.get(namespace.idFromName(handle)).snapshot(now, timezone);
}
