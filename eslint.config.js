// ESLint (flat config) for the project's JavaScript: `nox -s jslint`, which installs eslint from
// npm into .nox/ and points NODE_PATH there (the repository has no package.json of its own).
"use strict";

const js = require("@eslint/js");

const browser = {
  window: "readonly",
  document: "readonly",
  location: "readonly",
  sessionStorage: "readonly",
  crypto: "readonly",
  console: "readonly",
  WebSocket: "readonly",
  URL: "readonly",
  URLSearchParams: "readonly",
  Event: "readonly",
  MutationObserver: "readonly",
  Intl: "readonly",
  setTimeout: "readonly",
  clearTimeout: "readonly",
  queueMicrotask: "readonly",
  globalThis: "readonly",
};

const rules = {
  ...js.configs.recommended.rules,
  eqeqeq: ["error", "always", { null: "ignore" }],
  "no-unused-vars": ["error", { args: "after-used", argsIgnorePattern: "^_" }],
  "no-shadow": "error",
  "no-var": "error",
  "prefer-const": "error",
  "no-implicit-globals": "error",
  "no-throw-literal": "error",
  "no-return-assign": "error",
  "no-use-before-define": ["error", { functions: false, classes: true, variables: true }],
  curly: ["error", "multi-line"],
};

module.exports = [
  { ignores: [".nox/**", "docs/_build/**", "**/node_modules/**"] },
  {
    // The client: one classic script that is also the body of an ES module (client.mjs).
    files: ["trio_channels/static/*.js"],
    languageOptions: { ecmaVersion: 2022, sourceType: "script", globals: browser },
    rules,
  },
  {
    files: ["**/*.mjs"],
    languageOptions: { ecmaVersion: 2022, sourceType: "module", globals: browser },
    rules,
  },
  {
    files: ["eslint.config.js"],
    languageOptions: { ecmaVersion: 2022, sourceType: "commonjs", globals: { require: "readonly", module: "writable" } },
    rules,
  },
];
