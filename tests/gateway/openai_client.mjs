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
// models.retrieve (GET /v1/models/{model}) was a 404 "page not found"
const one = await client.models.retrieve('sim-small');
check(one.object === 'model' && one.id === 'sim-small:latest', 'models.retrieve', one);
try {
  await client.models.retrieve('no-such-model');
  check(false, 'models.retrieve of an unknown model fails');
} catch (err) {
  check(err instanceof OpenAI.NotFoundError && err.error && err.error.code === 'model_not_found',
    'models.retrieve of an unknown model: 404 NotFoundError', err.message);
}

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

// Tool calling, two turns, streamed and not, in OpenAI's shape: the model
// calls a tool (message.tool_calls with an id, type "function", arguments a
// JSON string, finish_reason "tool_calls"; streamed: delta.tool_calls with
// an index), the client sends the assistant message back with a
// {role: "tool", tool_call_id} result, and the model answers in text that
// quotes the result under the function's name: the gateway found the name
// from the tool_call_id (Ollama's tool_name). The simulator's rule:
// docs/ollama-sim.md, "Tool calls".
const tools = [
  { type: 'function', function: { name: 'get_time', description: 'the time in a zone',
    parameters: { type: 'object', properties: { zone: { type: 'string' } }, required: ['zone'] } } },
  { type: 'function', function: { name: 'get_weather', description: 'the weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' },
      unit: { type: 'string', enum: ['celsius', 'fahrenheit'] }, days: { type: 'integer' } },
    required: ['city', 'unit', 'days'] } } },
];
async function toolTurn(streamed, body) {
  if (!streamed) {
    const r = await client.chat.completions.create({ ...body, stream: false });
    return { message: r.choices[0].message, finish: r.choices[0].finish_reason };
  }
  const msg = { role: 'assistant', content: '', tool_calls: [] };
  let finish = null;
  for await (const ch of await client.chat.completions.create({ ...body, stream: true })) {
    const d = ch.choices[0]?.delta || {};
    msg.content += d.content || '';
    for (const t of d.tool_calls || []) {
      if (!msg.tool_calls[t.index])
        msg.tool_calls[t.index] = { id: t.id, type: t.type, function: { name: '', arguments: '' } };
      const c = msg.tool_calls[t.index];
      c.function.name += t.function?.name || '';
      c.function.arguments += t.function?.arguments || '';
    }
    finish = ch.choices[0]?.finish_reason || finish;
  }
  if (!msg.tool_calls.length)
    delete msg.tool_calls;
  return { message: msg, finish };
}
const callIds = new Set();
for (const streamed of [false, true]) {
  const how = streamed ? 'streamed' : 'not streamed';
  const convo = [{ role: 'user', content: `Ask get_weather about Oslo (${how})` }];
  const t1 = await toolTurn(streamed, { model: 'sim-small', messages: convo, tools, temperature: 0 });
  const call = t1.message.tool_calls?.[0];
  check(t1.finish === 'tool_calls' && t1.message.tool_calls.length === 1 && call.type === 'function' &&
    /^call_[0-9a-f]{8,}$/.test(call.id) && !callIds.has(call.id) && call.function.name === 'get_weather' &&
    typeof call.function.arguments === 'string' &&
    JSON.stringify(JSON.parse(call.function.arguments)) === '{"city":"sim-city","days":1,"unit":"celsius"}',
    `chat.completions with tools, ${how}: a get_weather call, finish_reason tool_calls`, t1);
  callIds.add(call.id);
  convo.push(t1.message);
  // The result names no function: the gateway finds it from the id.
  convo.push({ role: 'tool', tool_call_id: call.id, content: 'minus 3 and snowing' });
  const t2 = await toolTurn(streamed, { model: 'sim-small', messages: convo, tools, temperature: 0,
    max_tokens: 4 });
  check(!t2.message.tool_calls && t2.finish === 'length' &&
    t2.message.content.startsWith('The get_weather tool said: minus 3 and snowing. '),
    `chat.completions with tools, ${how}: the tool result (by tool_call_id) answered in text`, t2);
}
// tool_choice "none": the tools are not offered, the model answers in text.
const none = await client.chat.completions.create({ model: 'sim-small', tools, tool_choice: 'none',
  max_tokens: 3, messages: [{ role: 'user', content: 'get_time in Lima?' }] });
check(!none.choices[0].message.tool_calls && none.choices[0].finish_reason === 'length' &&
  none.choices[0].message.content.length > 0, 'tool_choice "none": a text answer', none.choices[0]);

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
// dimensions reaches Ollama (the same meaning there); it was dropped
const d8 = await client.embeddings.create({ model: 'sim-embed', input: 'hello', dimensions: 8,
  encoding_format: 'float' });
check(d8.data[0].embedding.length === 8, 'embeddings with dimensions 8', d8.data[0].embedding.length);

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

// Malformed tools, and a forced tool choice the backend cannot honour:
// 400 invalid_request_error naming the problem, nothing on the bus.
const toolMsgs = [{ role: 'user', content: 'hi' }];
for (const [body, pattern] of [
  [{ tools: { type: 'function' } }, /tools/],
  [{ tools: [{ type: 'function', function: { description: 'no name' } }] }, /function\.name/],
  [{ tools: [{ type: 'function', function: { name: 'f', parameters: 'x' } }] }, /parameters/],
  [{ tools: ['get_time'] }, /tools\[0\]/],
  [{ tools, tool_choice: 'required' }, /tool_choice/],
  [{ functions: [{ name: 'get_time', parameters: {} }] }, /use tools/],
  [{ tools, tool_choice: { type: 'function', function: { name: 'get_time' } } }, /tool_choice/],
  [{ messages: [...toolMsgs, { role: 'assistant', content: null, tool_calls: [{ id: 'c1',
    type: 'function', function: { name: 'get_time', arguments: 'not json' } }] }] }, /arguments/],
]) {
  const r = await post('/chat/completions', { model: 'sim-small', messages: toolMsgs, ...body });
  const b = await r.json().catch(() => null);
  check(r.status === 400 && b?.error?.type === 'invalid_request_error' && pattern.test(b.error.message),
    `${JSON.stringify(body).slice(0, 60)}${body.tool_choice ? ' tool_choice ' +
      JSON.stringify(body.tool_choice) : ''}: 400 invalid_request_error`, { status: r.status, b });
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
  { type: 'text', text: '' } : { type: 'text', text: w })));
const whole = await seeded(words.filter((_, i) => i % 100 !== 7).join(''));
check(parts.choices && whole.choices &&
  parts.choices[0].message.content === whole.choices[0].message.content &&
  parts.usage.prompt_tokens === 1 + 1485 && whole.usage.prompt_tokens === 1 + 1485,
  '1500 content parts (15 of them empty) joined in order', { parts, whole });

// image_url parts (base64 data URLs) reach the model as the message's
// images: each adds the simulator's 576 prompt tokens (they were dropped);
// a URL the gateway would have to fetch, or another part type, is a 400.
const png = 'data:image/png;base64,iVBORw0KGgoBAgMEBQY=';
const seen = async (content) => (await post('/chat/completions', { model: 'sim-small', seed: 3,
  max_tokens: 2, messages: [{ role: 'user', content }] }, { 'X-Agentbus-Cache': 'off' })).json();
const noImg = await seen([{ type: 'text', text: 'what is this?' }]);
const twoImg = await seen([{ type: 'text', text: 'what is this?' },
  { type: 'image_url', image_url: { url: png } }, { type: 'image_url', image_url: { url: png } }]);
check(twoImg.usage?.prompt_tokens === noImg.usage?.prompt_tokens + 2 * 576,
  'chat.completions: two image_url parts reach the model', { noImg: noImg.usage, twoImg: twoImg.usage });
for (const [part, pattern] of [
  [{ type: 'image_url', image_url: { url: 'https://example.com/cat.png' } }, /data URL/],
  [{ type: 'image_url', image_url: { url: 'data:,' } }, /data URL/],
  [{ type: 'input_audio', input_audio: { data: 'AAAA', format: 'wav' } }, /not supported/],
]) {
  const r = await post('/chat/completions', { model: 'sim-small',
    messages: [{ role: 'user', content: [{ type: 'text', text: 'x' }, part] }] });
  const b = await r.json().catch(() => null);
  check(r.status === 400 && b?.error?.type === 'invalid_request_error' && pattern.test(b.error.message),
    `a ${part.type} part ${JSON.stringify(part).slice(20, 60)}: 400`, { status: r.status, b });
}
// reasoning_effort: Ollama's think (its own OpenAI layer maps it so); the
// thinking comes back as message.reasoning / delta.reasoning (the
// simulator's sim-small thinks 9 words for "high", 3 for "low"). It was
// dropped before: no reasoning came back.
const rq = { model: 'sim-small', messages: [{ role: 'user', content: 'reason' }], max_tokens: 3,
  seed: 2 };
const r1 = await client.chat.completions.create({ ...rq, reasoning_effort: 'high' });
check(r1.choices[0].message.reasoning === 'Let me think this through step by step carefully.' &&
  r1.choices[0].message.content.length > 0, 'reasoning_effort high: message.reasoning', r1.choices[0]);
const r0 = await client.chat.completions.create({ ...rq, reasoning_effort: 'none' });
check(r0.choices[0].message.reasoning === undefined &&
  r0.choices[0].message.content === r1.choices[0].message.content,
  'reasoning_effort none: no reasoning, the same answer', r0.choices[0]);
let reasoning = '';
let rtext = '';
for await (const ch of await client.chat.completions.create({ ...rq, reasoning_effort: 'low',
  stream: true })) {
  reasoning += ch.choices[0]?.delta?.reasoning || '';
  rtext += ch.choices[0]?.delta?.content || '';
}
check(reasoning === 'Let me think' && rtext === r1.choices[0].message.content,
  'reasoning_effort low, streamed: delta.reasoning', { reasoning, rtext });

// logprobs on /v1/chat/completions: choices[0].logprobs.content holds an
// entry per completion token (token, logprob <= 0, bytes, top_logprobs N
// with the sampled token first, descending), the same streamed (each
// chunk's entries) and not; without logprobs it is null. Before: a 400.
const lpReq = { model: 'sim-small', messages, max_tokens: 5, seed: 9, logprobs: true,
  top_logprobs: 2 };
const lc = await client.chat.completions.create(lpReq);
const lpContent = lc.choices[0].logprobs?.content;
check(Array.isArray(lpContent) && lpContent.length === lc.usage.completion_tokens &&
  lpContent.every((e) => typeof e.token === 'string' && e.logprob <= 0 &&
    Buffer.from(e.bytes).toString() === e.token && e.top_logprobs.length === 2 &&
    e.top_logprobs[0].token === e.token && e.top_logprobs[0].logprob === e.logprob &&
    e.top_logprobs[1].logprob < e.logprob && Array.isArray(e.top_logprobs[1].bytes)) &&
  lpContent.map((e) => e.token).join('') === lc.choices[0].message.content,
'chat.completions, logprobs: an entry per token, 2 top_logprobs each', lc.choices[0]);
const lpStream = await client.chat.completions.create({ ...lpReq, stream: true });
let lpAll = [], lpText = '';
for await (const ch of lpStream) {
  if (!ch.choices.length)
    continue;
  lpAll = lpAll.concat(ch.choices[0].logprobs?.content || []);
  lpText += ch.choices[0].delta.content || '';
}
check(lpText === lc.choices[0].message.content &&
  JSON.stringify(lpAll) === JSON.stringify(lpContent),
'chat.completions streamed, logprobs: each chunk its entries, as whole', { lpAll, lpText });
const noLp = await client.chat.completions.create({ ...lpReq, logprobs: false,
  top_logprobs: undefined });
check(noLp.choices[0].logprobs === null && noLp.choices[0].message.content ===
  lc.choices[0].message.content, 'chat.completions without logprobs: logprobs null',
noLp.choices[0]);

// What the bus cannot honour is a 400 naming it, not silently dropped:
// n > 1 (the client would get one choice), top_logprobs without logprobs
// (as OpenAI refuses it), logprobs on /v1/completions (the legacy shape),
// logit_bias, echo, best_of; nothing reaches the simulator.
const refusedBefore = await simRequests();
for (const [path, body, pattern] of [
  ['/chat/completions', { ...rq, n: 2 }, /\bn\b/],
  ['/chat/completions', { ...rq, top_logprobs: 2 }, /top_logprobs needs logprobs/],
  ['/chat/completions', { ...rq, logprobs: true, top_logprobs: 21 }, /top_logprobs/],
  ['/chat/completions', { ...rq, logprobs: 1 }, /logprobs/],
  ['/chat/completions', { ...rq, logit_bias: { 50256: -100 } }, /logit_bias/],
  ['/chat/completions', { ...rq, reasoning_effort: 'max' }, /reasoning_effort/],
  ['/completions', { model: 'sim-small', prompt: 'x', n: 3 }, /\bn\b/],
  ['/completions', { model: 'sim-small', prompt: 'x', best_of: 2 }, /best_of/],
  ['/completions', { model: 'sim-small', prompt: 'x', logprobs: 1 }, /\/v1\/completions/],
  // logprobs 0 still asks for the sampled tokens' logprobs (OpenAI's legacy API)
  ['/completions', { model: 'sim-small', prompt: 'x', logprobs: 0 }, /logprobs 0 too/],
  ['/completions', { model: 'sim-small', prompt: 'x', top_logprobs: 2 }, /\/v1\/completions/],
  ['/completions', { model: 'sim-small', prompt: 'x', echo: true }, /echo/],
  ['/completions', { model: 'sim-small', prompt: ['x', 'y'] }, /several prompts/],
  ['/chat/completions', { ...rq, modalities: ['text', 'audio'], audio: { voice: 'alloy',
    format: 'wav' } }, /modalities/],
  ['/chat/completions', { ...rq, audio: { voice: 'alloy', format: 'wav' } }, /audio/],
]) {
  const r = await post(path, body);
  const b = await r.json().catch(() => null);
  check(r.status === 400 && b?.error?.type === 'invalid_request_error' && pattern.test(b.error.message),
    `${path} ${JSON.stringify(body).slice(-40)}: 400`, { status: r.status, b });
}
const ok1 = await post('/chat/completions', { ...rq, n: 1, logprobs: false, top_logprobs: 0,
  logit_bias: {}, user: 'agent-7' });
check(ok1.status === 200, 'n 1, logprobs false, top_logprobs 0, an empty logit_bias, user: ' +
  'accepted', ok1.status);
// On /v1/completions what asks for nothing passes: logprobs null or false, a
// top_logprobs (not a legacy field) of null or 0 (it was a 400).
for (const lp of [{ logprobs: null }, { logprobs: false }, { top_logprobs: 0 },
  { logprobs: null, top_logprobs: null }]) {
  const r = await post('/completions', { model: 'sim-small', prompt: 'x', max_tokens: 2, ...lp });
  const b = await r.json().catch(() => null);
  check(r.status === 200 && b?.choices?.[0]?.logprobs == null,
    `/completions ${JSON.stringify(lp)}: accepted, no logprobs`, { status: r.status, b });
}
check(await simRequests() === refusedBefore + 5, 'only the accepted ones reached the simulator',
  { before: refusedBefore, after: await simRequests() });
console.log('all ok');
