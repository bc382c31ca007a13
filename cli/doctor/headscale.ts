/**
 * Which Headscale `invite` and `revoke` would drive from here (cli/headscale.ts): supported, too
 * old or too new (then revoke cannot remove a user's devices), or not installed on this machine
 * (normal when Headscale runs elsewhere, but then it is the operator who removes devices).
 */
import { headscaleVersion, SUPPORTED_HEADSCALE } from "../headscale";
import { check, reason, type Check } from "./check";

export async function headscaleCheck(): Promise<Check> {
  let version;
  try {
    version = await headscaleVersion();
  } catch (error) {
    return check("headscale", "headscale", "fail", reason(error), "fix headscale's configuration (/etc/headscale/config.yaml) until `headscale version` works");
  }
  if (version === undefined) {
    return check("headscale", "headscale", "warn", "not installed here: invite cannot mint pre-auth keys and revoke cannot remove a user's devices", "install the headscale CLI here and point it at your server (HEADSCALE_CLI_ADDRESS, HEADSCALE_CLI_API_KEY), or remove devices by hand on the Headscale host");
  }
  const data = { version: version.version ?? version.text, supported: version.supported };
  if (!version.supported) {
    return check("headscale", "headscale", "fail", `${version.version ?? `"${version.text}"`} is not supported (halo-gate speaks Headscale ${SUPPORTED_HEADSCALE}): revoke cannot remove devices`, `install a Headscale from ${SUPPORTED_HEADSCALE}`, data);
  }
  return check("headscale", "headscale", "ok", `${version.version} (supported: ${SUPPORTED_HEADSCALE})`, undefined, data);
}
