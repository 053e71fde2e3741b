#!/usr/bin/env node
/*
 * Browser side of the JSON Logic parity test (tests/ecrf/test_logic.py runs this).
 *
 * Loads json-logic-js from node_modules and static/js/ecrf-logic.js, evaluates every case of
 * tests/ecrf/logic_cases.json (or of the file given as the first argument) and prints one
 * JSON array: {"name", "ok": true, "result", "variables"} or {"name", "ok": false, "error"}.
 * "variables" is SuifangLogic.variables(logic), compared with ecrf.logic.logic_variables.
 */
"use strict";

const fs = require("fs");
const path = require("path");

const repoRoot = path.resolve(__dirname, "..", "..");
let SuifangLogic;
try {
  require.resolve("json-logic-js", {paths: [repoRoot]});
  SuifangLogic = require(path.join(repoRoot, "static", "js", "ecrf-logic.js"));
} catch (error) {
  process.stderr.write("cannot load json-logic-js / static/js/ecrf-logic.js (" + error.message +
                       "); run `make install` (npm ci) in " + repoRoot + "\n");
  process.exit(2);
}

const casesFile = process.argv[2] || path.join(__dirname, "logic_cases.json");
const cases = JSON.parse(fs.readFileSync(casesFile, "utf8"));

const results = cases.map(function (testCase) {
  try {
    const result = SuifangLogic.evaluate(testCase.logic, testCase.data);
    return {name: testCase.name, ok: true, result: result, variables: SuifangLogic.variables(testCase.logic)};
  } catch (error) {
    if (error.name !== "LogicError") {
      // Anything else is a bug in ecrf-logic.js: evaluate() wraps every failure.
      return {name: testCase.name, ok: false, error: "UNEXPECTED " + error.name + ": " + error.message};
    }
    return {name: testCase.name, ok: false, error: error.message};
  }
});
process.stdout.write(JSON.stringify(results) + "\n");
