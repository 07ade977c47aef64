// The transport under the SDK: requests with the token, the API's error
// shape as ForgeError, option names in either case, and server-sent events.

/** A failed call: the API's error code, the HTTP status and the message. */
export class ForgeError extends Error {
  constructor(status, code, message, fields = []) {
    super(message);
    this.name = "ForgeError";
    /** The HTTP status; 0 when the forge could not be reached. */
    this.status = status;
    /** The API's error code (`not_found`, `quota`, ...), or `network`. */
    this.code = code;
    /** For invalid fields: `[{ field, message }]`, every problem at once. */
    this.fields = fields;
  }

  /** The error an answer that is not 2xx stands for. */
  static async fromResponse(response) {
    const text = await response.text().catch(() => "");
    try {
      const { error } = JSON.parse(text);
      if (error && typeof error.code === "string" && typeof error.message === "string") {
        const fields = Array.isArray(error.fields) ? error.fields : [];
        return new ForgeError(response.status, error.code, error.message, fields);
      }
    } catch {
      // Not the API's error shape (a proxy's page, say): the status says it.
    }
    const message = text.trim().slice(0, 500) || response.statusText || "no message";
    return new ForgeError(response.status, `http_${response.status}`, message);
  }
}

/** Keys whose values are maps of the caller's own names, left as they are. */
const VERBATIM = new Set(["env", "labels"]);

/** `idleTimeoutSeconds` → `idle_timeout_secs`; snake_case stays. */
export function wireName(key) {
  const snake = key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
  return snake.endsWith("_seconds") ? `${snake.slice(0, -"_seconds".length)}_secs` : snake;
}

/** Options with every key in the API's spelling (nested objects too). */
export function toWire(value) {
  if (Array.isArray(value)) {
    return value.map(toWire);
  }
  if (value === null || typeof value !== "object" || value instanceof Uint8Array) {
    return value;
  }
  const out = {};
  for (const [key, inner] of Object.entries(value)) {
    if (inner === undefined) {
      continue;
    }
    const name = wireName(key);
    if (name in out) {
      throw new ForgeError(0, "bad_request", `option ${key} is given twice (as ${name})`);
    }
    out[name] = VERBATIM.has(name) ? inner : toWire(inner);
  }
  return out;
}

/**
 * A segment `.` or `..` (escaped or not: URLs resolve `%2e%2e` too) would
 * move the request to another endpoint of the API; it is refused before
 * anything is sent.
 */
function segment(raw) {
  const text = String(raw);
  if (text === "" || /^(\.|%2e){1,2}$/i.test(text)) {
    throw new ForgeError(0, "bad_request", `${JSON.stringify(text)} is not allowed as a path segment`);
  }
  return encodeURIComponent(text);
}

/**
 * A path for a VM's server, as given (already escaped, a query allowed),
 * refused when a URL could resolve it out of the server's space: dot
 * segments (escaped or not), `\` (a `/` to URLs) and control characters
 * (which URLs drop).
 */
export function relativePath(path) {
  const text = String(path).replace(/^\/+/, "");
  const end = text.search(/[?#]/);
  const pathPart = end < 0 ? text : text.slice(0, end);
  const leaves =
    /[\x00-\x1f\x7f\\]/.test(text) ||
    pathPart.split("/").some((part) => /^(\.|%2e){1,2}$/i.test(part));
  if (leaves) {
    throw new ForgeError(0, "bad_request", `${JSON.stringify(path)} leaves the server's path`);
  }
  return text;
}

/** Each path segment escaped; `/` between them kept. */
export function pathOf(...segments) {
  return segments.map(segment).join("/");
}

/** A file path inside a VM as the files endpoint takes it. */
export function filePath(path) {
  const trimmed = String(path).replace(/^\/+/, "");
  const parts = trimmed.split("/");
  // A directory's trailing `/` is kept; other empty segments are refused.
  const last = parts.length > 1 && parts.at(-1) === "" ? parts.pop() : undefined;
  return [...parts.map(segment), ...(last === undefined ? [] : [""])].join("/");
}

export class Transport {
  constructor({ baseUrl, token, fetch: fetchImpl }) {
    if (!baseUrl) {
      throw new ForgeError(0, "bad_request", "no baseUrl: pass one, or set FORGE_URL");
    }
    this.baseUrl = String(baseUrl).replace(/\/+$/, "");
    this.token = token;
    this.fetch = fetchImpl ?? globalThis.fetch;
    if (typeof this.fetch !== "function") {
      throw new ForgeError(0, "bad_request", "no fetch: Node 20 or later, Bun, or pass one");
    }
  }

  url(path, query) {
    const url = new URL(`${this.baseUrl}${path}`);
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== undefined && value !== null) {
        url.searchParams.set(wireName(key), String(value));
      }
    }
    return url;
  }

  headers(extra) {
    const headers = { ...extra };
    if (this.token) {
      headers.authorization = `Bearer ${this.token}`;
    }
    return headers;
  }

  /**
   * One call; the response when it is 2xx, else the ForgeError it stands
   * for. `json` is sent as JSON (keys in the API's spelling), `bytes` as
   * the raw body.
   */
  async send(method, path, { query, json, bytes, accept, signal } = {}) {
    const headers = this.headers(accept ? { accept } : {});
    let body;
    if (json !== undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(toWire(json));
    } else if (bytes !== undefined) {
      headers["content-type"] = "application/octet-stream";
      body = typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes;
    }
    let response;
    try {
      response = await this.fetch(this.url(path, query), { method, headers, body, signal });
    } catch (error) {
      if (error?.name === "AbortError") {
        throw error;
      }
      throw new ForgeError(0, "network", `${method} ${path}: ${error?.message ?? error}`);
    }
    if (!response.ok) {
      throw await ForgeError.fromResponse(response);
    }
    return response;
  }

  /** A call answered with JSON (or nothing, for 204). */
  async json(method, path, options) {
    const response = await this.send(method, path, options);
    if (response.status === 204) {
      return undefined;
    }
    return response.json();
  }
}

/**
 * The server-sent events of `response`, as `{ event, data }` with `data`
 * parsed as JSON when it is.
 */
export async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        break;
      }
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const parsed = parseEvent(block);
        if (parsed) {
          yield parsed;
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) {
      continue;
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) {
      value = value.slice(1);
    }
    if (field === "event") {
      event = value;
    } else if (field === "data") {
      data.push(value);
    }
  }
  if (data.length === 0) {
    return null;
  }
  const text = data.join("\n");
  try {
    return { event, data: JSON.parse(text) };
  } catch {
    return { event, data: text };
  }
}
