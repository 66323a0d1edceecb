'use strict';
/**
 * Client security: TLS channel credentials and a bearer token on every call,
 * from RunControlClient options, else from the environment (as the Python
 * client and runctl read them):
 *
 *   RUNCONTROL_TOKEN             bearer token, sent as `authorization: Bearer <token>`
 *   RUNCONTROL_TLS_CA            PEM file of the CA that signed the server's
 *                                certificate; set, the channel uses TLS
 *   RUNCONTROL_TLS_CLIENT_CERT   PEM file of this client's certificate (mutual TLS)
 *   RUNCONTROL_TLS_CLIENT_KEY    PEM file of that certificate's private key
 *
 * An option that is present wins over its variable, even as null ("none").
 * The token goes in a channel interceptor, not call credentials: grpc-js
 * refuses call credentials on plaintext channels, and a loopback server may
 * check tokens without TLS.
 */
const fs = require('node:fs');
const grpc = require('@grpc/grpc-js');

const ENV = Object.freeze({
  token: 'RUNCONTROL_TOKEN',
  ca: 'RUNCONTROL_TLS_CA',
  cert: 'RUNCONTROL_TLS_CLIENT_CERT',
  key: 'RUNCONTROL_TLS_CLIENT_KEY',
});

/** @param {Buffer | string | null | undefined} pem */
function toBuffer(pem) {
  if (pem === undefined || pem === null) return null;
  return Buffer.isBuffer(pem) ? pem : Buffer.from(pem);
}

/**
 * @param {NodeJS.ProcessEnv} env
 * @param {string} name
 */
function envFile(env, name) {
  const path = env[name];
  if (!path) return null;
  try {
    return fs.readFileSync(path);
  } catch (err) {
    throw new TypeError(`cannot read $${name} (${path}): ${/** @type {Error} */ (err).message}`);
  }
}

/**
 * @param {string} token
 * @returns {grpc.Interceptor}
 */
function bearerInterceptor(token) {
  const value = `Bearer ${token}`;
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set('authorization', value);
        next(metadata, listener);
      },
    });
}

/**
 * Channel credentials and interceptors for `options` (see ClientOptions).
 * @param {import('./index').ClientOptions} options
 * @param {NodeJS.ProcessEnv} [env]
 * @returns {{ credentials: grpc.ChannelCredentials, interceptors: grpc.Interceptor[] }}
 */
function resolveSecurity(options, env = process.env) {
  const rawToken = 'token' in options ? options.token : env[ENV.token];
  const token = typeof rawToken === 'string' ? rawToken.trim() : '';
  if (rawToken !== undefined && rawToken !== null && typeof rawToken !== 'string') {
    throw new TypeError('token must be a string');
  }
  if (!/^[\x21-\x7e]*$/.test(token)) throw new TypeError('token must be visible ASCII characters only');
  const interceptors = token ? [bearerInterceptor(token)] : [];

  if (options.credentials) {
    if (options.tls) throw new TypeError('give credentials or tls, not both');
    return { credentials: options.credentials, interceptors };
  }
  /** @type {{ ca: Buffer | null, cert: Buffer | null, key: Buffer | null } | null} */
  let tls = null;
  if ('tls' in options) {
    // An object means TLS (with the system's roots when it has no `ca`); null: plaintext.
    const given = options.tls;
    if (given) tls = { ca: toBuffer(given.ca), cert: toBuffer(given.cert), key: toBuffer(given.key) };
  } else {
    const fromEnv = { ca: envFile(env, ENV.ca), cert: envFile(env, ENV.cert), key: envFile(env, ENV.key) };
    if (fromEnv.ca || fromEnv.cert || fromEnv.key) tls = fromEnv;
  }
  if (!tls) return { credentials: grpc.credentials.createInsecure(), interceptors };
  if (!tls.cert !== !tls.key) throw new TypeError('a client certificate and its key go together');
  return { credentials: grpc.credentials.createSsl(tls.ca, tls.key, tls.cert), interceptors };
}

module.exports = { resolveSecurity, bearerInterceptor, ENV };
