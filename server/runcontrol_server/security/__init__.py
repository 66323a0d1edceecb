"""Who may reach the server and what they may do: TLS, tokens, roles, safe defaults.

* `roles` — the three roles and THE table from RPC to the role it needs;
* `tokens` — the tokens file (bearer tokens and client-certificate identities);
* `pem` — reading and checking the TLS files;
* `exposure` — the rules that refuse an unsafe configuration at start;
* `tls` — gRPC server credentials and the peer's certificate names;
* `interceptor` — the grpc.aio interceptor that authenticates and authorizes calls;
* `server` — `ServerSecurity`, everything above as the app uses it.

Importing this package imports nothing else: the settings parser uses the pure
modules without loading grpc.
"""
