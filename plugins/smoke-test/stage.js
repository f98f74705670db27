// `smoke-test` stage: post-deploy HTTP checks through the host's `http`
// import (the host enforces the stage's `grants.http` allowlist).
//
// Built with componentize-js against wit/stage.wit (world `stage`). WIT
// records arrive as objects with camelCase fields, enums as their kebab-case
// names, `list<tuple<..>>` as arrays of pairs; a thrown `{ tag, val }` becomes
// the `stage-error` of `run`, and a failed import call throws an error whose
// `payload` is the `cap-error`.
import { write } from 'ci:stage/log@0.1.0';
import { send } from 'ci:stage/http@0.1.0';

const VERSION = '0.1.0';

// `with` keys, as `describe()` declares them and the parser accepts them.
const KEYS = [
  ['checks', 'List of checks: { name, url, method, expect-status, body-contains, body-matches, max-latency, headers }', true, undefined],
  ['retries', 'Extra rounds for the checks that failed (0-10)', false, '3'],
  ['retry-delay', 'Wait between rounds, e.g. "1s" (at most 5m)', false, '"1s"'],
  ['timeout', 'Per-request timeout, e.g. "10s" (at most 5m; the host caps it)', false, '"10s"'],
];
const CHECK_KEYS = ['name', 'url', 'method', 'expect-status', 'body-contains', 'body-matches', 'max-latency', 'headers'];
const MAX_RETRIES = 10;
const MAX_WAIT_MS = 5 * 60 * 1000;
// Short enough for a summary line; the full body is never echoed.
const SNIPPET = 80;

export function describe() {
  return {
    name: 'smoke-test',
    version: VERSION,
    description: 'HTTP smoke checks (status, body, latency) with retries, e.g. after a deploy',
    config: KEYS.map(([name, description, required, defaultValue]) => ({
      name,
      description,
      required,
      defaultValue,
    })),
    capabilities: ['http'],
  };
}

// Async so that `await sleep()` runs StarlingMonkey's event loop, which
// waits on a wasi:clocks monotonic-clock pollable (no busy loop).
export async function run(ctx) {
  try {
    const cfg = parseConfig(ctx.config, ctx.needs);
    return await runChecks(cfg);
  } catch (e) {
    if (e instanceof ConfigError) throw { tag: 'config', val: e.message };
    throw { tag: 'internal', val: `smoke-test: ${e && e.stack ? e.stack : e}` };
  }
}

async function runChecks(cfg) {
  const results = new Map();
  let pending = cfg.checks;
  for (let round = 0; pending.length > 0; round++) {
    if (round > 0) {
      write('info', `retrying ${pending.map((c) => c.name).join(', ')} in ${fmtMs(cfg.retryDelayMs)} (round ${round + 1} of ${cfg.retries + 1})`);
      await sleep(cfg.retryDelayMs);
    }
    for (const check of pending) {
      const r = probe(check, cfg.timeoutMs);
      r.attempts = round + 1;
      results.set(check.name, r);
      write(r.ok ? 'info' : 'warn', `${check.name}: ${r.ok ? 'ok' : r.reason} (${check.method} ${check.url}, ${fmtMs(r.latencyMs)})`);
    }
    if (round >= cfg.retries) break;
    // A denial or malformed request will not change by waiting.
    pending = pending.filter((c) => !results.get(c.name).ok && results.get(c.name).retry);
  }
  return report(cfg.checks, results);
}

// One request and its verdict. Latency is measured around the host call.
function probe(check, timeoutMs) {
  const started = performance.now();
  let resp;
  try {
    resp = send({
      method: check.method,
      url: check.url,
      headers: check.headers,
      body: undefined,
      timeoutMs,
    });
  } catch (e) {
    const latencyMs = performance.now() - started;
    const cap = e && e.payload;
    if (!cap || !cap.tag) throw e; // not a cap-error: a bug, reported as internal
    const retry = cap.tag === 'failed' || cap.tag === 'limit' || (cap.tag === 'remote' && cap.val.transient);
    return { ok: false, reason: capMessage(cap), retry, latencyMs };
  }
  const latencyMs = performance.now() - started;
  const base = { latencyMs, status: resp.status, retry: true };
  if (!check.expectStatus.includes(resp.status)) {
    return { ...base, ok: false, reason: `status ${resp.status}, expected ${check.expectStatus.join(' or ')}` };
  }
  if (check.bodyContains !== undefined || check.bodyMatches !== undefined) {
    const body = new TextDecoder().decode(resp.body);
    if (check.bodyContains !== undefined && !body.includes(check.bodyContains)) {
      return { ...base, ok: false, reason: `body does not contain ${JSON.stringify(check.bodyContains)} (got ${snippet(body)})` };
    }
    if (check.bodyMatches !== undefined && !check.bodyMatches.test(body)) {
      return { ...base, ok: false, reason: `body does not match /${check.bodyMatches.source}/ (got ${snippet(body)})` };
    }
  }
  if (check.maxLatencyMs !== undefined && latencyMs > check.maxLatencyMs) {
    return { ...base, ok: false, reason: `latency ${fmtMs(latencyMs)}, max ${fmtMs(check.maxLatencyMs)}` };
  }
  return { ...base, ok: true };
}

function report(checks, results) {
  const failed = checks.filter((c) => !results.get(c.name).ok);
  const outputs = [
    ['passed', String(checks.length - failed.length)],
    ['failed', String(failed.length)],
  ];
  for (const c of checks) {
    const r = results.get(c.name);
    outputs.push([`latency-ms.${c.name}`, String(Math.round(r.latencyMs))]);
    if (r.status !== undefined) outputs.push([`status.${c.name}`, String(r.status)]);
  }
  const after = (r) => (r.attempts > 1 ? ` (after ${r.attempts} attempts)` : '');
  if (failed.length === 0) {
    const list = checks.map((c) => `${c.name} ${fmtMs(results.get(c.name).latencyMs)}${after(results.get(c.name))}`);
    const noun = checks.length === 1 ? 'check' : 'checks';
    return { status: 'passed', summary: `${checks.length} ${noun} passed: ${list.join(', ')}`, outputs, annotations: [] };
  }
  const reasons = failed.map((c) => `${c.name}: ${results.get(c.name).reason}${after(results.get(c.name))}`);
  return {
    status: 'failed',
    summary: reasons.join('; '),
    outputs,
    annotations: failed.map((c) => ({
      level: 'error',
      title: `smoke check ${c.name} failed`,
      message: `${c.method} ${c.url}: ${results.get(c.name).reason}`,
      file: undefined,
      line: undefined,
    })),
  };
}

// ---- configuration ---------------------------------------------------------

class ConfigError extends Error {}

function fail(path, msg) {
  throw new ConfigError(`${path}: ${msg}`);
}

function parseConfig(text, needs) {
  let w;
  try {
    w = text && text.trim() ? JSON.parse(text) : {};
  } catch (e) {
    fail('with', `not valid JSON: ${e.message}`);
  }
  if (w === null) w = {};
  if (typeof w !== 'object' || Array.isArray(w)) fail('with', 'expected a table');
  unknownKeys(w, KEYS.map((k) => k[0]), 'with');

  if (w.checks === undefined) fail('with.checks', 'required key is missing');
  if (!Array.isArray(w.checks) || w.checks.length === 0) fail('with.checks', 'expected a non-empty list of checks');
  const checks = w.checks.map((c, i) => parseCheck(c, `with.checks[${i}]`, needs));
  const seen = new Set();
  checks.forEach((c, i) => {
    if (seen.has(c.name)) fail(`with.checks[${i}].name`, `duplicate check name ${JSON.stringify(c.name)}`);
    seen.add(c.name);
  });

  const retries = w.retries === undefined ? 3 : w.retries;
  if (!Number.isInteger(retries) || retries < 0 || retries > MAX_RETRIES) {
    fail('with.retries', `expected an integer from 0 to ${MAX_RETRIES}, got ${JSON.stringify(w.retries)}`);
  }
  return {
    checks,
    retries,
    retryDelayMs: duration(w['retry-delay'] ?? '1s', 'with.retry-delay', MAX_WAIT_MS),
    timeoutMs: duration(w.timeout ?? '10s', 'with.timeout', MAX_WAIT_MS),
  };
}

function parseCheck(c, path, needs) {
  if (c === null || typeof c !== 'object' || Array.isArray(c)) fail(path, 'expected a table { name, url, ... }');
  unknownKeys(c, CHECK_KEYS, path);
  const str = (key, required) => {
    const v = c[key];
    if (v === undefined) {
      if (required) fail(`${path}.${key}`, 'required key is missing');
      return undefined;
    }
    if (typeof v !== 'string' || v === '') fail(`${path}.${key}`, `expected a non-empty string, got ${JSON.stringify(v)}`);
    return v;
  };

  const name = str('name', true);
  // Names become output keys (`latency-ms.NAME`): keep them plain.
  if (!/^[A-Za-z0-9][A-Za-z0-9_-]*$/.test(name)) fail(`${path}.name`, `${JSON.stringify(name)}: use letters, digits, "-" and "_"`);
  const at = `${path}.url`;
  const url = substitute(str('url', true), at, needs);
  // A URL that is all `${secret:NAME}` is expanded (and checked) by the host.
  if (!/^(https?:\/\/|\$\{secret:)\S+$/.test(url)) fail(at, `${JSON.stringify(url)} is not an http:// or https:// URL`);

  const method = (str('method', false) ?? 'GET').toUpperCase();
  if (!/^[A-Z]+$/.test(method)) fail(`${path}.method`, `${JSON.stringify(c.method)} is not an HTTP method`);

  let expect = c['expect-status'] ?? 200;
  if (!Array.isArray(expect)) expect = [expect];
  if (expect.length === 0 || !expect.every((s) => Number.isInteger(s) && s >= 100 && s <= 599)) {
    fail(`${path}.expect-status`, `expected a status code (100-599) or a list of them, got ${JSON.stringify(c['expect-status'])}`);
  }

  const bodyContains = str('body-contains', false);
  let bodyMatches;
  const re = str('body-matches', false);
  if (re !== undefined) {
    try {
      bodyMatches = new RegExp(re);
    } catch (e) {
      fail(`${path}.body-matches`, `not a valid regular expression: ${e.message}`);
    }
  }

  const maxLatency = c['max-latency'];
  const maxLatencyMs = maxLatency === undefined ? undefined : duration(maxLatency, `${path}.max-latency`, MAX_WAIT_MS);

  const headers = [];
  if (c.headers !== undefined) {
    if (c.headers === null || typeof c.headers !== 'object' || Array.isArray(c.headers)) {
      fail(`${path}.headers`, 'expected a table of header names to values');
    }
    for (const [k, v] of Object.entries(c.headers)) {
      if (typeof v !== 'string') fail(`${path}.headers.${k}`, `expected a string, got ${JSON.stringify(v)}`);
      // Values may hold `${secret:NAME}`: the host expands those, not us.
      headers.push([k, substitute(v, `${path}.headers.${k}`, needs)]);
    }
  }
  return { name, url, method, expectStatus: expect, bodyContains, bodyMatches, maxLatencyMs, headers };
}

function unknownKeys(obj, known, path) {
  for (const k of Object.keys(obj)) {
    if (!known.includes(k)) fail(`${path}.${k}`, `unknown key (expected one of: ${known.join(', ')})`);
  }
}

// `${needs.STAGE.KEY}` → the output KEY of stage STAGE (listed in `needs`).
// `${secret:NAME}` and any other `${...}` are left for the host.
function substitute(text, path, needs) {
  return text.replace(/\$\{needs\.([^.}]+)\.([^}]+)\}/g, (ref, stage, key) => {
    const up = needs.find((n) => n.stage === stage);
    if (!up) {
      const listed = needs.map((n) => n.stage);
      fail(path, `${ref}: stage "${stage}" is not in this stage's needs (${listed.length ? listed.join(', ') : 'none'})`);
    }
    const hit = up.outputs.find(([k]) => k === key);
    if (!hit) {
      const keys = up.outputs.map(([k]) => k);
      fail(path, `${ref}: stage "${stage}" (${up.status}) has no output "${key}" (it has: ${keys.length ? keys.join(', ') : 'none'})`);
    }
    return hit[1];
  });
}

// Same words as the pipeline file: `500ms`, `30s`, `5m`, `1h30m`.
function duration(v, path, maxMs) {
  if (typeof v !== 'string') fail(path, `expected a duration string such as "500ms" or "1s", got ${JSON.stringify(v)}`);
  const units = { ms: 1, s: 1000, m: 60000, h: 3600000 };
  const t = v.trim();
  if (!/^(\d+(ms|s|m|h))+$/.test(t)) fail(path, `${JSON.stringify(v)} is not a duration (e.g. 500ms, 30s, 5m, 1h30m)`);
  let ms = 0;
  for (const [, n, u] of t.matchAll(/(\d+)(ms|s|m|h)/g)) ms += Number(n) * units[u];
  if (ms > maxMs) fail(path, `${JSON.stringify(v)} is longer than ${fmtMs(maxMs)}`);
  return ms;
}

// ---- helpers ---------------------------------------------------------------

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function fmtMs(ms) {
  if (ms >= 60000 && ms % 60000 === 0) return `${ms / 60000}m`;
  if (ms >= 1000 && ms % 1000 === 0) return `${ms / 1000}s`;
  return `${Math.round(ms)} ms`;
}

function snippet(body) {
  const s = body.length > SNIPPET ? `${body.slice(0, SNIPPET)}…` : body;
  return JSON.stringify(s);
}

// The same wording as the Rust SDK's `CapError::message`.
function capMessage(e) {
  switch (e.tag) {
    case 'denied':
      return `denied: stage ${JSON.stringify(e.val.stage)} has no ${JSON.stringify(e.val.capability)} grant for ${JSON.stringify(e.val.target)}`;
    case 'invalid':
      return `invalid request: ${e.val}`;
    case 'limit':
      return `host limit: ${e.val}`;
    case 'failed':
      return `request failed: ${e.val}`;
    case 'unsupported':
      return `unsupported: ${e.val}`;
    case 'remote':
      return `${e.val.service} error ${e.val.code}: ${e.val.message}`;
    default:
      return JSON.stringify(e);
  }
}
