/**
 * Client security: TLS and a bearer token on every call, from RunControlClient
 * options, else from the environment (as the Python client and runctl read them):
 *
 *   RUNCONTROL_TOKEN             bearer token, sent as `authorization: Bearer <token>`
 *   RUNCONTROL_TLS_CA            PEM file of the CA that signed the server's
 *                                certificate; set, the connection uses TLS
 *   RUNCONTROL_TLS_CLIENT_CERT   PEM file of this client's certificate (mutual TLS)
 *   RUNCONTROL_TLS_CLIENT_KEY    PEM file of that certificate's private key
 *
 * An option that is present wins over its variable, even as null ("none"). The
 * token is added by an interceptor to every call, watches included, over both
 * transports, with or without TLS (a loopback server may check tokens without it).
 */
import * as fs from 'node:fs';
import type { Interceptor } from '@connectrpc/connect';

export const ENV = Object.freeze({
  token: 'RUNCONTROL_TOKEN',
  ca: 'RUNCONTROL_TLS_CA',
  cert: 'RUNCONTROL_TLS_CLIENT_CERT',
  key: 'RUNCONTROL_TLS_CLIENT_KEY',
} as const);

/** PEM contents (not paths) for TLS; `ca` unset trusts the system's roots. */
export interface TlsOptions {
  ca?: Buffer | string | null;
  /** This client's certificate (mutual TLS), with `key`. */
  cert?: Buffer | string | null;
  key?: Buffer | string | null;
}

export interface SecurityOptions {
  /** Bearer token. Absent: $RUNCONTROL_TOKEN; null: no token. */
  token?: string | null;
  /** TLS. Absent: from the RUNCONTROL_TLS_* variables when set; null: plaintext. */
  tls?: TlsOptions | null;
}

/** What the transports need: the token ("" for none) and the TLS material (null: plaintext). */
export interface Security {
  token: string;
  tls: { ca?: Buffer; cert?: Buffer; key?: Buffer } | null;
}

function toBuffer(pem: Buffer | string | null | undefined): Buffer | undefined {
  if (pem === undefined || pem === null) return undefined;
  return Buffer.isBuffer(pem) ? pem : Buffer.from(pem);
}

function envFile(env: NodeJS.ProcessEnv, name: string): Buffer | undefined {
  const path = env[name];
  if (!path) return undefined;
  try {
    return fs.readFileSync(path);
  } catch (err) {
    throw new TypeError(`cannot read $${name} (${path}): ${(err as Error).message}`);
  }
}

/** The token and TLS material for `options` (see SecurityOptions). */
export function resolveSecurity(options: SecurityOptions, env: NodeJS.ProcessEnv = process.env): Security {
  const rawToken: unknown = 'token' in options ? options.token : env[ENV.token];
  if (rawToken !== undefined && rawToken !== null && typeof rawToken !== 'string') {
    throw new TypeError('token must be a string');
  }
  const token = typeof rawToken === 'string' ? rawToken.trim() : '';
  if (!/^[\x21-\x7e]*$/.test(token)) throw new TypeError('token must be visible ASCII characters only');

  let tls: Security['tls'] = null;
  if ('tls' in options) {
    // An object means TLS (with the system's roots when it has no `ca`); null: plaintext.
    const given = options.tls;
    if (given) tls = { ca: toBuffer(given.ca), cert: toBuffer(given.cert), key: toBuffer(given.key) };
  } else {
    const fromEnv = { ca: envFile(env, ENV.ca), cert: envFile(env, ENV.cert), key: envFile(env, ENV.key) };
    if (fromEnv.ca || fromEnv.cert || fromEnv.key) tls = fromEnv;
  }
  if (tls && !tls.cert !== !tls.key) throw new TypeError('a client certificate and its key go together');
  if (tls) tls = Object.fromEntries(Object.entries(tls).filter(([, v]) => v !== undefined));
  return { token, tls };
}

/** An interceptor that sends `authorization: Bearer <token>` on every call. */
export function bearerInterceptor(token: string): Interceptor {
  const value = `Bearer ${token}`;
  return (next) => (request) => {
    request.header.set('authorization', value);
    return next(request);
  };
}
