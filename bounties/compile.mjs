#!/usr/bin/env node
// Compile bounties/contracts/*.sol with solc-js (pinned in package.json) and write one
// committed artifact per contract under bounties/artifacts/.
//
//   npm ci && node bounties/compile.mjs           # rewrite the artifacts
//   node bounties/compile.mjs --check             # exit 1 if a committed artifact differs
//
// The output is deterministic: fixed settings, sorted keys where order is ours, a trailing
// newline. Compiler warnings are treated as errors so the source stays clean.

import { createHash } from "node:crypto";
import { readFileSync, writeFileSync, existsSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = dirname(HERE);
const CONTRACTS = ["CohortStudy"];
const EXPECTED_SOLC = "0.8.28";

// py-evm in eth-tester 0.14 runs the Prague rules (PUSH0, MCOPY, TSTORE/TLOAD available),
// anvil defaults to a later fork, and 0.8.28's own default is cancun: pin it explicitly.
const SETTINGS = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 200 },
  metadata: { bytecodeHash: "ipfs" },
  outputSelection: {
    "*": {
      "*": [
        "abi",
        "evm.bytecode.object",
        "evm.deployedBytecode.object",
        "evm.deployedBytecode.immutableReferences",
        "evm.methodIdentifiers",
      ],
    },
  },
};

function loadSolc() {
  const require = createRequire(import.meta.url);
  try {
    return require("solc");
  } catch {
    console.error("solc-js is not installed: run `npm ci` in the repository root");
    process.exit(2);
  }
}

function sortedObject(obj) {
  return Object.fromEntries(Object.keys(obj).sort().map((k) => [k, obj[k]]));
}

function compileAll(solc) {
  const version = solc.version();
  if (!version.startsWith(`${EXPECTED_SOLC}+`)) {
    console.error(`expected solc ${EXPECTED_SOLC}, found ${version}: run \`npm ci\``);
    process.exit(2);
  }
  const sources = {};
  for (const name of CONTRACTS) {
    const path = join(HERE, "contracts", `${name}.sol`);
    // Source units are named by their path from the repository root, with forward slashes,
    // so the metadata hash does not depend on where the checkout lives.
    const unit = relative(ROOT, path).split("\\").join("/");
    sources[unit] = { content: readFileSync(path, "utf8"), raw: readFileSync(path) };
  }
  const input = {
    language: "Solidity",
    sources: Object.fromEntries(
      Object.entries(sources).map(([unit, s]) => [unit, { content: s.content }]),
    ),
    settings: SETTINGS,
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const problems = (output.errors ?? []).filter((e) => e.severity !== "info");
  if (problems.length > 0) {
    for (const p of problems) console.error(p.formattedMessage ?? p.message);
    console.error(`solc reported ${problems.length} error(s)/warning(s)`);
    process.exit(1);
  }
  const artifacts = {};
  for (const [unit, s] of Object.entries(sources)) {
    const name = unit.split("/").pop().replace(/\.sol$/, "");
    const c = output.contracts[unit][name];
    const artifact = {
      contractName: name,
      sourcePath: unit,
      sourceSha256: createHash("sha256").update(s.raw).digest("hex"),
      compiler: { name: "solc-js", version },
      settings: SETTINGS,
      abi: c.abi,
      bytecode: `0x${c.evm.bytecode.object}`,
      deployedBytecode: `0x${c.evm.deployedBytecode.object}`,
      // Byte ranges of deployedBytecode that hold immutables (set per deployment), so a
      // client can check that an address runs exactly this code.
      immutableReferences: sortedObject(c.evm.deployedBytecode.immutableReferences),
      methodIdentifiers: sortedObject(c.evm.methodIdentifiers),
    };
    artifacts[name] = `${JSON.stringify(artifact, null, 2)}\n`;
  }
  return artifacts;
}

function firstDifference(a, b) {
  const la = a.split("\n");
  const lb = b.split("\n");
  for (let i = 0; i < Math.max(la.length, lb.length); i++) {
    if (la[i] !== lb[i]) return i + 1;
  }
  return -1;
}

function main() {
  const check = process.argv.includes("--check");
  const artifacts = compileAll(loadSolc());
  const outDir = join(HERE, "artifacts");
  let stale = 0;
  for (const [name, text] of Object.entries(artifacts)) {
    const path = join(outDir, `${name}.json`);
    const shown = relative(ROOT, path);
    if (check) {
      if (!existsSync(path)) {
        console.error(`${shown}: missing; run \`node bounties/compile.mjs\``);
        stale++;
      } else {
        const committed = readFileSync(path, "utf8");
        if (committed !== text) {
          const line = firstDifference(committed, text);
          console.error(
            `${shown}: differs from a fresh compile (first at line ${line}); ` +
              "run `node bounties/compile.mjs` and commit the result",
          );
          stale++;
        } else {
          console.log(`${shown}: up to date`);
        }
      }
    } else {
      mkdirSync(outDir, { recursive: true });
      writeFileSync(path, text);
      console.log(`${shown}: written`);
    }
  }
  process.exit(stale > 0 ? 1 : 0);
}

main();
