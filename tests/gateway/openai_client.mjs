// The official `openai` npm client against agentbus-gateway's /v1 routes
// (tests/gateway/run.sh): chat and completions, streamed (server-sent
// events) and not, usage figures, embeddings, models, OpenAI-shaped errors.
//
//   OPENAI_BASE_URL=http://127.0.0.1:P/v1 SIM_URL=http://127.0.0.1:S node openai_client.mjs
import OpenAI from 'openai';

const baseURL = process.env.OPENAI_BASE_URL;
const client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0 });

function check(cond, what, detail) {
  if (!cond) {
    console.error(`FAIL: ${what}${detail === undefined ? '' : ': ' + JSON.stringify(detail)}`);
    process.exit(1);
  }
  console.log(`ok - ${what}`);
}

const models = await client.models.list();
const ids = models.data.map((m) => m.id);
check(ids.includes('sim-small:latest') && models.data[0].object === 'model', 'models.list', ids);

const messages = [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'hello' }];
const c = await client.chat.completions.create({ model: 'sim-small', messages, max_tokens: 6, seed: 4 });
check(c.object === 'chat.completion' && c.choices[0].message.role === 'assistant' &&
  c.choices[0].message.content.length > 0 && c.choices[0].finish_reason === 'length' &&
  c.usage.completion_tokens === 6 && c.usage.total_tokens === c.usage.prompt_tokens + 6,
  'chat.completions, not streamed, with usage', c);

// JSON mode and structured outputs: both answers are JSON objects.
for (const response_format of [{ type: 'json_object' },
  { type: 'json_schema', json_schema: { name: 'reply', schema: { type: 'object',
    properties: { text: { type: 'string' } } } } }]) {
  const j = await client.chat.completions.create({ model: 'sim-small', messages, max_tokens: 6,
    response_format });
  let parsed = null;
  try { parsed = JSON.parse(j.choices[0].message.content); } catch (err) { parsed = null; }
  check(parsed !== null && typeof parsed === 'object',
    `chat.completions, response_format ${response_format.type}`, j.choices[0].message);
}

const stream = await client.chat.completions.create({ model: 'sim-small', messages, stream: true,
  stream_options: { include_usage: true } });
let text = '';
let chunks = 0;
let finish = null;
let usage = null;
for await (const ch of stream) {
  chunks++;
  if (ch.usage)
    usage = ch.usage;
  if (ch.choices.length) {
    text += ch.choices[0].delta.content || '';
    finish = ch.choices[0].finish_reason || finish;
  }
}
check(chunks > 3 && text.length > 10 && finish === 'stop' && usage && usage.completion_tokens > 0,
  'chat.completions streamed as server-sent events, usage at the end', { chunks, finish, usage });

const cp = await client.completions.create({ model: 'sim-small', prompt: 'once upon', max_tokens: 4 });
check(cp.object === 'text_completion' && cp.choices[0].text.length > 0 && cp.usage.completion_tokens === 4,
  'completions, not streamed', cp);
let ctext = '';
for await (const ch of await client.completions.create({ model: 'sim-small', prompt: 'once upon',
  max_tokens: 5, stream: true }))
  ctext += ch.choices[0] ? ch.choices[0].text : '';
check(ctext.length > 0, 'completions, streamed', ctext);

// The client asks for base64 by default and decodes it; ask for floats too.
const e = await client.embeddings.create({ model: 'sim-embed', input: ['hello', 'world'] });
const f = await client.embeddings.create({ model: 'sim-embed', input: 'hello', encoding_format: 'float' });
check(e.data.length === 2 && e.data[0].embedding.length === 768 &&
  Math.abs(e.data[0].embedding[7] - f.data[0].embedding[7]) < 1e-6, 'embeddings (base64 and float)');

try {
  await client.chat.completions.create({ model: 'no-such-model', messages });
  check(false, 'unknown model fails');
} catch (err) {
  check(err instanceof OpenAI.NotFoundError && /not found/.test(err.message) &&
    err.error && err.error.type === 'invalid_request_error', 'unknown model: 404 NotFoundError', err.message);
}
try {
  await client.chat.completions.create({ model: 'no-such-model', messages, stream: true });
  check(false, 'unknown model fails (stream)');
} catch (err) {
  check(err.status === 404, 'unknown model, streamed: 404', err.status);
}
// A body without usable messages or prompt is a 400 in OpenAI's shape:
// OpenAI has no preload, and nothing may reach the bus (Ollama's route
// would turn an empty chat into a model LOAD).
const sim = process.env.SIM_URL;
const simRequests = async () => (await (await fetch(`${sim}/sim/stats`)).json()).requests;
const post = (path, body, headers = {}) => fetch(`${baseURL}${path}`, { method: 'POST',
  headers: { 'Content-Type': 'application/json', ...headers }, body: JSON.stringify(body) });
const simBefore = await simRequests();
for (const [path, body] of [
  ['/chat/completions', { model: 'sim-small', messages: 'hello' }],
  ['/chat/completions', { model: 'sim-small', messages: {} }],
  ['/chat/completions', { model: 'sim-small', messages: [] }],
  ['/chat/completions', { model: 'sim-small', messages: null }],
  ['/chat/completions', { model: 'sim-small' }],
  ['/chat/completions', { model: 'sim-small', messages: 'hello', stream: true }],
  ['/completions', { model: 'sim-large' }],
  ['/completions', { model: 'sim-large', prompt: [] }],
  ['/completions', { model: 'sim-large', prompt: '' }],
  ['/completions', { model: 'sim-large', prompt: {} }],
  ['/completions', { model: 'sim-large', prompt: [''] }],
]) {
  const r = await post(path, body);
  const b = await r.json().catch(() => null);
  check(r.status === 400 && b && b.error && typeof b.error.message === 'string' &&
    /messages|prompt/.test(b.error.message) && b.error.type === 'invalid_request_error',
    `${path} ${JSON.stringify(body)}: 400 invalid_request_error`, { status: r.status, b });
}
check(await simRequests() === simBefore, 'none of them reached the simulator',
  { before: simBefore, after: await simRequests() });

// Content in many text parts is joined in order: the simulator's answer
// (seeded by the text) and its word count are those of the joined string.
const words = Array.from({ length: 1500 }, (_, i) => `w${i} `);
const seeded = async (content) => {
  const r = await post('/chat/completions', { model: 'sim-small', seed: 11, max_tokens: 8,
    messages: [{ role: 'user', content }] }, { 'X-Agentbus-Cache': 'off' });
  return r.status === 200 ? await r.json() : { status: r.status, body: await r.text() };
};
const parts = await seeded(words.map((w, i) => (i % 100 === 7 ?
  { type: 'image_url', image_url: { url: 'data:,' } } : { type: 'text', text: w })));
const whole = await seeded(words.filter((_, i) => i % 100 !== 7).join(''));
check(parts.choices && whole.choices &&
  parts.choices[0].message.content === whole.choices[0].message.content &&
  parts.usage.prompt_tokens === 1 + 1485 && whole.usage.prompt_tokens === 1 + 1485,
  '1500 content parts (15 of them not text) joined in order', { parts, whole });
console.log('all ok');
