// The gateway's routes the simulator does not serve, with the official
// `ollama` client: /api/show, /api/ps, the older /api/embeddings, plus
// /healthz and /metrics (tests/gateway/run.sh).
//
//   OLLAMA_URL=http://127.0.0.1:P SIM_URL=http://127.0.0.1:S node gateway_extra.mjs
import net from 'node:net';
import { Ollama } from 'ollama';

const host = process.env.OLLAMA_URL;
const ollama = new Ollama({ host });

function check(cond, what, detail) {
  if (!cond) {
    console.error(`FAIL: ${what}${detail === undefined ? '' : ': ' + JSON.stringify(detail)}`);
    process.exit(1);
  }
  console.log(`ok - ${what}`);
}

const show = await ollama.show({ model: 'sim-small' });
check(show.details && show.details.family === 'llama' && show.details.quantization_level,
  'show gives the details', show.details);
try {
  await ollama.show({ model: 'no-such-model' });
  check(false, 'show of an unknown model fails');
} catch (err) {
  check(err.status_code === 404 && /not found/.test(err.error), 'show of an unknown model: 404', err.error);
}
const legacy = await ollama.embeddings({ model: 'sim-embed', prompt: 'hello' });
const now = await ollama.embed({ model: 'sim-embed', input: 'hello' });
check(legacy.embedding.length === 768 && Math.abs(legacy.embedding[3] - now.embeddings[0][3]) < 1e-6,
  'embeddings (older endpoint) gives embed\'s vector');
// Numbers as short as their value (tools/lib/tl_json.h): embeddings are
// floats, the simulator's logprobs 9-digit decimals; "%.17g" (the worker's
// and the gateway's before) printed both with 17 digits of noise.
// The most significant digits of a real in TEXT (strings left out).
const longest = (text) => Math.max(0, ...(text.replace(/"(?:[^"\\]|\\.)*"/g, '""')
  .match(/-?\d+\.\d+(e[-+]?\d+)?/gi) || [])
  .map((x) => x.replace(/^-?0*\.?0*|e.*$|\./gi, '').length));
const post = (path, body) => fetch(`${host}${path}`, { method: 'POST', body: JSON.stringify(body) });
const embText = await (await post('/api/embed', { model: 'sim-embed', input: 'hello' })).text();
check(JSON.parse(embText).embeddings[0].length === 768 && longest(embText) <= 9,
  '/api/embed: each value in at most 9 digits', { longest: longest(embText), embText: embText.slice(0, 120) });
const lpText = await (await post('/api/generate', { model: 'sim-small', prompt: 'x', stream: false,
  logprobs: true, top_logprobs: 2, options: { num_predict: 3 } })).text();
check(JSON.parse(lpText).logprobs?.length > 0 && longest(lpText) <= 9,
  '/api/generate logprobs: each value in at most 9 digits', { longest: longest(lpText), lpText: lpText.slice(0, 200) });
const lpChat = await (await post('/v1/chat/completions', { model: 'sim-small', logprobs: true,
  top_logprobs: 2, max_tokens: 3, messages: [{ role: 'user', content: 'x' }] })).text();
check(JSON.parse(lpChat).choices[0].logprobs?.content?.length > 0 && longest(lpChat) <= 9,
  '/v1/chat/completions logprobs: each value in at most 9 digits', { longest: longest(lpChat), lpChat: lpChat.slice(0, 200) });
await ollama.generate({ model: 'sim-small', prompt: 'warm up', stream: false, options: { num_predict: 1 } });
let loaded = [];
for (let i = 0; i < 40 && !loaded.includes('sim-small:latest'); i++) {
  await new Promise((r) => setTimeout(r, 100)); // the worker reports /api/ps within ~250 ms
  loaded = (await ollama.ps()).models.map((m) => m.name);
}
check(loaded.includes('sim-small:latest'), 'ps lists the loaded model', loaded);

// chat without messages and keep_alive 0: Ollama's unload (streamed: one line).
let unload = null;
for await (const p of await ollama.chat({ model: 'sim-large', messages: [], keep_alive: 0, stream: true }))
  unload = p;
check(unload && unload.done === true && unload.done_reason === 'unload' &&
  unload.message.role === 'assistant', 'unload (chat without messages, keep_alive 0)', unload);

const root = await fetch(host);
check(root.status === 200 && (await root.text()) === 'Ollama is running', 'GET / says Ollama is running');
const head = await fetch(host, { method: 'HEAD' });
check(head.status === 200, 'HEAD /');
const health = await fetch(`${host}/healthz`);
check(health.status === 200 && (await health.json()).broker_connected === true, '/healthz');
const metrics = await (await fetch(`${host}/metrics`)).text();
check(/^agentbus_gateway_requests_total\{route="\/api\/show"\} [1-9]/m.test(metrics) &&
  /^agentbus_gateway_request_duration_seconds_count [1-9]/m.test(metrics), '/metrics in Prometheus text');
const notFound = await fetch(`${host}/api/nothing`);
check(notFound.status === 404, 'unknown path: 404');
// A method the route does not take: 405 with the ones it does (RFC 9110).
for (const [method, path, allow] of [['POST', '/api/tags', 'GET, HEAD'],
  ['GET', '/api/generate', 'POST'], ['DELETE', '/v1/chat/completions', 'POST'],
  ['PUT', '/metrics', 'GET, HEAD']]) {
  const r = await fetch(`${host}${path}`, { method });
  check(r.status === 405 && r.headers.get('allow') === allow,
    `${method} ${path}: 405, Allow: ${allow}`, { status: r.status, allow: r.headers.get('allow') });
}
const big = await fetch(`${host}/api/generate`, { method: 'POST', body: 'x'.repeat(70000) });
check(big.status === 413, 'a body over --max-body-bytes: 413', big.status);
const bad = await fetch(`${host}/api/generate`, { method: 'POST', body: '{"model":' });
check(bad.status === 400 && typeof (await bad.json()).error === 'string', 'malformed JSON: 400 {"error"}');
// A client that gives up on a stream: false call (no chunk is written to
// it, so only the hang-up tells): the request ends at the simulator too.
const sim = process.env.SIM_URL;
const aborted = async () => (await (await fetch(`${sim}/sim/stats`)).json()).aborted;
const before = await aborted();
const ac = new AbortController();
setTimeout(() => ac.abort(), 300);
try {
  await fetch(`${host}/api/generate`, { method: 'POST', signal: ac.signal,
    body: JSON.stringify({ model: 'sim-small', prompt: 'wait', stream: false, options: { num_predict: 100000 } }) });
} catch (err) {
  check(err.name === 'AbortError', 'client aborts a stream: false call', err.name);
}
let after = before;
for (let i = 0; i < 100 && after <= before; i++) {
  await new Promise((r) => setTimeout(r, 50));
  after = await aborted();
}
check(after > before, 'the hang-up reaches the simulator', { before, after });

// A backend failing mid-stream: the chunks already sent, then an error line
// (as Ollama ends such a stream), which the client raises.
await fetch(`${sim}/sim/faults`, { method: 'POST',
  body: JSON.stringify({ midstream_rate: 1, midstream_after: 3 }) });
let got = 0;
let midErr = null;
try {
  for await (const p of await ollama.generate({ model: 'sim-small', prompt: 'fail midway', stream: true }))
    got += p.response ? 1 : 0;
} catch (err) {
  midErr = err;
}
await fetch(`${sim}/sim/faults`, { method: 'POST', body: JSON.stringify({ reset: true }) });
check(got === 3 && midErr && /mid-stream|backend/.test(midErr.message), 'error mid-stream: 3 chunks, then the error',
  { got, error: midErr && midErr.message });

// A deadline from the header: the broker ends the request when it passes.
const t0 = Date.now();
const late = await fetch(`${host}/api/generate`, {
  method: 'POST', headers: { 'X-Agentbus-Timeout-Ms': '300' },
  body: JSON.stringify({ model: 'sim-small', prompt: 'deadline', stream: false,
    options: { num_predict: 20000 } }),
});
const lateBody = await late.json();
check(late.status === 504 && typeof lateBody.error === 'string' && Date.now() - t0 < 5000,
  'X-Agentbus-Timeout-Ms: 504 when the deadline passes', { status: late.status, ms: Date.now() - t0, lateBody });
// An Ollama field the bus does not carry (template) is a 400 naming it (it
// was dropped: the answer ignored it); context and logprobs are carried
// (ollama_client.mjs), a wrongly typed or out-of-range one a 400 naming it.
for (const [route, body, name] of [
  ['generate', { prompt: 'x', template: '{{ .Prompt }}!' }, 'template'],
  ['generate', { prompt: 'x', context: 'abc' }, 'context'],
  ['generate', { prompt: 'x', context: [1, -2] }, 'context'],
  ['generate', { prompt: 'x', logprobs: 'yes' }, 'logprobs'],
  ['chat', { messages: [{ role: 'user', content: 'x' }], top_logprobs: 21 }, 'top_logprobs'],
]) {
  const r = await fetch(`${host}/api/${route}`, { method: 'POST',
    body: JSON.stringify({ model: 'sim-small', stream: false, ...body }) });
  const b = await r.json().catch(() => ({}));
  check(r.status === 400 && typeof b.error === 'string' && b.error.includes(name),
    `/api/${route} with ${name}: 400 naming it`, { status: r.status, b });
}

// A header value the gateway cannot read is a 400 naming it, not ignored
// (a caller asking for a deadline or no cache must not get the defaults).
for (const [name, value] of [['X-Agentbus-Timeout-Ms', 'abc'], ['X-Agentbus-Timeout-Ms', '-5'],
  ['X-Agentbus-Priority', 'urgent'], ['X-Agentbus-Cache', 'maybe'], ['X-Agentbus-Cache', 'on,often']]) {
  const r = await fetch(`${host}/api/generate`, { method: 'POST', headers: { [name]: value },
    body: JSON.stringify({ model: 'sim-small', prompt: 'headers', stream: false, options: { num_predict: 2 } }) });
  const b = await r.json();
  check(r.status === 400 && typeof b.error === 'string' && b.error.includes(name),
    `${name}: ${value} is a 400 naming the header`, { status: r.status, b });
}
const oaiBad = await fetch(`${host}/v1/chat/completions`, { method: 'POST',
  headers: { 'Content-Type': 'application/json', 'X-Agentbus-Cache': 'maybe' },
  body: JSON.stringify({ model: 'sim-small', messages: [{ role: 'user', content: 'x' }], max_tokens: 2 }) });
const oaiBadBody = await oaiBad.json();
check(oaiBad.status === 400 && oaiBadBody.error && oaiBadBody.error.message.includes('X-Agentbus-Cache'),
  'a bad header on /v1 is an OpenAI-shaped 400', oaiBadBody);
for (const [name, value] of [['X-Agentbus-Priority', 'interactive'], ['X-Agentbus-Priority', '999'],
  ['X-Agentbus-Cache', 'no-read, no-store'], ['X-Agentbus-Timeout-Ms', '60000']]) {
  const r = await fetch(`${host}/api/generate`, { method: 'POST', headers: { [name]: value },
    body: JSON.stringify({ model: 'sim-small', prompt: 'headers', stream: false, options: { num_predict: 2 } }) });
  check(r.status === 200, `${name}: ${value} is accepted`, { status: r.status });
  await r.text();
}
// More waiting calls than one libmicrohttpd daemon holds: the gateway
// spreads connections over daemons of 128 (--max-connections 1024 here:
// eight), so 600 streams wait at once, all suspended, and each hang-up is
// still seen and cancelled (docs/gateway.md, "thousands of waiting calls").
const HELD = 600;
const metric = async (name) => {
  const m = (await (await fetch(`${host}/metrics`)).text()).match(new RegExp(`^${name} (\\d+)`, 'm'));
  return m ? Number(m[1]) : -1;
};
// Each call counts once as cancelled, whether libmicrohttpd saw the close
// first or the bus thread's watch of the waiting connection (a hang-up).
const gone = async () => metric('agentbus_gateway_cancelled_total');
const gone0 = await gone();
const url = new URL(host);
const heldBody = JSON.stringify({ model: 'sim-small', prompt: 'hold', stream: true,
  options: { num_predict: 100000 } });
const socks = [];
for (let i = 0; i < HELD; i++) {
  const s = net.connect(Number(url.port), url.hostname);
  s.on('error', () => {});
  s.on('data', () => {});
  s.write(`POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(heldBody)}\r\n\r\n${heldBody}`);
  socks.push(s);
}
let inFlight = 0;
for (let i = 0; i < 400 && inFlight < HELD; i++) {
  await new Promise((r) => setTimeout(r, 50));
  inFlight = await metric('agentbus_gateway_in_flight');
}
check(inFlight >= HELD, `${HELD} streaming calls wait at once (more than one daemon's 128)`, inFlight);
for (const s of socks) s.destroy();
let ended = gone0;
for (let i = 0; i < 400 && (inFlight > 0 || ended < gone0 + HELD); i++) {
  await new Promise((r) => setTimeout(r, 50));
  inFlight = await metric('agentbus_gateway_in_flight');
  ended = await gone();
}
check(inFlight === 0 && ended >= gone0 + HELD, `their ${HELD} hang-ups all cancel`,
  { inFlight, ended, gone0 });
console.log('all ok');
