// The sources pane: a file tree (folders open on demand, so large repositories stay
// cheap) and a search box that lists matching paths.

import { h, fill, esc } from './dom.js';

const MAX_RESULTS = 300;

export class FileTree {
  /** `el`: the tree container; `onOpen(path)`: a file was picked. */
  constructor(el, onOpen) {
    this.el = el;
    this.onOpen = onOpen;
    this.files = [];
    this.root = null;
    this.current = null;
    this.query = '';
    el.addEventListener('click', (e) => {
      const b = e.target.closest('button.file');
      if (b) this.onOpen(b.dataset.path);
    });
  }

  /** Shows `files` (sorted paths). */
  setFiles(files) {
    this.files = files;
    this.root = { dirs: new Map(), files: [] };
    for (const p of files) {
      const parts = p.split('/');
      let node = this.root;
      for (const d of parts.slice(0, -1)) {
        if (!node.dirs.has(d)) node.dirs.set(d, { dirs: new Map(), files: [] });
        node = node.dirs.get(d);
      }
      node.files.push(p);
    }
    this.render();
  }

  /** Filters by a search text (substring of the path, case-insensitive; all words). */
  search(q) {
    this.query = q.trim().toLowerCase();
    this.render();
  }

  render() {
    if (!this.root) return;
    if (this.query) {
      const words = this.query.split(/\s+/);
      const hits = [];
      for (const p of this.files) {
        const l = p.toLowerCase();
        if (words.every((w) => l.includes(w))) {
          hits.push(p);
          if (hits.length > MAX_RESULTS) break;
        }
      }
      fill(this.el, hits.length === 0 ? h('p', { class: 'empty' }, 'No file matches.') : null,
        hits.slice(0, MAX_RESULTS).map((p) => this.fileButton(p, true)),
        hits.length > MAX_RESULTS ? h('p', { class: 'empty' }, `More than ${MAX_RESULTS} files match: type more.`) : null);
      return;
    }
    fill(this.el, this.files.length === 0 ? h('p', { class: 'empty' }, 'No code files here.') : null,
      this.folder(this.root, ''));
    if (this.current) this.reveal(this.current);
  }

  folder(node, prefix) {
    const out = [];
    for (const name of [...node.dirs.keys()].sort()) {
      const path = prefix ? `${prefix}/${name}` : name;
      const d = h('details', { dataset: { dir: path } }, h('summary', { role: 'treeitem' }, name));
      const kids = h('div', { class: 'kids', role: 'group' });
      d.append(kids);
      // Children are built the first time a folder opens.
      d.addEventListener('toggle', () => {
        if (d.open && !kids.hasChildNodes()) kids.append(...this.folder(node.dirs.get(name), path));
      });
      // A single top folder (src/) opens by itself.
      if (node === this.root && node.dirs.size === 1 && node.files.length < 3) d.open = true;
      out.push(d);
    }
    for (const p of node.files) out.push(this.fileButton(p, false));
    return out;
  }

  fileButton(path, full) {
    const name = path.split('/').pop();
    const b = h('button', { class: 'file', role: 'treeitem', dataset: { path }, title: path });
    if (full) {
      const dir = path.slice(0, path.length - name.length);
      b.innerHTML = `<span class="dir">${this.mark(dir)}</span>${this.mark(name)}`;
    } else b.textContent = name;
    if (path === this.current) b.classList.add('current');
    return b;
  }

  mark(text) {
    const w = this.query.split(/\s+/)[0];
    const i = w ? text.toLowerCase().indexOf(w) : -1;
    if (i < 0) return esc(text);
    return `${esc(text.slice(0, i))}<mark>${esc(text.slice(i, i + w.length))}</mark>${esc(text.slice(i + w.length))}`;
  }

  /** Marks `path` as the open file and opens its folders. */
  reveal(path) {
    this.current = path;
    for (const b of this.el.querySelectorAll('button.file.current')) b.classList.remove('current');
    if (this.query) return;
    const parts = path.split('/');
    let scope = this.el;
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      const d = [...scope.querySelectorAll(':scope > details, :scope > .kids > details')].find((x) => x.dataset.dir === dir);
      if (!d) return;
      if (!d.open) {
        d.open = true;
        const kids = d.querySelector('.kids');
        if (!kids.hasChildNodes()) {
          let node = this.root;
          for (const p of parts.slice(0, i)) node = node.dirs.get(p);
          kids.append(...this.folder(node, dir));
        }
      }
      scope = d.querySelector('.kids');
    }
    const b = [...scope.querySelectorAll(':scope > button.file')].find((x) => x.dataset.path === path);
    if (b) {
      b.classList.add('current');
      b.scrollIntoView({ block: 'nearest' });
    }
  }
}
