// The code pane: line numbers, highlighting, a gutter marker per line that has a rule
// (coloured by status), a cursor line moved with the keyboard.

import { highlight, languageOf } from './highlight.js';

export class CodeView {
  /** `el`: the scrolling container; `onLine(n)`: a line was clicked or Enter pressed. */
  constructor(el, onLine) {
    this.el = el;
    this.onLine = onLine;
    this.lines = [];
    this.rows = null;
    this.cursor = 0;
    this.path = null;
    this.markers = new Map();
    el.addEventListener('click', (e) => {
      const row = e.target.closest('.line');
      if (!row || window.getSelection().toString()) return;
      const n = Number(row.dataset.n);
      this.setCursor(n, false);
      this.onLine(n);
    });
    el.addEventListener('keydown', (e) => this.key(e));
  }

  /** Shows a file's text. */
  show(path, text) {
    this.path = path;
    this.text = text;
    this.lines = text.split('\n');
    if (this.lines.length > 1 && this.lines[this.lines.length - 1] === '') this.lines.pop();
    const html = highlight(this.lines.join('\n'), languageOf(path));
    const parts = new Array(html.length);
    for (let i = 0; i < html.length; i++) {
      const n = i + 1;
      parts[i] = `<div class="line" data-n="${n}"><span class="num">${n}</span><span class="mark"></span><span class="src">${html[i] || ' '}</span></div>`;
    }
    this.el.innerHTML = `<div class="lines">${parts.join('')}</div>`;
    this.rows = this.el.firstChild.children;
    this.cursor = 0;
    this.paintMarkers();
  }

  /** Empties the pane, with a note. */
  clear(note) {
    this.path = null;
    this.lines = [];
    this.rows = null;
    this.el.replaceChildren();
    if (note) {
      const p = document.createElement('p');
      p.className = 'empty';
      p.textContent = note;
      this.el.append(p);
    }
  }

  row(n) {
    return this.rows && n >= 1 && n <= this.rows.length ? this.rows[n - 1] : null;
  }

  /** Moves the cursor line to `n`, scrolling it to the middle when asked. */
  setCursor(n, scroll = true) {
    const old = this.row(this.cursor);
    if (old) old.classList.remove('cursor');
    const r = this.row(n);
    if (!r) return;
    this.cursor = n;
    r.classList.add('cursor');
    if (scroll) r.scrollIntoView({ block: 'center' });
  }

  /** Gutter markers: line → {status, title}. */
  setMarkers(markers) {
    this.markers = markers;
    this.paintMarkers();
  }

  paintMarkers() {
    if (!this.rows) return;
    for (const m of this.el.querySelectorAll('.mark[data-status]')) {
      m.removeAttribute('data-status');
      m.removeAttribute('title');
    }
    for (const [n, { status, title }] of this.markers) {
      const r = this.row(n);
      if (!r) continue;
      const m = r.children[1];
      m.dataset.status = status;
      m.title = title;
    }
  }

  key(e) {
    if (!this.rows || e.altKey || e.ctrlKey || e.metaKey) return;
    const page = Math.max(1, Math.floor(this.el.clientHeight / 19) - 2);
    const moves = { ArrowDown: 1, ArrowUp: -1, j: 1, k: -1, PageDown: page, PageUp: -page };
    if (e.key in moves) {
      e.preventDefault();
      const n = Math.min(this.rows.length, Math.max(1, (this.cursor || 1) + moves[e.key]));
      this.setCursor(n, false);
      this.row(n).scrollIntoView({ block: 'nearest' });
    } else if (e.key === 'Home' || e.key === 'End') {
      e.preventDefault();
      this.setCursor(e.key === 'Home' ? 1 : this.rows.length);
    } else if (e.key === 'Enter' && this.cursor) {
      e.preventDefault();
      this.onLine(this.cursor);
    }
  }
}
