// Builds the web view into the server package (runcontrol_server/http/web_assets/):
// src/main.ts bundled with its dependencies into app.js, index.html and app.css copied.
// The output is committed, so serving the page needs no Node.js; `make web-check`
// rebuilds it and fails on any difference, so the build must be deterministic: pinned
// esbuild, no source maps, no timestamps, files written in one order.
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "../../server/runcontrol_server/http/web_assets");

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(here, "src/main.ts")],
  outfile: join(out, "app.js"),
  bundle: true,
  format: "esm",
  target: "es2022",
  platform: "browser",
  minify: true,
  legalComments: "eof",
  charset: "utf8",
  logLevel: "warning",
});
for (const name of ["index.html", "app.css"]) copyFileSync(join(here, "src", name), join(out, name));
