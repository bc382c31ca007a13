/** Fires the worker's scheduled handler on the wrangler.toml crons (or --cron), in UTC like Cloudflare. */
import { Cron } from "croner";
import { CliError } from "../errors";

export function validateCron(expression: string): void {
  try {
    new Cron(expression, { paused: true, timezone: "UTC" }).stop();
  } catch (error) {
    throw new CliError(`--cron "${expression}": ${(error as Error).message}`, 2);
  }
}

export function scheduleCrons(expressions: string[], fire: (cron: string, scheduledTime: Date) => Promise<void>): Cron[] {
  return expressions.map(
    (expression) =>
      new Cron(expression, { timezone: "UTC", protect: true }, async (job: Cron) => {
        const scheduledTime = job.currentRun() ?? new Date();
        try {
          await fire(expression, scheduledTime);
        } catch (error) {
          console.error(`halo-gate: cron "${expression}" failed: ${(error as Error).message}`);
        }
      }),
  );
}
