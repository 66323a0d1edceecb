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

/** A JSON value as `parseJson` reads it: integers beyond 2^53 are bigint. */
export type JsonValue = null | boolean | number | bigint | string | JsonValue[] | { [key: string]: JsonValue };

/** JSON text -> value; integers beyond Number.MAX_SAFE_INTEGER become BigInt. */
export function parseJson(text: string): JsonValue {
  if (typeof text !== 'string') throw new TypeError(`JSON text must be a string, got ${typeof text}`);
  let i = 0;
  const fail = (what: string): never => {
    throw new SyntaxError(`${what} at position ${i} of JSON text`);
  };
  const skipSpace = () => {
    for (;;) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) i++;
      else return;
    }
  };
  const string = (): string => {
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
    return JSON.parse(text.slice(start, i)) as string;
  };
  const number = (): number | bigint => {
    NUMBER.lastIndex = i;
    const match = NUMBER.exec(text);
    if (!match) return fail(i < text.length ? `unexpected character ${JSON.stringify(text[i])}` : 'unexpected end');
    i = NUMBER.lastIndex;
    const value = Number(match[0]);
    if (match[1] === undefined && match[2] === undefined && !Number.isSafeInteger(value)) return BigInt(match[0]);
    return value;
  };
  const value = (): JsonValue => {
    skipSpace();
    const c = text[i];
    if (c === '{') {
      i++;
      const object: { [key: string]: JsonValue } = {};
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
      const array: JsonValue[] = [];
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
    for (const [word, result] of [['true', true], ['false', false], ['null', null]] as const) {
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
 */
export function stringifyJson(value: unknown): string {
  const open = new Set<object>();
  const write = (item: unknown, key: string): string | undefined => {
    if (item !== null && typeof item === 'object' && typeof (item as { toJSON?: unknown }).toJSON === 'function') {
      item = (item as { toJSON: (key: string) => unknown }).toJSON(key);
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
    const object = item as object;
    if (open.has(object)) throw new TypeError('cannot write a cyclic structure as JSON');
    open.add(object);
    let text;
    if (Array.isArray(object)) {
      text = `[${object.map((element, index) => write(element, String(index)) ?? 'null').join(',')}]`;
    } else {
      const parts: string[] = [];
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
