// API keys on agentbus-gateway (--api-keys), driven by the official `ollama`
// and `openai` npm clients (tests/gateway/run.sh apikeys). The broker runs
// with --auth curve; each token maps to a bus key:
//   TOKEN_FULL    -> an agent key granted every service
//   TOKEN_LIMITED -> an agent key not granted the inference service
//   TOKEN_OWN     -> no key file: the gateway's own connection
//   TOKEN_UNTRUSTED -> a key the broker does not trust (its handshake is refused)
//
//   GW_URL=http://127.0.0.1:P TOKEN_FULL=... TOKEN_LIMITED=... TOKEN_OWN=... TOKEN_UNTRUSTED=... node apikeys.mjs
import { Ollama } from 'ollama';
import OpenAI from 'openai';

const gw = process.env.GW_URL;
const { TOKEN_FULL, TOKEN_LIMITED, TOKEN_OWN, TOKEN_UNTRUSTED } = process.env;

function check(cond, what, detail) {
  if (!cond) {
    console.error(`FAIL: ${what}${detail === undefined ? '' : ': ' + JSON.stringify(detail)}`);
    process.exit(1);
  }
  console.log(`ok - ${what}`);
}

async function rejects(p) {
  try {
    await p;
  } catch (err) {
    return err;
  }
  return null;
}

const bearer = (t) => ({ Authorization: `Bearer ${t}` });

// Without a key: 401 in Ollama's shape, with the challenge header; "/" and
// /healthz stay open (health checks carry no key).
const anon = new Ollama({ host: gw });
let err = await rejects(anon.list());
check(err && err.status_code === 401 && /API key/.test(err.error), 'ollama client without a key: 401', err && { s: err.status_code, e: err.error });
err = await rejects(anon.generate({ model: 'sim-small', prompt: 'hi', stream: false }));
check(err && err.status_code === 401, 'generate without a key: 401', err && err.status_code);
const raw = await fetch(`${gw}/api/chat`, { method: 'POST', body: '{}', headers: bearer('not-a-known-token-at-all') });
const rawBody = await raw.json();
check(raw.status === 401 && /Bearer/.test(raw.headers.get('www-authenticate') || '') &&
  /not valid/.test(rawBody.error), 'an unknown token: 401 with WWW-Authenticate', { status: raw.status, rawBody });
const root = await fetch(`${gw}/`);
check(root.status === 200 && (await root.text()) === 'Ollama is running', '"/" needs no key');
check((await fetch(`${gw}/healthz`)).status === 200, '/healthz needs no key');

// With a key granted the service: the whole API works.
const full = new Ollama({ host: gw, headers: bearer(TOKEN_FULL) });
const tags = await full.list();
check(tags.models.some((m) => m.name === 'sim-small:latest'), 'list with a key', tags.models.map((m) => m.name));
const g = await full.generate({ model: 'sim-small', prompt: 'keys', stream: false, options: { num_predict: 4 } });
check(g.done === true && g.eval_count === 4, 'generate with a key', g);
let parts = 0;
for await (const p of await full.chat({ model: 'sim-small', stream: true,
  messages: [{ role: 'user', content: 'streamed with a key' }] }))
  parts++;
check(parts > 2, 'chat streamed with a key', parts);
const own = new Ollama({ host: gw, headers: bearer(TOKEN_OWN) });
const go = await own.generate({ model: 'sim-small', prompt: 'own identity', stream: false, options: { num_predict: 3 } });
check(go.done === true && go.eval_count === 3, "a key without a key file: the gateway's own identity", go);

// The OpenAI client sends its apiKey as the bearer token.
const oa = new OpenAI({ baseURL: `${gw}/v1`, apiKey: TOKEN_FULL, maxRetries: 0 });
const c = await oa.chat.completions.create({ model: 'sim-small', max_tokens: 3,
  messages: [{ role: 'user', content: 'hello' }] });
check(c.object === 'chat.completion' && c.usage.completion_tokens === 3, 'openai client with a valid apiKey', c);
const bad = new OpenAI({ baseURL: `${gw}/v1`, apiKey: 'sk-wrong-wrong-wrong-wrong', maxRetries: 0 });
err = await rejects(bad.chat.completions.create({ model: 'sim-small', messages: [{ role: 'user', content: 'x' }] }));
check(err instanceof OpenAI.AuthenticationError && err.status === 401 && err.code === 'invalid_api_key',
  'openai client with a wrong apiKey: AuthenticationError, code invalid_api_key', err && { s: err.status, code: err.code, m: err.message });
err = await rejects(bad.models.list());
check(err instanceof OpenAI.AuthenticationError, '/v1/models with a wrong apiKey: 401', err && err.status);

// A key whose bus identity is not granted the service: the broker refuses
// (DENIED) and the clients see 403.
const lim = new OpenAI({ baseURL: `${gw}/v1`, apiKey: TOKEN_LIMITED, maxRetries: 0 });
err = await rejects(lim.chat.completions.create({ model: 'sim-small', messages: [{ role: 'user', content: 'x' }] }));
check(err instanceof OpenAI.PermissionDeniedError && err.status === 403,
  "openai client whose key's bus role lacks the service: 403", err && { s: err.status, m: err.message });
const limo = new Ollama({ host: gw, headers: bearer(TOKEN_LIMITED) });
err = await rejects(limo.generate({ model: 'sim-small', prompt: 'x', stream: false }));
check(err && err.status_code === 403, 'ollama client, the same key: 403', err && { s: err.status_code, e: err.error });

// A key the broker refuses at the handshake: 403 at once with the reason,
// not a wait for the deadline (--timeout-ms 60000 here).
const unt = new OpenAI({ baseURL: `${gw}/v1`, apiKey: TOKEN_UNTRUSTED, maxRetries: 0 });
const t0 = Date.now();
err = await rejects(unt.chat.completions.create({ model: 'sim-small', messages: [{ role: 'user', content: 'x' }] }));
check(err instanceof OpenAI.PermissionDeniedError && /refused the connection's handshake/.test(err.message) &&
  Date.now() - t0 < 30000, "a token whose key the broker does not trust: 403 with the broker's refusal",
  err && { s: err.status, m: err.message });
err = await rejects(unt.models.list());
check(err instanceof OpenAI.PermissionDeniedError, '/v1/models with that token: 403', err && err.status);

// Counted: refusals and requests per key (names, never tokens).
const metrics = await (await fetch(`${gw}/metrics`)).text();
const val = (re) => Number((metrics.match(re) || [])[1] ?? -1);
const unauth = val(/^agentbus_gateway_unauthorized_total (\d+)$/m);
const alice = val(/^agentbus_gateway_key_requests_total\{key="alice"\} (\d+)$/m);
const bob = val(/^agentbus_gateway_key_requests_total\{key="bob"\} (\d+)$/m);
check(unauth === 5 && alice === 4 && bob === 2 && !metrics.includes(TOKEN_FULL),
  '/metrics counts refusals and requests per key, without the tokens', { unauth, alice, bob });
