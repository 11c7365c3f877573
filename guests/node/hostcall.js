#!/usr/bin/env node
// The host-call commands of the bash REPL (PROTOCOL.md 4.1), run from bash blocks:
//   rlm_query PROMPT [MODEL]    llm_query PROMPT [MODEL]    host_call METHOD [PAYLOAD-JSON]
// A PROMPT of "-" is read from stdin. The agent's socket and this block's session come from
// the environment the agent gave the block. Exit status: 0, 1 on an error reply, 2 on misuse.
"use strict";

const fs = require("fs");
const net = require("net");

function fail(message, status) {
  process.stderr.write(`${message}\n`);
  process.exit(status);
}

const [command, ...args] = process.argv.slice(2);
let method;
let payload;
if (command === "rlm_query" || command === "llm_query") {
  if (args.length < 1 || args.length > 2) fail(`usage: ${command} PROMPT [MODEL]`, 2);
  const prompt = args[0] === "-" ? fs.readFileSync(0, "utf8") : args[0];
  method = command;
  payload = { prompt, model: args[1] ?? null };
} else if (command === "host_call") {
  if (args.length < 1 || args.length > 2) fail("usage: host_call METHOD [PAYLOAD-JSON]", 2);
  method = args[0];
  try {
    payload = args[1] === undefined ? {} : JSON.parse(args[1]);
  } catch (error) {
    fail(`host_call: PAYLOAD is not JSON: ${error.message}`, 2);
  }
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
    fail("host_call: PAYLOAD must be a JSON object", 2);
  }
} else {
  fail(`unknown command ${command}`, 2);
}

const socketPath = process.env.RLM_HOST_CALL_SOCKET;
if (!socketPath) fail(`${command}: not inside an rlm bash block (RLM_HOST_CALL_SOCKET is not set)`, 2);
const socket = net.createConnection(socketPath, () => {
  socket.write(JSON.stringify({ session: process.env.RLM_SESSION, method, payload }) + "\n");
});
let reply = "";
socket.setEncoding("utf8");
socket.on("data", (text) => { reply += text; });
socket.on("error", (error) => fail(`${command}: ${error.message}`, 2));
socket.on("end", () => {
  let answer;
  try {
    answer = JSON.parse(reply);
  } catch (error) {
    fail(`${command}: the guest closed the call without a reply`, 2);
  }
  if (answer.error) fail(`${answer.error.name}: ${answer.error.message}`, 1);
  const value = answer.value;
  const text = command !== "host_call" && typeof value === "string" ? value : JSON.stringify(value);
  process.stdout.write(text, () => process.exit(0));
});
