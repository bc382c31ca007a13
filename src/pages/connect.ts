/**
 * `/_halo/connect`: the browser page for beta users. It asks for the token, keeps it in memory only
 * (no storage, no URL), checks it against `/api/me` (and shows what it may use, until when, and
 * today's usage), and tests the audio WebSocket through a
 * single-use ticket. Served with a strict CSP, so the script is a separate same-origin file.
 */
export const CONNECT_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>halo-gate · connect</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/_halo/connect.css">
</head>
<body>
<main>
  <h1>halo-gate</h1>
  <p>You are on the private mesh. Paste the token from your invite to check that it works.
     It stays in this tab's memory only and is sent only to this gateway.</p>
  <form id="check">
    <label for="token">Token</label>
    <input id="token" name="token" type="password" autocomplete="off" spellcheck="false" placeholder="sk-halo-…" required pattern="sk-halo-[0-9a-f]{32}">
    <button type="submit">Check my token</button>
  </form>
  <p id="result" role="status"></p>
  <ul id="me" hidden></ul>
  <button id="audio" type="button" disabled>Test the audio WebSocket</button>
  <p id="audio-result" role="status"></p>
  <h2>Use it in apps</h2>
  <p>OpenAI-compatible base URL: <code id="base"></code> — API key: your token.</p>
  <p>The studio needs no token: <a href="/studio/">/studio/</a>.</p>
</main>
<script src="/_halo/connect.js"></script>
</body>
</html>
`;

export const CONNECT_CSS = `body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:36rem;margin:3rem auto;padding:2rem;background:#fff;border-radius:12px;box-shadow:0 1px 4px #0002}
h1{margin-top:0}label{display:block;font-weight:600;margin-bottom:.25rem}
input{width:100%;box-sizing:border-box;padding:.6rem;font:inherit;border:1px solid #b8bfcc;border-radius:6px}
button{margin-top:.75rem;padding:.6rem 1rem;font:inherit;border:0;border-radius:6px;background:#2f5bd3;color:#fff;cursor:pointer}
button:disabled{background:#9aa6c4;cursor:default}.ok{color:#16723a}.bad{color:#b3261e}code{background:#eef0f4;padding:0 .3rem;border-radius:4px}
`;

export const CONNECT_JS = `"use strict";
(() => {
  let token = "";
  const $ = (id) => document.getElementById(id);
  $("base").textContent = location.origin + "/v2/v1";
  const say = (id, text, ok) => { const el = $(id); el.textContent = text; el.className = ok ? "ok" : "bad"; };
  const explain = async (response) => {
    try { return (await response.json()).error.message; } catch { return "HTTP " + response.status; }
  };
  $("check").addEventListener("submit", async (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    $("token").value = "";
    say("result", "Checking…", true);
    // Who am I, what may I use, when does it end: GET /api/me answers for any valid token.
    const response = await fetch("/api/me", { headers: { authorization: "Bearer " + token } });
    if (!response.ok) return say("result", await explain(response), false);
    const me = await response.json();
    say("result", "Your token works: you are " + me.handle + ".", true);
    const lines = [
      "You may use: " + me.scopes.join(", ") + ".",
      "Your token ends " + new Date(me.expires_at).toLocaleString() + ".",
      "Today: " + me.tokens_today.toLocaleString() + " of " + me.limits.daily_tokens.toLocaleString() + " LLM tokens used; the day resets " + new Date(me.resets_at).toLocaleString() + ".",
      "At most " + me.limits.streams + " request(s) at a time (" + me.in_flight + " running now), " + me.limits.rps + " per second.",
    ];
    $("me").replaceChildren(...lines.map((text) => { const item = document.createElement("li"); item.textContent = text; return item; }));
    $("me").hidden = false;
    $("audio").disabled = !me.scopes.includes("audio");
  });
  $("audio").addEventListener("click", async () => {
    say("audio-result", "Asking for a ticket…", true);
    const minted = await fetch("/auth/ticket", { method: "POST", headers: { authorization: "Bearer " + token, "content-type": "application/json" }, body: JSON.stringify({ scope: "audio" }) });
    if (!minted.ok) return say("audio-result", await explain(minted), false);
    const { ticket } = await minted.json();
    const socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/audio/ws?ticket=" + encodeURIComponent(ticket));
    socket.onopen = () => { say("audio-result", "The audio stream connected.", true); socket.close(); };
    socket.onerror = () => say("audio-result", "The audio stream did not connect (is the audio service running?).", false);
  });
})();
`;

/** Headers for every gateway-owned page: nothing external, nothing cached, never framed. */
export const PAGE_HEADERS = {
  "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
  "cache-control": "no-store",
  "referrer-policy": "no-referrer",
  "x-content-type-options": "nosniff",
  "x-frame-options": "DENY",
} as const;
