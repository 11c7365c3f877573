// The subset of msgpack (https://github.com/msgpack/msgpack/blob/master/spec.md) that the rlm
// protocol uses: nil, booleans, integers, floats, strings, binary, arrays and maps. No
// extension types (the protocol has none). No dependencies.
//
// PROTOCOL.md 1: integer fields must be msgpack integers, so the decoder keeps the difference a
// JavaScript number loses: a float on the wire decodes to a `Float`, never to a plain number,
// and a whole number is encoded as an integer unless it is wrapped in `Float`.
"use strict";

class Float {
  constructor(value) {
    this.value = value;
  }
}

class DecodeError extends Error {}

function decode(buffer) {
  let offset = 0;
  const need = (n) => {
    if (offset + n > buffer.length) throw new DecodeError("truncated msgpack value");
  };
  const u8 = () => { need(1); return buffer[offset++]; };
  const u16 = () => { need(2); const v = buffer.readUInt16BE(offset); offset += 2; return v; };
  const u32 = () => { need(4); const v = buffer.readUInt32BE(offset); offset += 4; return v; };
  const big = (v) => (v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
  const str = (n) => { need(n); const s = buffer.toString("utf8", offset, offset + n); offset += n; return s; };
  const bin = (n) => { need(n); const b = Buffer.from(buffer.subarray(offset, offset + n)); offset += n; return b; };
  const array = (n) => { const a = []; for (let i = 0; i < n; i++) a.push(value()); return a; };
  const map = (n) => {
    const m = {};
    for (let i = 0; i < n; i++) {
      const key = value();
      if (typeof key !== "string") throw new DecodeError("a map key that is not a string");
      m[key] = value();
    }
    return m;
  };
  function value() {
    const b = u8();
    if (b <= 0x7f) return b;
    if (b >= 0xe0) return b - 0x100;
    if ((b & 0xf0) === 0x80) return map(b & 0x0f);
    if ((b & 0xf0) === 0x90) return array(b & 0x0f);
    if ((b & 0xe0) === 0xa0) return str(b & 0x1f);
    switch (b) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return bin(u8());
      case 0xc5: return bin(u16());
      case 0xc6: return bin(u32());
      case 0xca: { need(4); const v = buffer.readFloatBE(offset); offset += 4; return new Float(v); }
      case 0xcb: { need(8); const v = buffer.readDoubleBE(offset); offset += 8; return new Float(v); }
      case 0xcc: return u8();
      case 0xcd: return u16();
      case 0xce: return u32();
      case 0xcf: { need(8); const v = buffer.readBigUInt64BE(offset); offset += 8; return big(v); }
      case 0xd0: { need(1); const v = buffer.readInt8(offset); offset += 1; return v; }
      case 0xd1: { need(2); const v = buffer.readInt16BE(offset); offset += 2; return v; }
      case 0xd2: { need(4); const v = buffer.readInt32BE(offset); offset += 4; return v; }
      case 0xd3: { need(8); const v = buffer.readBigInt64BE(offset); offset += 8; return big(v); }
      case 0xd9: return str(u8());
      case 0xda: return str(u16());
      case 0xdb: return str(u32());
      case 0xdc: return array(u16());
      case 0xdd: return array(u32());
      case 0xde: return map(u16());
      case 0xdf: return map(u32());
      default: throw new DecodeError(`unsupported msgpack type 0x${b.toString(16)}`);
    }
  }
  const result = value();
  if (offset !== buffer.length) throw new DecodeError("bytes after the msgpack value");
  return result;
}

function encode(root) {
  const parts = [];
  const header = (bytes) => parts.push(Buffer.from(bytes));
  function int(v) {
    if (v >= 0) {
      if (v <= 0x7f) return header([v]);
      if (v <= 0xff) return header([0xcc, v]);
      if (v <= 0xffff) return header([0xcd, v >> 8, v & 0xff]);
      if (v <= 0xffffffff) { const b = Buffer.alloc(5); b[0] = 0xce; b.writeUInt32BE(v, 1); return parts.push(b); }
      const b = Buffer.alloc(9); b[0] = 0xcf; b.writeBigUInt64BE(BigInt(v), 1); return parts.push(b);
    }
    if (v >= -32) return header([v + 0x100]);
    if (v >= -0x80) { const b = Buffer.alloc(2); b[0] = 0xd0; b.writeInt8(v, 1); return parts.push(b); }
    if (v >= -0x8000) { const b = Buffer.alloc(3); b[0] = 0xd1; b.writeInt16BE(v, 1); return parts.push(b); }
    if (v >= -0x80000000) { const b = Buffer.alloc(5); b[0] = 0xd2; b.writeInt32BE(v, 1); return parts.push(b); }
    const b = Buffer.alloc(9); b[0] = 0xd3; b.writeBigInt64BE(BigInt(v), 1); return parts.push(b);
  }
  function float(v) {
    const b = Buffer.alloc(9); b[0] = 0xcb; b.writeDoubleBE(v, 1); parts.push(b);
  }
  function sized(n, fix, fixMax, codes) {
    if (fix !== null && n <= fixMax) return header([fix | n]);
    if (codes[0] !== null && n <= 0xff) return header([codes[0], n]);
    if (n <= 0xffff) return header([codes[1], n >> 8, n & 0xff]);
    const b = Buffer.alloc(5); b[0] = codes[2]; b.writeUInt32BE(n, 1); parts.push(b);
  }
  function value(v) {
    if (v === null || v === undefined) return header([0xc0]);
    if (v === true) return header([0xc3]);
    if (v === false) return header([0xc2]);
    if (v instanceof Float) return float(v.value);
    if (typeof v === "number") return Number.isSafeInteger(v) ? int(v) : float(v);
    if (typeof v === "bigint") {
      if (v < -(2n ** 63n) || v > 2n ** 64n - 1n) throw new RangeError("an integer beyond 64 bits");
      const b = Buffer.alloc(9);
      if (v < 0n) { b[0] = 0xd3; b.writeBigInt64BE(v, 1); } else { b[0] = 0xcf; b.writeBigUInt64BE(v, 1); }
      return parts.push(b);
    }
    if (typeof v === "string") {
      const s = Buffer.from(v, "utf8");
      sized(s.length, 0xa0, 31, [0xd9, 0xda, 0xdb]);
      return parts.push(s);
    }
    if (Buffer.isBuffer(v)) { sized(v.length, null, -1, [0xc4, 0xc5, 0xc6]); return parts.push(v); }
    if (Array.isArray(v)) { sized(v.length, 0x90, 15, [null, 0xdc, 0xdd]); v.forEach(value); return; }
    if (typeof v === "object") {
      const keys = Object.keys(v).filter((k) => v[k] !== undefined);
      sized(keys.length, 0x80, 15, [null, 0xde, 0xdf]);
      for (const k of keys) { value(k); value(v[k]); }
      return;
    }
    throw new TypeError(`cannot encode ${typeof v}`);
  }
  value(root);
  return Buffer.concat(parts);
}

// A decoded value with every `Float` unwrapped, for JSON and for code.
function plain(v) {
  if (v instanceof Float) return v.value;
  if (Array.isArray(v)) return v.map(plain);
  if (v !== null && typeof v === "object" && !Buffer.isBuffer(v)) {
    const out = {};
    for (const [k, x] of Object.entries(v)) out[k] = plain(x);
    return out;
  }
  return v;
}

module.exports = { DecodeError, Float, decode, encode, plain };
