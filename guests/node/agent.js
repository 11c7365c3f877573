#!/usr/bin/env node
// A guest of the rlm wire protocol 1.1 in JavaScript for Node (>= 18), with no dependencies,
// written from PROTOCOL.md: it runs bash blocks and offers the bash REPL of section 4.1
// (variables as files, Final as a file, host calls as commands). It has no Python.
//
//   node guests/node/agent.js [--max-sessions N] [--max-output-chars N]
//
// speaks the protocol on stdin/stdout; diagnostics go to stderr. Each session is a directory
// ($RLM_VARS) and, while a block runs, one `/bin/sh -c` leading its own process group. Every
// process a session starts carries the session's token in its environment, so a reset finds
// and kills even those that left the group (setsid).
"use strict";

const childProcess = require("child_process");
const fs = require("fs");
const net = require("net");
const os = require("os");
const path = require("path");
const { StringDecoder } = require("string_decoder");
const { Float, decode, encode, plain } = require("./msgpack");

const PROTOCOL = [1, 1];
const AGENT_VERSION = "0.1.0";
const CAPABILITIES = ["exec.bash", "repl.bash", "interrupt", "host_call"];
const INTERRUPT_GRACE_MS = 2000; // PROTOCOL.md 6
const BIN = path.join(__dirname, "bin");

function option(name, fallback) {
  const at = process.argv.indexOf(name);
  return at >= 0 ? Number(process.argv[at + 1]) : fallback;
}

const LIMITS = {
  max_frame_bytes: option("--max-frame-bytes", 64 * 1024 * 1024),
  max_output_chars: option("--max-output-chars", 1000000),
  max_sessions: option("--max-sessions", 64),
};

const home = fs.mkdtempSync(path.join(os.tmpdir(), "rlm-node-guest-"));
const socketPath = path.join(home, "host-call.sock");
const sessions = new Map(); // id -> Session
const hostCalls = new Map(); // guest call id -> {session, socket}
let nextHostCall = 1;
let nextSession = 1;
let ending = false;

function log(message) {
  process.stderr.write(`rlm-node-guest: ${message}\n`);
}

// --- output ------------------------------------------------------------------------------------

function send(frame) {
  const body = encode(frame);
  const header = Buffer.alloc(4);
  header.writeUInt32BE(body.length, 0);
  process.stdout.write(Buffer.concat([header, body]));
}

function refuse(code, message, session, call) {
  send({ kind: "error", code, message, session: session ?? null, call: call ?? null });
}

// The guest gives up on the connection: an error frame with no call, then a failing exit.
function giveUp(message) {
  if (ending) return;
  ending = true;
  log(message);
  killAll();
  send({ kind: "error", code: "bad_request", message, session: null, call: null });
  exitAfterFlush(2);
}

function exitAfterFlush(status) {
  cleanup();
  process.stdout.write(Buffer.alloc(0), () => process.exit(status));
}

function cleanup() {
  try { fs.rmSync(home, { recursive: true, force: true }); } catch (error) { /* best effort */ }
}

// --- captured output (PROTOCOL.md 3.3) ---------------------------------------------------------

class Capture {
  constructor() {
    this.decoder = new StringDecoder("utf8");
    this.text = "";
    this.kept = 0; // code points in text
    this.chars = 0;
    this.newlines = 0;
  }
  write(chunk) {
    this.add(this.decoder.write(chunk));
  }
  end() {
    this.add(this.decoder.end());
  }
  add(text) {
    if (!text) return;
    for (const ch of text) {
      this.chars += 1;
      if (ch === "\n") this.newlines += 1;
      if (this.kept < LIMITS.max_output_chars) {
        this.text += ch;
        this.kept += 1;
      }
    }
  }
  frame() {
    return { text: this.text, chars: this.chars, lines: this.chars ? this.newlines + 1 : 0 };
  }
}

// --- sessions -----------------------------------------------------------------------------------

class Session {
  constructor(id, cwd) {
    this.id = id;
    this.cwd = cwd || os.tmpdir();
    this.token = `rlm-node-${process.pid}-${nextSession++}`;
    this.vars = path.join(home, this.token);
    fs.mkdirSync(this.vars);
    this.block = null;
  }

  state() {
    let names = [];
    try {
      names = fs.readdirSync(this.vars).filter((n) => !n.startsWith("_") && !n.startsWith("."));
    } catch (error) { /* a block removed the directory: no variables */ }
    names.sort();
    return { names: names.slice(0, 20), count: names.length };
  }

  final() {
    let data;
    try {
      data = fs.readFileSync(path.join(this.vars, "Final"));
    } catch (error) {
      return null;
    }
    const value = new StringDecoder("utf8").end(data);
    const repr = JSON.stringify(value);
    return { ok: true, value, type: "str", repr: repr.length <= 200 ? repr : repr.slice(0, 199) + "\u2026" };
  }

  // Every process of the session: its block's group and whatever carries its token.
  killProcesses() {
    if (this.block && this.block.child.pid) killGroup(this.block.child.pid);
    for (const pid of processesWithToken(this.token)) {
      try { process.kill(pid, "SIGKILL"); } catch (error) { /* already gone */ }
    }
  }

  // Drop the running block without answering it (close, shutdown, reset).
  abandonBlock() {
    const block = this.block;
    if (!block) return null;
    this.block = null;
    clearTimeout(block.deadline);
    clearTimeout(block.grace);
    block.abandoned = true;
    this.failHostCalls();
    return block;
  }

  failHostCalls() {
    for (const [call, pending] of hostCalls) {
      if (pending.session === this.id) {
        hostCalls.delete(call);
        pending.socket.destroy();
      }
    }
  }

  wipe() {
    fs.rmSync(this.vars, { recursive: true, force: true });
    fs.mkdirSync(this.vars);
  }

  close() {
    this.killProcesses();
    this.abandonBlock();
    fs.rmSync(this.vars, { recursive: true, force: true });
  }
}

function killGroup(pid) {
  try { process.kill(-pid, "SIGKILL"); } catch (error) { /* the group is gone */ }
}

function processesWithToken(token) {
  const found = [];
  let entries = [];
  try { entries = fs.readdirSync("/proc"); } catch (error) { return found; }
  const needle = Buffer.from(`RLM_SESSION_TOKEN=${token}\0`);
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const environ = fs.readFileSync(`/proc/${entry}/environ`);
      if (environ.includes(needle)) found.push(Number(entry));
    } catch (error) { /* gone, or not ours to read */ }
  }
  return found;
}

function killAll() {
  for (const session of sessions.values()) session.close();
  sessions.clear();
}

// --- blocks ---------------------------------------------------------------------------------------

function runBash(session, call, code, timeout) {
  const started = process.hrtime.bigint();
  const child = childProcess.spawn("/bin/sh", ["-c", code], {
    cwd: session.cwd,
    detached: true, // a process group of its own, killed whole by an interrupt
    stdio: ["ignore", "pipe", "pipe"],
    env: {
      ...process.env,
      PATH: `${BIN}:${process.env.PATH || "/usr/bin:/bin"}`,
      RLM_VARS: session.vars,
      RLM_SESSION: session.id,
      RLM_SESSION_TOKEN: session.token,
      RLM_HOST_CALL_SOCKET: socketPath,
    },
  });
  const block = {
    call, child, started, abandoned: false, interrupted: false,
    stdout: new Capture(), stderr: new Capture(), deadline: null, grace: null,
  };
  session.block = block;
  child.stdout.on("data", (chunk) => block.stdout.write(chunk));
  child.stderr.on("data", (chunk) => block.stderr.write(chunk));
  child.on("error", (error) => block.stderr.add(`${error.message}\n`));
  // What the shell left in its group would hold the pipes open forever (PROTOCOL.md 4).
  child.on("exit", () => killGroup(child.pid));
  child.on("close", (status, signal) => {
    if (block.abandoned) return;
    session.block = null;
    clearTimeout(block.deadline);
    clearTimeout(block.grace);
    block.stdout.end();
    block.stderr.end();
    const returncode = signal ? -(os.constants.signals[signal] || 1) : status;
    send({
      kind: "exec_result",
      session: session.id,
      call,
      stdout: block.stdout.frame(),
      stderr: block.stderr.frame(),
      state: session.state(),
      final: session.final(),
      returncode,
      interrupted: block.interrupted,
      duration: new Float(Number(process.hrtime.bigint() - started) / 1e9),
    });
  });
  if (timeout !== null) {
    block.deadline = setTimeout(() => interrupt(session), Math.max(0, timeout * 1000));
  }
}

function interrupt(session) {
  const block = session.block;
  if (!block || block.interrupted) return;
  block.interrupted = true;
  killGroup(block.child.pid);
  block.grace = setTimeout(() => reset(session), INTERRUPT_GRACE_MS);
}

// The block did not end within the grace: every process of the session dies, its files too.
function reset(session) {
  const block = session.block;
  if (!block) return;
  session.killProcesses();
  session.abandonBlock();
  session.wipe();
  const message =
    `the block did not stop within ${INTERRUPT_GRACE_MS / 1000} s of its interrupt; every ` +
    "process of the session was killed and its variables are lost";
  send({
    kind: "exec_result",
    session: session.id,
    call: block.call,
    stdout: { text: "", chars: 0, lines: 0 },
    stderr: { text: `${message}\n`, chars: message.length + 1, lines: 2 },
    state: session.state(),
    error: { name: "SessionReset", value: message, traceback: "" },
    interrupted: true,
    session_reset: true,
    duration: new Float(Number(process.hrtime.bigint() - block.started) / 1e9),
  });
}

// --- frames from the host ---------------------------------------------------------------------------

const isInt = (v) => typeof v === "number" && Number.isInteger(v);
const isStr = (v) => typeof v === "string";
const isNumber = (v) => isInt(v) || v instanceof Float;
const optional = (check) => (v) => v === undefined || v === null || check(v);
const isMap = (v) => v !== null && typeof v === "object" && !Array.isArray(v) && !Buffer.isBuffer(v) && !(v instanceof Float);

// Required and optional fields of every host-to-guest frame: a mistyped one is malformed.
const SHAPES = {
  welcome: { protocol: (v) => Array.isArray(v) && v.length === 2 && v.every(isInt), host: isStr, host_version: isStr, capabilities: optional(Array.isArray) },
  open_session: { session: isStr, call: isInt, cwd: optional(isStr) },
  set_vars: { session: isStr, call: isInt, values: isMap },
  exec: { session: isStr, call: isInt, code: isStr, language: optional(isStr), timeout: optional(isNumber) },
  interrupt: { session: isStr },
  close_session: { session: isStr, call: isInt },
  host_call_reply: { session: isStr, call: isInt, error: optional(isMap) },
  shutdown: {},
};
const GUEST_KINDS = new Set(["hello", "session_opened", "vars_set", "exec_result", "host_call", "session_closed", "error", "bye"]);
const REQUIRED_OPTIONAL = new Set(["cwd", "language", "timeout", "capabilities", "error"]);

function malformed(frame) {
  if (!isMap(frame)) return "the body is not a map";
  if (!isStr(frame.kind)) return "no string `kind`";
  const shape = SHAPES[frame.kind];
  if (!shape) return null;
  for (const [field, check] of Object.entries(shape)) {
    if (frame[field] === undefined && REQUIRED_OPTIONAL.has(field)) continue;
    if (!check(frame[field])) return `${frame.kind}: field \`${field}\` is missing or mistyped`;
  }
  return null;
}

function onFrame(frame) {
  const problem = malformed(frame);
  if (problem) return giveUp(`protocol error: malformed frame: ${problem}`);
  const handler = HANDLERS[frame.kind];
  if (handler) return handler(frame);
  if (GUEST_KINDS.has(frame.kind)) {
    const session = isStr(frame.session) ? frame.session : null;
    const call = isInt(frame.call) ? frame.call : null;
    return refuse("bad_request", `${frame.kind} is not a host-to-guest frame`, session, call);
  }
  log(`ignoring unknown frame kind ${JSON.stringify(frame.kind)}`); // a newer minor's
}

function validName(name) {
  return name !== "" && name !== "." && name !== ".." && !name.includes("/") && !name.includes("\0");
}

const HANDLERS = {
  welcome(frame) {
    if (frame.protocol[0] !== PROTOCOL[0]) {
      giveUp(`host speaks protocol ${frame.protocol.join(".")}, this guest ${PROTOCOL.join(".")}: majors differ`);
    }
  },
  open_session(frame) {
    if (sessions.has(frame.session)) return refuse("session_exists", `session ${frame.session} is already open`, frame.session, frame.call);
    if (sessions.size >= LIMITS.max_sessions) return refuse("too_large", `at most ${LIMITS.max_sessions} sessions may be open`, frame.session, frame.call);
    if (frame.cwd && !isDirectory(frame.cwd)) return refuse("bad_request", `cwd ${frame.cwd} is not a directory`, frame.session, frame.call);
    sessions.set(frame.session, new Session(frame.session, frame.cwd));
    send({ kind: "session_opened", session: frame.session, call: frame.call });
  },
  set_vars(frame) {
    const session = sessions.get(frame.session);
    if (!session) return refuse("unknown_session", `no session ${frame.session}`, frame.session, frame.call);
    const bad = Object.keys(frame.values).filter((name) => !validName(name));
    if (bad.length) return refuse("bad_request", `not a file name: ${JSON.stringify(bad)}`, frame.session, frame.call);
    for (const [name, value] of Object.entries(frame.values)) {
      const text = typeof value === "string" ? value : JSON.stringify(plain(value));
      fs.writeFileSync(path.join(session.vars, name), text);
    }
    fs.rmSync(path.join(session.vars, "Final"), { force: true });
    send({ kind: "vars_set", session: frame.session, call: frame.call, state: session.state() });
  },
  exec(frame) {
    const session = sessions.get(frame.session);
    if (!session) return refuse("unknown_session", `no session ${frame.session}`, frame.session, frame.call);
    const language = frame.language ?? "python";
    if (language !== "bash") return refuse("unsupported", `language ${JSON.stringify(language)} is not supported: this guest runs bash`, frame.session, frame.call);
    if (session.block) return refuse("session_busy", `session ${frame.session} is already running a block`, frame.session, frame.call);
    const timeout = frame.timeout === undefined || frame.timeout === null ? null : plain(frame.timeout);
    runBash(session, frame.call, frame.code, timeout);
  },
  interrupt(frame) {
    const session = sessions.get(frame.session);
    if (session) interrupt(session);
  },
  close_session(frame) {
    const session = sessions.get(frame.session);
    if (!session) return refuse("unknown_session", `no session ${frame.session}`, frame.session, frame.call);
    sessions.delete(frame.session);
    session.close();
    send({ kind: "session_closed", session: frame.session, call: frame.call });
  },
  host_call_reply(frame) {
    const pending = hostCalls.get(frame.call);
    if (!pending || pending.session !== frame.session) return; // cancelled, or its session closed
    hostCalls.delete(frame.call);
    const answer = frame.error ? { error: plain(frame.error) } : { value: plain(frame.value ?? null) };
    pending.socket.end(JSON.stringify(answer) + "\n");
  },
  shutdown() {
    ending = true;
    killAll();
    send({ kind: "bye" });
    exitAfterFlush(0);
  },
};

function isDirectory(dir) {
  try { return fs.statSync(dir).isDirectory(); } catch (error) { return false; }
}

// --- host calls from bash blocks (PROTOCOL.md 4.1) ------------------------------------------------

// A command in a block sends one JSON line {session, method, payload}; it gets one JSON line back.
const hostCallServer = net.createServer((socket) => {
  let request = "";
  socket.setEncoding("utf8");
  socket.on("error", () => {});
  socket.on("data", (text) => {
    request += text;
    const end = request.indexOf("\n");
    if (end < 0) return;
    socket.removeAllListeners("data");
    let parsed;
    try {
      parsed = JSON.parse(request.slice(0, end));
    } catch (error) {
      return socket.end(JSON.stringify({ error: { name: "BadRequest", message: error.message } }) + "\n");
    }
    const session = sessions.get(parsed.session);
    if (!session || !session.block) {
      return socket.end(JSON.stringify({ error: { name: "SessionClosed", message: "no block runs in this session" } }) + "\n");
    }
    const call = nextHostCall++;
    hostCalls.set(call, { session: session.id, socket });
    socket.on("close", () => hostCalls.delete(call));
    send({ kind: "host_call", session: session.id, call, method: String(parsed.method), payload: isMap(parsed.payload) ? parsed.payload : {} });
  });
});

// --- the stream ---------------------------------------------------------------------------------------

function serve() {
  let buffered = Buffer.alloc(0);
  process.stdin.on("data", (chunk) => {
    if (ending) return;
    buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
    while (buffered.length >= 4 && !ending) {
      const size = buffered.readUInt32BE(0);
      if (size > LIMITS.max_frame_bytes) {
        // Refused on the length alone, before the body (PROTOCOL.md 1).
        return giveUp(`protocol error: a frame of ${size} bytes is over max_frame_bytes ${LIMITS.max_frame_bytes}`);
      }
      if (buffered.length < 4 + size) break;
      const body = buffered.subarray(4, 4 + size);
      buffered = buffered.subarray(4 + size);
      let frame;
      try {
        frame = decode(body);
      } catch (error) {
        return giveUp(`protocol error: malformed frame: ${error.message}`);
      }
      onFrame(frame);
    }
  });
  process.stdin.on("end", () => {
    if (ending) return;
    ending = true;
    killAll();
    exitAfterFlush(0);
  });
  send({
    kind: "hello",
    protocol: PROTOCOL,
    agent: "rlm-node-guest",
    agent_version: AGENT_VERSION,
    capabilities: CAPABILITIES,
    limits: LIMITS,
    runtime: { node: process.versions.node, platform: process.platform },
  });
}

process.stdout.on("error", () => process.exit(0)); // the host went away
hostCallServer.listen(socketPath, serve);
