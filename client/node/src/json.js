'use strict';
/**
 * Exact JSON for `metadata_json` / `kwargs_json`: integers keep every digit.
 *
 * JSON.parse turns 1152921504606846977 into 1152921504606846976, and Node 20's
 * revivers cannot see a number's source text, so `parseJson` is a small parser
 * of its own: safe integers become numbers, larger integers BigInt, everything
 * else exactly as JSON.parse makes it. `stringifyJson` writes BigInt as its
 * digits and refuses what JSON has no form for (NaN, Infinity, cycles) instead
 * of writing null as JSON.stringify does.
 */

const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;

/**
 * JSON text -> value; integers beyond Number.MAX_SAFE_INTEGER become BigInt.
 * @param {string} text
 * @returns {unknown}
 */
function parseJson(text) {
  if (typeof text !== 'string') throw new TypeError(`JSON text must be a string, got ${typeof text}`);
  let i = 0;
  /** @param {string} what @returns {never} */
  const fail = (what) => {
    throw new SyntaxError(`${what} at position ${i} of JSON text`);
  };
  const skipSpace = () => {
    for (;;) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) i++;
      else return;
    }
  };
  const string = () => {
    const start = i++;
    for (;;) {
      const c = text.charCodeAt(i);
      if (c === 0x22) break;
      if (Number.isNaN(c)) fail('unterminated string');
      if (c < 0x20) fail('control character in string');
      i += c === 0x5c ? 2 : 1;
    }
    i++;
    // The escapes are JSON.parse's own job (it also rejects malformed ones).
    return /** @type {string} */ (JSON.parse(text.slice(start, i)));
  };
  const number = () => {
    NUMBER.lastIndex = i;
    const match = NUMBER.exec(text);
    if (!match) fail(i < text.length ? `unexpected character ${JSON.stringify(text[i])}` : 'unexpected end');
    i = NUMBER.lastIndex;
    const value = Number(match[0]);
    if (match[1] === undefined && match[2] === undefined && !Number.isSafeInteger(value)) return BigInt(match[0]);
    return value;
  };
  /** @returns {unknown} */
  const value = () => {
    skipSpace();
    const c = text[i];
    if (c === '{') {
      i++;
      /** @type {Record<string, unknown>} */
      const object = {};
      skipSpace();
      if (text[i] === '}') {
        i++;
        return object;
      }
      for (;;) {
        skipSpace();
        if (text[i] !== '"') fail('expected a string key');
        const key = string();
        skipSpace();
        if (text[i] !== ':') fail("expected ':'");
        i++;
        // As JSON.parse does: "__proto__" is an own property, never the prototype.
        Object.defineProperty(object, key, { value: value(), writable: true, enumerable: true, configurable: true });
        skipSpace();
        if (text[i] === ',') i++;
        else if (text[i] === '}') {
          i++;
          return object;
        } else fail("expected ',' or '}'");
      }
    }
    if (c === '[') {
      i++;
      /** @type {unknown[]} */
      const array = [];
      skipSpace();
      if (text[i] === ']') {
        i++;
        return array;
      }
      for (;;) {
        array.push(value());
        skipSpace();
        if (text[i] === ',') i++;
        else if (text[i] === ']') {
          i++;
          return array;
        } else fail("expected ',' or ']'");
      }
    }
    if (c === '"') return string();
    for (const [word, result] of /** @type {const} */ ([['true', true], ['false', false], ['null', null]])) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return result;
      }
    }
    return number();
  };
  const result = value();
  skipSpace();
  if (i < text.length) fail('unexpected text after the JSON value');
  return result;
}

/**
 * Value -> compact JSON text; BigInt as its digits. Follows JSON.stringify
 * (toJSON, undefined/functions skipped in objects and null in arrays) except
 * that NaN, Infinity and cycles throw instead of silently becoming null.
 * @param {unknown} value
 * @returns {string}
 */
function stringifyJson(value) {
  /** @type {Set<object>} */
  const open = new Set();
  /** @param {unknown} item @param {string} key @returns {string | undefined} */
  const write = (item, key) => {
    if (item !== null && typeof item === 'object' && typeof (/** @type {any} */ (item).toJSON) === 'function') {
      item = /** @type {any} */ (item).toJSON(key);
    }
    // Boxed primitives (new Number(1)) are written as their value, as JSON.stringify does.
    if (item instanceof Number || item instanceof String || item instanceof Boolean) item = item.valueOf();
    switch (typeof item) {
      case 'string':
      case 'boolean':
        return JSON.stringify(item);
      case 'bigint':
        return item.toString();
      case 'number':
        if (!Number.isFinite(item)) throw new RangeError(`${item} has no JSON form (at ${JSON.stringify(key)})`);
        return JSON.stringify(item);
      case 'undefined':
      case 'function':
      case 'symbol':
        return undefined;
      default:
        break;
    }
    if (item === null) return 'null';
    const object = /** @type {object} */ (item);
    if (open.has(object)) throw new TypeError('cannot write a cyclic structure as JSON');
    open.add(object);
    let text;
    if (Array.isArray(object)) {
      text = `[${object.map((element, index) => write(element, String(index)) ?? 'null').join(',')}]`;
    } else {
      const parts = [];
      for (const [name, member] of Object.entries(object)) {
        const written = write(member, name);
        if (written !== undefined) parts.push(`${JSON.stringify(name)}:${written}`);
      }
      text = `{${parts.join(',')}}`;
    }
    open.delete(object);
    return text;
  };
  const text = write(value, '');
  if (text === undefined) throw new TypeError(`${typeof value} has no JSON form`);
  return text;
}

module.exports = { parseJson, stringifyJson };
