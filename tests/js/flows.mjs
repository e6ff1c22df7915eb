#!/usr/bin/env node
// Drives the REAL @fal-ai/client (1.10.1) through a proxy, for Python tests.
//
//   node tests/js/flows.mjs <flow> --proxy <URL> [--endpoint fal-ai/flux/dev] [--input '<json>']
//        [--credentials <str>] [--header name=value ...] [--request-id <id>] [--logs]
//        [--poll-interval <ms>]
//
// Prints exactly ONE line of JSON on stdout:
//   {"ok": true, "result": ..., "requestId": ..., "updates": [...], "events": [...]}
//   {"ok": false, "error": {"name", "status", "body", "message", "requestId", "timeoutType"},
//    "requestId": ..., "updates": [...], "events": [...]}
// Exit code 0 in both cases; 2 for harness misuse/bugs.
//
// Note: the client retries 429/502/503/504 (status polls also 500) with ~1 s, 2 s, 4 s ...
// back-off, so flows hitting such errors take several seconds.

// Never let a key from the environment reach the client: the proxy must inject it.
delete process.env.FAL_KEY;
delete process.env.FAL_KEY_ID;
delete process.env.FAL_KEY_SECRET;

// Keep stdout for the single result line; the client may log.
const realStdoutWrite = process.stdout.write.bind(process.stdout);
console.log = (...args) => console.error(...args);
console.info = (...args) => console.error(...args);

// A stray rejection inside the client must not kill the harness without a JSON line.
process.on("unhandledRejection", (reason) => {
  console.error("flows.mjs: unhandled rejection:", reason);
});

const { fal } = await import("@fal-ai/client");

const FLOWS = [
  "subscribe-polling",
  "subscribe-streaming",
  "queue",
  "submit",
  "status",
  "result",
  "cancel",
  "submit-cancel",
  "stream-status",
  "stream",
  "run",
  "upload",
  "run-validation",
];

function usage(msg) {
  process.stderr.write(`flows.mjs: ${msg}\nflows: ${FLOWS.join(", ")}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const [flow, ...rest] = argv;
  if (!flow || !FLOWS.includes(flow)) usage(`unknown flow ${JSON.stringify(flow)}`);
  const opts = {
    flow,
    proxy: null,
    endpoint: "fal-ai/flux/dev",
    input: null,
    credentials: undefined,
    headers: {},
    requestId: null,
    logs: false,
    pollInterval: 100,
  };
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    const next = () => {
      if (i + 1 >= rest.length) usage(`missing value for ${a}`);
      return rest[++i];
    };
    switch (a) {
      case "--proxy": opts.proxy = next(); break;
      case "--endpoint": opts.endpoint = next(); break;
      case "--input":
        try { opts.input = JSON.parse(next()); } catch (e) { usage(`bad --input JSON: ${e}`); }
        break;
      case "--credentials": opts.credentials = next(); break;
      case "--header": {
        const hv = next();
        const eq = hv.indexOf("=");
        if (eq <= 0) usage(`bad --header ${hv} (want name=value)`);
        opts.headers[hv.slice(0, eq)] = hv.slice(eq + 1);
        break;
      }
      case "--request-id": opts.requestId = next(); break;
      case "--logs": opts.logs = true; break;
      case "--poll-interval": opts.pollInterval = Number(next()); break;
      default: usage(`unknown argument ${a}`);
    }
  }
  if (!opts.proxy) usage("--proxy is required");
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const input = opts.input ?? { prompt: "a photo of a cat" };

const config = {
  proxyUrl: { url: opts.proxy, when: "always" },
};
if (opts.credentials !== undefined) config.credentials = opts.credentials;
if (Object.keys(opts.headers).length > 0) {
  config.requestMiddleware = async (req) => ({
    ...req,
    headers: { ...(req.headers || {}), ...opts.headers },
  });
}
fal.config(config);

const out = { ok: true, result: null, requestId: null, updates: [], events: [] };

function needRequestId() {
  if (!opts.requestId) usage(`flow ${opts.flow} needs --request-id`);
  return opts.requestId;
}

// onQueueUpdate in streaming mode passes the SAME (growing) logs array every time: copy it.
const snapshot = (v) => JSON.parse(JSON.stringify(v ?? null));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function pollUntilCompleted(requestId) {
  for (;;) {
    const st = await fal.queue.status(opts.endpoint, { requestId, logs: opts.logs });
    out.updates.push(st);
    if (st.status === "COMPLETED") return st;
    await sleep(opts.pollInterval);
  }
}

// FalStream quirk (1.10.1): on an HTTP error / bad event the async iterator just STOPS
// (no throw) and the internal done-promise rejects. If nobody holds done() yet, Node treats
// that as an unhandled rejection and kills the process. So take done() BEFORE iterating.
async function drain(stream) {
  const done = stream.done();
  done.catch(() => {});
  for await (const ev of stream) out.events.push(ev);
  return await done;
}

const flows = {
  async "subscribe-polling"() {
    const r = await fal.subscribe(opts.endpoint, {
      input,
      logs: opts.logs,
      pollInterval: opts.pollInterval,
      onEnqueue: (id) => { out.requestId = id; },
      onQueueUpdate: (st) => { out.updates.push(snapshot(st)); },
    });
    out.result = r.data;
    out.requestId = r.requestId || out.requestId;
  },
  async "subscribe-streaming"() {
    const r = await fal.subscribe(opts.endpoint, {
      input,
      mode: "streaming",
      logs: opts.logs,
      onEnqueue: (id) => { out.requestId = id; },
      onQueueUpdate: (st) => { out.updates.push(snapshot(st)); },
    });
    out.result = r.data;
    out.requestId = r.requestId || out.requestId;
  },
  async queue() {
    const sub = await fal.queue.submit(opts.endpoint, { input });
    out.requestId = sub.request_id;
    out.events.push(sub);
    await pollUntilCompleted(sub.request_id);
    const r = await fal.queue.result(opts.endpoint, { requestId: sub.request_id });
    out.result = r.data;
  },
  async submit() {
    const sub = await fal.queue.submit(opts.endpoint, { input });
    out.requestId = sub.request_id;
    out.result = sub;
  },
  async status() {
    out.requestId = needRequestId();
    out.result = await fal.queue.status(opts.endpoint, {
      requestId: out.requestId,
      logs: opts.logs,
    });
  },
  async result() {
    out.requestId = needRequestId();
    const r = await fal.queue.result(opts.endpoint, { requestId: out.requestId });
    out.result = r.data;
    out.requestId = r.requestId || out.requestId;
  },
  async cancel() {
    out.requestId = needRequestId();
    out.result = (await fal.queue.cancel(opts.endpoint, { requestId: out.requestId })) ?? null;
  },
  async "submit-cancel"() {
    const sub = await fal.queue.submit(opts.endpoint, { input });
    out.requestId = sub.request_id;
    const cancelled = await fal.queue.cancel(opts.endpoint, { requestId: sub.request_id });
    out.events.push({ cancel: cancelled ?? null });
    out.result = await pollUntilCompleted(sub.request_id);
  },
  async "stream-status"() {
    const sub = await fal.queue.submit(opts.endpoint, { input });
    out.requestId = sub.request_id;
    const stream = await fal.queue.streamStatus(opts.endpoint, {
      requestId: sub.request_id,
      logs: opts.logs,
    });
    out.result = await drain(stream);
  },
  async stream() {
    const stream = await fal.stream(opts.endpoint, { input });
    try {
      out.result = await drain(stream);
    } finally {
      out.requestId = stream.requestId ?? null;
    }
  },
  async run() {
    const r = await fal.run(opts.endpoint, { input });
    out.result = r.data;
    out.requestId = r.requestId || null;
  },
  async upload() {
    const blob = new Blob(["hello flux"], { type: "text/plain" });
    const url = await fal.storage.upload(blob);
    const resp = await fetch(url);
    out.result = { url, status: resp.status, text: await resp.text() };
  },
  async "run-validation"() {
    const bad = { ...input };
    delete bad.prompt;
    if (Object.keys(bad).length === 0) bad.image_size = "square";
    const r = await fal.run(opts.endpoint, { input: bad });
    out.result = r.data;
    out.requestId = r.requestId || null;
  },
};

function errorInfo(e) {
  return {
    name: e?.name ?? typeof e,
    status: e?.status ?? null,
    body: e?.body ?? null,
    message: e?.message ?? String(e),
    requestId: e?.requestId || null,
    timeoutType: e?.timeoutType ?? null,
  };
}

function finish(obj) {
  let line;
  try {
    line = JSON.stringify(obj);
  } catch (e) {
    process.stderr.write(`flows.mjs: cannot serialize output: ${e}\n`);
    process.exit(2);
  }
  realStdoutWrite(line + "\n", () => process.exit(0));
}

try {
  await flows[opts.flow]();
  finish(out);
} catch (e) {
  finish({
    ok: false,
    error: errorInfo(e),
    requestId: out.requestId,
    updates: out.updates,
    events: out.events,
  });
}
