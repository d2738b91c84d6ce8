// shoal:test — tests for an app's pages, run by `shoal test` in a real browser engine.
//
//   import { test, assert } from "shoal:test";
//   test("adds", () => assert.equal(1 + 1, 2));
//   test("reads its data", async () => { ... }, { timeout: 5000 });

const registry = [];

export function test(name, fn, options = {}) {
  if (typeof fn !== "function") throw new TypeError("test(name, fn): fn must be a function");
  registry.push({ name: String(name), fn, timeout: options.timeout ?? 10000,
                  file: globalThis.__shoalTestFile ?? "" });
}

class AssertionError extends Error {
  constructor(message, details = {}) {
    super(message);
    this.name = "AssertionError";
    Object.assign(this, details);
  }
}

function show(value) {
  try { return JSON.stringify(value); } catch { return String(value); }
}

function same(a, b) {
  if (Object.is(a, b)) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return false;
  if (a instanceof Map || a instanceof Set) return same([...a], [...b]);
  if (ArrayBuffer.isView(a)) return a.length === b.length && a.every((x, i) => Object.is(x, b[i]));
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => same(a[k], b[k]));
}

export const assert = {
  ok(value, message) {
    if (!value) throw new AssertionError(message ?? `expected a truthy value, got ${show(value)}`);
  },
  equal(actual, expected, message) {
    if (!Object.is(actual, expected)) {
      throw new AssertionError(message ?? `${show(actual)} !== ${show(expected)}`,
                               { actual: show(actual), expected: show(expected) });
    }
  },
  notEqual(actual, expected, message) {
    if (Object.is(actual, expected)) throw new AssertionError(message ?? `both are ${show(actual)}`);
  },
  deepEqual(actual, expected, message) {
    if (!same(actual, expected)) {
      throw new AssertionError(message ?? `${show(actual)} is not deeply equal to ${show(expected)}`,
                               { actual: show(actual), expected: show(expected) });
    }
  },
  match(text, pattern, message) {
    if (!pattern.test(text)) throw new AssertionError(message ?? `${show(text)} does not match ${pattern}`);
  },
  throws(fn, check, message) {
    try { fn(); } catch (error) { return checkError(error, check, message); }
    throw new AssertionError(message ?? "expected a throw");
  },
  async rejects(promiseOrFn, check, message) {
    try {
      await (typeof promiseOrFn === "function" ? promiseOrFn() : promiseOrFn);
    } catch (error) { return checkError(error, check, message); }
    throw new AssertionError(message ?? "expected a rejection");
  },
  fail(message = "failed") { throw new AssertionError(message); },
};

function checkError(error, check, message) {
  if (check === undefined) return error;
  if (typeof check === "function" && check.prototype instanceof Error) {
    if (!(error instanceof check)) throw new AssertionError(message ?? `wrong error: ${error}`);
  } else if (check instanceof RegExp) {
    if (!check.test(String(error?.message ?? error))) throw new AssertionError(message ?? `wrong error: ${error}`);
  } else if (typeof check === "object") {
    for (const [key, value] of Object.entries(check)) {
      if (!same(error?.[key], value)) {
        throw new AssertionError(message ?? `error.${key} is ${show(error?.[key])}, not ${show(value)}`);
      }
    }
  }
  return error;
}

function withTimeout(promise, ms) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new AssertionError(`timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

// Runs every registered test in order; `report` is told each result.
export async function run(report) {
  for (const entry of registry.splice(0)) {
    const started = performance.now();
    let result;
    try {
      await withTimeout(Promise.resolve().then(entry.fn), entry.timeout);
      result = { ok: true };
    } catch (error) {
      result = { ok: false, error: String(error?.message ?? error),
                 kind: error?.name ?? typeof error, stack: String(error?.stack ?? ""),
                 actual: error?.actual, expected: error?.expected };
    }
    await report({ name: entry.name, file: entry.file,
                   ms: Math.round(performance.now() - started), ...result });
  }
}
