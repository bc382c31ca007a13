// Values that vitest's globalSetup provides to every test (see test/support/global-upstream.ts).
export {};
declare module "vitest" {
  export interface ProvidedContext {
    upstreamPort: number;
    closedPort: number;
  }
}
