// stream.js: follows GET /v1/events/stream. EventSource cannot send an
// Authorization header, so this reads the answer with fetch() and parses the
// server-sent-event frames itself; after an error or the end of the stream
// it reconnects with since= the last index it saw, so nothing is lost while
// the trail still holds it (the API announces what it no longer holds with
// a gap event).

import { authHeaders } from './api.js';

// A stream sends a keepalive comment every 15 s: silence for longer than
// this means the connection is dead even if the socket does not say so.
const SILENCE_MS = 40000;

export class EventStream {
  // since: the last index already shown. onEvent(frame) gets each frame
  // ({id, event, data}); onState(state, detail) is told 'connecting',
  // 'live', 'retrying' or 'refused'; onRefused(status, body) is awaited
  // on a 401 or 403 before trying again (a new token, say).
  constructor({ since, onEvent, onState, onRefused }) {
    this.last = since;
    this.onEvent = onEvent;
    this.onState = onState;
    this.onRefused = onRefused;
    this.ctrl = null;
    this.stopped = false;
  }

  start() { this.loop(); }

  // restart drops the connection and opens a new one at once (after a
  // token change).
  restart() { this.delay = 0; if (this.ctrl) this.ctrl.abort(); }

  async loop() {
    this.delay = 1000;
    while (!this.stopped) {
      this.ctrl = new AbortController();
      const ctrl = this.ctrl;
      let watchdog = null;
      const feed = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => ctrl.abort(), SILENCE_MS);
      };
      try {
        this.onState('connecting');
        const resp = await fetch('/v1/events/stream?since=' + this.last, {
          headers: authHeaders({ Accept: 'text/event-stream' }), signal: ctrl.signal, cache: 'no-store',
        });
        if (resp.status === 401 || resp.status === 403) {
          let body = {};
          try { body = await resp.json(); } catch { /* the status says enough */ }
          this.onState('refused', body.error || String(resp.status));
          await this.onRefused(resp.status, body);
          continue;
        }
        if (!resp.ok) throw new Error(`the stream answered ${resp.status}`);
        this.onState('live');
        this.delay = 1000;
        feed();
        await readFrames(resp.body, (frame) => {
          feed();
          if (frame.id !== '') this.last = Number(frame.id);
          this.onEvent(frame);
        }, feed);
        this.onState('retrying', 'the stream ended');
      } catch (e) {
        if (this.stopped) return;
        this.onState('retrying', ctrl.signal.aborted ? 'reconnecting' : e.message);
      } finally {
        clearTimeout(watchdog);
      }
      await new Promise((r) => setTimeout(r, this.delay));
      this.delay = Math.min(Math.max(this.delay, 500) * 2, 10000);
    }
  }
}

// readFrames reads a text/event-stream body and calls onFrame for each
// frame that carries a field; comments (": keepalive") only call onBytes.
export async function readFrames(body, onFrame, onBytes) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    // Lines end in \n, \r\n or \r. A \r at the end of what came so far may
    // be the first half of \r\n: it waits for the next chunk, unless the
    // body ended.
    const keepCR = !done && (buf + (value || '')).endsWith('\r');
    buf += value || '';
    const text = (keepCR ? buf.slice(0, -1) : buf).replace(/\r\n?/g, '\n');
    let start = 0;
    let end;
    while ((end = text.indexOf('\n\n', start)) >= 0) {
      const frame = parseFrame(text.slice(start, end));
      if (frame) onFrame(frame);
      start = end + 2;
    }
    if (done) return;
    if (onBytes) onBytes();
    buf = text.slice(start) + (keepCR ? '\r' : '');
  }
}

export function parseFrame(block) {
  const frame = { id: '', event: 'message', data: '' };
  const data = [];
  let fields = 0;
  for (const line of block.split('\n')) {
    if (line === '' || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (name === 'id') frame.id = value;
    else if (name === 'event') frame.event = value;
    else if (name === 'data') data.push(value);
    else continue;
    fields++;
  }
  if (fields === 0) return null;
  frame.data = data.join('\n');
  return frame;
}
