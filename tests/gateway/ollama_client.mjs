// The official `ollama` npm client against an Ollama-API server. The same
// script runs against ollama-sim directly and against agentbus-gateway in
// front of a broker, Ollama workers and that simulator: only OLLAMA_URL
// differs, which is what "drop-in" means (tests/gateway/run.sh).
//
//   OLLAMA_URL=http://127.0.0.1:P SIM_URL=http://127.0.0.1:S node ollama_client.mjs
//
// Only what the simulator serves too is checked here (it has no /api/show
// and no older /api/embeddings); gateway_extra.mjs checks those on the
// gateway. SIM_URL is the simulator itself, whose /sim/stats says whether an
// aborted stream reached it. Exit 0 when every check passes, 1 otherwise.
import { Ollama } from 'ollama';

const host = process.env.OLLAMA_URL;
const sim = process.env.SIM_URL;
const CONCURRENT = Number(process.env.CONCURRENT || 174);
if (!host || !sim) {
  console.error('OLLAMA_URL and SIM_URL are required');
  process.exit(2);
}
const ollama = new Ollama({ host });

function check(cond, what, detail) {
  if (!cond) {
    console.error(`FAIL: ${what}${detail === undefined ? '' : ': ' + JSON.stringify(detail)}`);
    process.exit(1);
  }
  console.log(`ok - ${what}`);
}

async function simStats() {
  const r = await fetch(`${sim}/sim/stats`);
  return r.json();
}

async function expectError(promise, status, pattern, what) {
  try {
    const r = await promise;
    if (r && typeof r[Symbol.asyncIterator] === 'function')
      for await (const _ of r); // eslint-disable-line no-unused-vars
    check(false, what, 'no error');
  } catch (err) {
    check(err.status_code === status && pattern.test(err.error || err.message), what,
      { status: err.status_code, error: err.error || err.message });
  }
}

async function listAndVersion() {
  const list = await ollama.list();
  const names = list.models.map((m) => m.name);
  check(names.includes('sim-small:latest') && names.includes('sim-embed:latest'),
    'list shows the models', names);
  check(list.models[0].details && typeof list.models[0].size === 'number', 'list entries have details and size');
  const v = await ollama.version();
  check(typeof v.version === 'string' && v.version.length > 0, 'version', v);
}

// Ollama's preload: a generate without prompt loads the model and answers
// done_reason "load" (clients use it to warm a model up).
async function preload() {
  const r = await ollama.generate({ model: 'sim-large', prompt: '', stream: false });
  check(r.done === true && r.done_reason === 'load' && r.response === '', 'preload (no prompt)', r);
}

async function generate() {
  const g = await ollama.generate({ model: 'sim-small', prompt: 'why is the sky blue?',
    stream: false, options: { seed: 1, num_predict: 12 } });
  check(g.done === true && g.response.split(' ').length >= 6 && g.eval_count === 12 &&
    g.done_reason === 'length', 'generate, stream: false', g);
  // Structured output: a JSON schema object as `format` (Ollama 0.5+); the
  // answer is JSON.
  const schema = { type: 'object', properties: { text: { type: 'string' } } };
  const f = await ollama.generate({ model: 'sim-small', prompt: 'describe a river',
    format: schema, stream: false, options: { num_predict: 6 } });
  let parsed = null;
  try { parsed = JSON.parse(f.response); } catch (e) { parsed = null; }
  check(f.done === true && parsed !== null && typeof parsed === 'object',
    'generate, format: a JSON schema object', f);
  let parts = 0;
  let text = '';
  let last = null;
  const it = await ollama.generate({ model: 'sim-small', prompt: 'tell me a story', stream: true });
  for await (const p of it) {
    parts++;
    text += p.response;
    last = p;
  }
  check(parts > 3 && last.done === true && last.done_reason === 'stop' && text.length > 10 &&
    last.eval_count > 0, 'generate, streamed chunk by chunk', { parts, last });
}

async function chat() {
  const messages = [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'hello there' }];
  const c = await ollama.chat({ model: 'sim-small', messages, stream: false,
    options: { num_predict: 5 } });
  check(c.done === true && c.message.role === 'assistant' && c.message.content.length > 0 &&
    c.eval_count === 5, 'chat, stream: false', c);
  let parts = 0;
  let last = null;
  for await (const p of await ollama.chat({ model: 'sim-small', messages, stream: true })) {
    parts++;
    last = p;
  }
  check(parts > 3 && last.done === true && last.message.role === 'assistant', 'chat, streamed',
    { parts, last });
}

async function embed() {
  const e = await ollama.embed({ model: 'sim-embed', input: ['hello', 'world'] });
  check(e.embeddings.length === 2 && e.embeddings[0].length === 768 &&
    e.embeddings[0][0] !== e.embeddings[1][0], 'embed two inputs', e.embeddings.length);
  const one = await ollama.embed({ model: 'sim-embed', input: 'hello' });
  check(Math.abs(one.embeddings[0][5] - e.embeddings[0][5]) < 1e-6, 'embed is deterministic');
  // dimensions: the vectors cut to 16 values, normalised again (it was
  // dropped on the way: 768 values came back)
  const cut = await ollama.embed({ model: 'sim-embed', input: ['hello', 'world'], dimensions: 16 });
  const norm = Math.hypot(...cut.embeddings[0]);
  check(cut.embeddings.length === 2 && cut.embeddings[0].length === 16 && Math.abs(norm - 1) < 1e-4 &&
    Math.abs(cut.embeddings[0][3] / cut.embeddings[0][5] - e.embeddings[0][3] / e.embeddings[0][5]) < 1e-3,
  'embed with dimensions 16: the first 16, normalised', { len: cut.embeddings[0].length, norm });
}

async function unknownModel() {
  await expectError(ollama.generate({ model: 'no-such-model', prompt: 'x', stream: false }),
    404, /not found/, 'unknown model: 404 (generate)');
  await expectError(ollama.chat({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }],
    stream: true }), 404, /not found/, 'unknown model: 404 (chat, streamed)');
}

// A client that stops reading mid-stream: the request must end at the
// simulator too (its slot freed), not run to its end.
async function abortMidStream() {
  const before = (await simStats()).aborted;
  const it = await ollama.generate({ model: 'sim-small', prompt: 'a very long story',
    stream: true, options: { num_predict: 100000 } });
  let n = 0;
  let aborted = false;
  try {
    for await (const p of it) { // eslint-disable-line no-unused-vars
      if (++n === 3)
        it.abort();
    }
  } catch (err) {
    aborted = err.name === 'AbortError';
  }
  check(aborted && n >= 3, 'client aborts mid-stream', { n, aborted });
  let after = before;
  for (let i = 0; i < 100 && after <= before; i++) {
    await new Promise((r) => setTimeout(r, 50));
    after = (await simStats()).aborted;
  }
  check(after > before, 'the abort reaches the simulator', { before, after });
}

// CONCURRENT clients at once, each its own Ollama instance, half streamed:
// every one completes with its whole answer.
async function concurrent() {
  const one = async (i) => {
    const client = new Ollama({ host });
    const options = { num_predict: 8, seed: i };
    if (i % 2) {
      const r = await client.generate({ model: 'sim-small', prompt: `agent ${i}`, stream: false, options });
      return r.done && r.eval_count === 8 && r.response.length > 0;
    }
    let tokens = 0;
    let done = false;
    for await (const p of await client.chat({ model: 'sim-small', stream: true, options,
      messages: [{ role: 'user', content: `agent ${i}` }] })) {
      tokens += p.done ? 0 : 1;
      done = p.done;
    }
    return done && tokens === 8;
  };
  const t0 = Date.now();
  const results = await Promise.allSettled([...Array(CONCURRENT).keys()].map(one));
  const good = results.filter((r) => r.status === 'fulfilled' && r.value).length;
  const bad = results.find((r) => r.status !== 'fulfilled' || !r.value);
  check(good === CONCURRENT, `${CONCURRENT} concurrent clients complete, nothing lost (${Date.now() - t0} ms)`,
    { good, example: bad && (bad.reason ? String(bad.reason) : bad.value) });
}

// Tool calling, two turns, streamed and not: the model calls a tool (the
// simulator's rule, docs/ollama-sim.md: one call of the tool named in the
// prompt, each required parameter a placeholder of its type), the client
// sends the call back with the tool's result (role "tool", tool_name), and
// the model answers in text quoting that result. Through the gateway this
// crosses the bus both ways (tools, tool_calls, tool_name).
const TOOLS = [
  { type: 'function', function: { name: 'get_time', description: 'the time in a zone',
    parameters: { type: 'object', properties: { zone: { type: 'string' } }, required: ['zone'] } } },
  { type: 'function', function: { name: 'get_weather', description: 'the weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' },
      unit: { type: 'string', enum: ['celsius', 'fahrenheit'] }, days: { type: 'integer' } },
    required: ['city', 'unit', 'days'] } } },
];

async function chatOnce(stream, req) {
  if (!stream)
    return ollama.chat({ ...req, stream: false });
  const msg = { role: 'assistant', content: '', tool_calls: [] };
  let last = null;
  for await (const p of await ollama.chat({ ...req, stream: true })) {
    msg.content += p.message.content;
    if (p.message.tool_calls)
      msg.tool_calls.push(...p.message.tool_calls);
    last = p;
  }
  if (!msg.tool_calls.length)
    delete msg.tool_calls;
  return { ...last, message: msg };
}

async function tools() {
  for (const stream of [false, true]) {
    const how = stream ? 'streamed' : 'stream: false';
    const messages = [{ role: 'user', content: `What is get_weather saying in Paris? (${how})` }];
    const r1 = await chatOnce(stream, { model: 'sim-small', messages, tools: TOOLS,
      options: { temperature: 0 } });
    const calls = r1.message.tool_calls || [];
    check(r1.done === true && r1.done_reason === 'stop' && r1.message.content === '' &&
      calls.length === 1 && calls[0].function.name === 'get_weather' &&
      JSON.stringify(calls[0].function.arguments) === '{"city":"sim-city","days":1,"unit":"celsius"}',
      `chat with tools, ${how}: the model calls get_weather`, r1);
    messages.push(r1.message);
    messages.push({ role: 'tool', content: '18 degrees and sunny', tool_name: 'get_weather' });
    const r2 = await chatOnce(stream, { model: 'sim-small', messages, tools: TOOLS,
      options: { temperature: 0, num_predict: 4 } });
    check(r2.done === true && !r2.message.tool_calls &&
      r2.message.content.startsWith('The get_weather tool said: 18 degrees and sunny. '),
      `chat with tools, ${how}: the tool's result sent back, the model answers with it`, r2);
  }
  // The same deterministic chat without tools, then with them: never the
  // same answer (the cache key has the tools).
  const messages = [{ role: 'user', content: 'What time is it in Lima?' }];
  const plain = await ollama.chat({ model: 'sim-small', messages, stream: false,
    options: { seed: 5, num_predict: 5 } });
  const withTools = await ollama.chat({ model: 'sim-small', messages, stream: false, tools: TOOLS,
    options: { seed: 5, num_predict: 5 } });
  check(plain.message.content.length > 0 && !plain.message.tool_calls &&
    withTools.message.tool_calls?.[0]?.function.name === 'get_time' &&
    withTools.message.tool_calls[0].function.arguments.zone === 'sim-zone',
    'the same chat without and with tools: text, then a tool call (not the cached text)',
    { plain, withTools });
  await expectError(ollama.chat({ model: 'sim-small', stream: false, messages,
    tools: [{ type: 'function', function: { description: 'no name' } }] }), 400, /tool/,
  'a tool without a name: 400');
}

// Images reach the model: each adds the simulator's 576 prompt tokens (a
// llava-style projector), so prompt_eval_count tells whether they arrived
// (through the gateway: decoded to bytes on the bus, encoded again by the
// worker; before, the worker dropped them). A bad one is a 400.
async function images() {
  const png = Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 1, 2, 3, 4, 5, 6]);
  const opts = { seed: 3, num_predict: 4 };
  const base = await ollama.generate({ model: 'sim-small', prompt: 'what is in the picture?',
    stream: false, options: opts });
  const one = await ollama.generate({ model: 'sim-small', prompt: 'what is in the picture?',
    images: [png], stream: false, options: opts });
  check(one.prompt_eval_count === base.prompt_eval_count + 576,
    'generate: an image reaches the model', { base: base.prompt_eval_count, one: one.prompt_eval_count });
  const msgs = (imgs) => [{ role: 'user', content: 'and these?', images: imgs }];
  const c0 = await ollama.chat({ model: 'sim-small', messages: msgs([]), stream: false, options: opts });
  const c2 = await ollama.chat({ model: 'sim-small', messages: msgs([png, 'aGVsbG8=']), stream: false,
    options: opts });
  check(c2.prompt_eval_count === c0.prompt_eval_count + 2 * 576,
    'chat: two images reach the model', { c0: c0.prompt_eval_count, c2: c2.prompt_eval_count });
  await expectError(ollama.generate({ model: 'sim-small', prompt: 'x', images: ['not base64!'],
    stream: false }), 400, /base64/, 'an image that is not base64: 400');
}

// Options without a typed field on the bus (mirostat, num_gpu, ...) reach
// the backend as given (they were dropped on the way); the simulator
// counts the option names it sees.
async function extraOptions() {
  const seen = async () => (await simStats()).options_seen || {};
  const before = await seen();
  const r = await ollama.generate({ model: 'sim-small', prompt: 'options', stream: false,
    options: { num_predict: 3, mirostat: 2, mirostat_tau: 4.5, num_gpu: 1 } });
  const after = await seen();
  const more = (k) => (after[k] || 0) - (before[k] || 0);
  check(r.done === true && more('mirostat') === 1 && more('mirostat_tau') === 1 &&
    more('num_gpu') === 1 && more('num_predict') === 1,
  'options without a typed field reach the backend', { before, after });
}

// think: a reasoning model's thinking comes apart from the answer, whole
// and streamed (pieces before the text, as Ollama streams them), and the
// level is honoured (the simulator thinks 3, 6 or 9 words for "low", true,
// "high"); a model without thinking refuses think with Ollama's 400.
// Through the gateway think was dropped (no thinking came back) and a
// thinking reply's thinking was dropped on the way back.
async function thinking() {
  const opts = { seed: 5, num_predict: 3 };
  const req = { model: 'sim-small', prompt: 'think first', stream: false, options: opts };
  const g = await ollama.generate({ ...req, think: true });
  check(g.thinking === 'Let me think this through step' && g.response.length > 0 &&
    g.eval_count === 9, 'generate: think true gives the thinking apart from the response', g);
  const plain = await ollama.generate(req);
  check(plain.thinking === undefined && plain.response === g.response,
    'generate without think: no thinking, the same answer', plain);
  let think = '', text = '', order = true;
  for await (const p of await ollama.generate({ ...req, stream: true, think: 'low' })) {
    if (p.thinking) order = order && text === '';
    think += p.thinking || '';
    text += p.response;
  }
  check(think === 'Let me think' && text === g.response && order,
    'generate streamed, think "low": the thinking pieces first', { think, text });
  const messages = [{ role: 'user', content: 'think hard' }];
  think = ''; text = ''; order = true;
  for await (const p of await ollama.chat({ model: 'sim-small', messages, stream: true,
    think: 'high', options: opts })) {
    if (p.message.thinking) order = order && text === '';
    think += p.message.thinking || '';
    text += p.message.content;
  }
  check(think === 'Let me think this through step by step carefully.' && text.length > 0 && order,
    'chat streamed, think "high": the thinking pieces first', { think, text });
  const c = await ollama.chat({ model: 'sim-small', messages: [...messages,
    { role: 'assistant', content: text, thinking: think }, { role: 'user', content: 'again' }],
  stream: false, think: true, options: opts });
  check(c.message.thinking === 'Let me think this through step' && c.message.content.length > 0,
    'chat: think true, a history with thinking', c.message);
  await expectError(ollama.chat({ model: 'sim-large', messages, think: true, stream: false }), 400,
    /does not support thinking/, 'think on a model without thinking: Ollama\'s 400');
}

// truncate and shift: with options.num_ctx 8 the simulator cuts a longer
// prompt to 8 tokens, or answers Ollama's 400 with truncate false; with
// shift false the context full ends the answer (done_reason "length").
// Through the gateway both were dropped: the prompt was cut where the
// client asked for an error, and the answer ran past the context.
async function contextFlags() {
  const prompt = 'one two three four five six seven eight nine ten eleven twelve';
  const base = { model: 'sim-small', prompt, stream: false, options: { num_ctx: 8, seed: 1 } };
  const cut = await ollama.generate(base);
  check(cut.prompt_eval_count === 8, 'a prompt over num_ctx is cut to it', cut.prompt_eval_count);
  await expectError(ollama.generate({ ...base, truncate: false }), 400,
    /exceeds the available context size/, 'truncate false: a prompt over num_ctx is a 400');
  const messages = [{ role: 'user', content: 'one two three' }];
  const opts = { num_ctx: 10, seed: 1 };
  const full = await ollama.chat({ model: 'sim-small', messages, stream: false, options: opts });
  const noShift = await ollama.chat({ model: 'sim-small', messages, stream: false, options: opts,
    shift: false });
  check(full.eval_count === 24 && noShift.eval_count === 10 - noShift.prompt_eval_count &&
    noShift.done_reason === 'length',
  'shift false: the answer ends when the context is full', { full: full.eval_count,
    noShift: [noShift.prompt_eval_count, noShift.eval_count, noShift.done_reason] });
}

// logprobs: each generated token's log probability, in each streamed chunk
// (its own tokens) and all of them in a whole answer, with top_logprobs N
// alternatives each (the sampled token first, logprobs <= 0, descending);
// thinking tokens have theirs too (one entry per token of eval_count); a
// top_logprobs over 20 is Ollama's 400. Through the gateway logprobs and
// top_logprobs were a 400 ("not supported through the bus").
function logprobsOk(lps, count, top) {
  if (!Array.isArray(lps) || lps.length !== count)
    return false;
  return lps.every((e) => typeof e.token === 'string' && e.logprob <= 0 &&
    Array.isArray(e.bytes) && Buffer.from(e.bytes).toString() === e.token &&
    (top === 0 ? e.top_logprobs === undefined
      : e.top_logprobs.length === top && e.top_logprobs[0].token === e.token &&
        e.top_logprobs[0].logprob === e.logprob &&
        e.top_logprobs.every((t, i) => t.logprob <= 0 && typeof t.token === 'string' &&
          (i === 0 || t.logprob < e.top_logprobs[i - 1].logprob))));
}

async function logprobs() {
  const opts = { seed: 11, num_predict: 5 };
  const req = { model: 'sim-small', prompt: 'how likely is this', stream: false, options: opts };
  const g = await ollama.generate({ ...req, logprobs: true, top_logprobs: 3 });
  check(logprobsOk(g.logprobs, g.eval_count, 3) && g.eval_count === 5 &&
    g.logprobs.map((e) => e.token).join('') === g.response,
  'generate: a logprobs entry per token, 3 top_logprobs each', g);
  const plain = await ollama.generate(req);
  check(plain.logprobs === undefined && plain.response === g.response,
    'generate without logprobs: none, the same answer', plain);
  const only = await ollama.generate({ ...req, logprobs: true });
  check(logprobsOk(only.logprobs, 5, 0), 'generate: logprobs without top_logprobs', only.logprobs);
  let all = [], text = '', last = null, each = true;
  for await (const p of await ollama.generate({ ...req, stream: true, logprobs: true,
    top_logprobs: 3 })) {
    if (!p.done)
      each = each && (p.logprobs || []).map((e) => e.token).join('') === p.response &&
        (p.logprobs || []).length === 1;
    all = all.concat(p.logprobs || []);
    text += p.response;
    last = p;
  }
  check(each && text === g.response && JSON.stringify(all) === JSON.stringify(g.logprobs) &&
    last.eval_count === all.length, 'generate streamed: each chunk its token\'s entry, as whole',
  { all, text });
  const messages = [{ role: 'user', content: 'how sure are you' }];
  const c = await ollama.chat({ model: 'sim-small', messages, stream: false, think: 'low',
    logprobs: true, top_logprobs: 20, options: opts });
  check(logprobsOk(c.logprobs, c.eval_count, 20) && c.eval_count === 8 &&
    c.logprobs.map((e) => e.token).join('') === c.message.thinking + c.message.content,
  'chat: entries for the thinking and the answer, 20 top_logprobs each', c);
  all = []; text = ''; each = true;
  for await (const p of await ollama.chat({ model: 'sim-small', messages, stream: true,
    logprobs: true, top_logprobs: 1, options: opts })) {
    if (!p.done)
      each = each && (p.logprobs || []).length === 1 && p.logprobs[0].token === p.message.content;
    all = all.concat(p.logprobs || []);
    text += p.message.content;
    last = p;
  }
  check(each && logprobsOk(all, last.eval_count, 1) && all.map((e) => e.token).join('') === text,
    'chat streamed: each chunk its token\'s entry', all);
  await expectError(ollama.generate({ ...req, logprobs: true, top_logprobs: 21 }), 400,
    /top_logprobs must be between 0 and 20/, 'top_logprobs 21: Ollama\'s 400');
}

// context (/api/generate): a non-raw answer's final object carries the
// token ids of its prompt and answer; sent back with the next prompt they
// count as prompt (the simulator's ids: one per word) and start the next
// context. Through the gateway context was a 400 and answers had none.
async function contextIds() {
  const opts = { seed: 3, num_predict: 4 };
  const first = await ollama.generate({ model: 'sim-small', prompt: 'remember the word kiwi',
    stream: false, options: opts });
  check(Array.isArray(first.context) && first.context.length === first.prompt_eval_count +
    first.eval_count && first.context.every(Number.isInteger),
  'generate: the answer\'s context, prompt and answer tokens', first);
  let last = null, seenCtx = 0;
  for await (const p of await ollama.generate({ model: 'sim-small', prompt: 'which word',
    context: first.context, stream: true, options: opts })) {
    if (p.context) seenCtx++;
    last = p;
  }
  const n = first.context.length;
  check(seenCtx === 1 && last.done && last.prompt_eval_count === n + 2 &&
    JSON.stringify(last.context.slice(0, n)) === JSON.stringify(first.context) &&
    last.context.length === last.prompt_eval_count + last.eval_count,
  'generate streamed with an earlier context: counted as prompt, carried on', last);
  const raw = await ollama.generate({ model: 'sim-small', prompt: 'raw text', raw: true,
    stream: false, options: opts });
  check(raw.context === undefined, 'a raw generate has no context', raw);
  // Ollama (since 0.1.9) refuses a raw prompt with a context or a system
  // prompt: nothing is put around it. The simulator answered both.
  await expectError(ollama.generate({ model: 'sim-small', prompt: 'x', raw: true,
    context: first.context, stream: false }), 400,
  /raw mode does not support template, system, or context/, 'raw with a context: Ollama\'s 400');
  await expectError(ollama.generate({ model: 'sim-small', prompt: 'x', raw: true, system: 's',
    stream: false }), 400, /raw mode does not support/, 'raw with a system prompt: Ollama\'s 400');
  await expectError(ollama.generate({ model: 'sim-small', prompt: 'x', context: ['a'],
    stream: false }), 400, /invalid context/, 'context of non-integers: a 400');
}

await listAndVersion();
await preload();
await images();
await extraOptions();
await thinking();
await contextFlags();
await logprobs();
await contextIds();
await generate();
await chat();
await tools();
await embed();
await unknownModel();
await abortMidStream();
await concurrent();
console.log('all ok');
