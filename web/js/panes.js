// Resizable panes: each splitter sets one CSS variable of the grid; sizes are kept in
// localStorage. Splitters take the arrow keys too.

const KEY = 'nonstop.panes';

export function initPanes(grid) {
  const saved = JSON.parse(localStorage.getItem(KEY) || '{}');
  for (const [k, v] of Object.entries(saved)) grid.style.setProperty(k, v);
  const save = () => {
    const out = {};
    for (const s of grid.querySelectorAll('.split')) {
      const v = grid.style.getPropertyValue(s.dataset.var);
      if (v) out[s.dataset.var] = v;
    }
    localStorage.setItem(KEY, JSON.stringify(out));
  };
  for (const split of grid.querySelectorAll('.split')) {
    const vertical = split.classList.contains('v');
    const invert = split.hasAttribute('data-invert');
    const name = split.dataset.var;
    const set = (px) => {
      const r = grid.getBoundingClientRect();
      const total = vertical ? r.width : r.height;
      const v = Math.round(Math.max(120, Math.min(total - 220, px)));
      grid.style.setProperty(name, `${v}px`);
    };
    const current = () => {
      const pane = vertical ? (invert ? split.nextElementSibling : split.previousElementSibling) : split.nextElementSibling;
      const r = pane.getBoundingClientRect();
      return vertical ? r.width : r.height;
    };
    split.addEventListener('pointerdown', (e) => {
      e.preventDefault();
      split.setPointerCapture(e.pointerId);
      split.classList.add('dragging');
      const move = (ev) => {
        const r = grid.getBoundingClientRect();
        if (vertical) set(invert ? r.right - ev.clientX : ev.clientX - r.left);
        else set(invert ? r.bottom - ev.clientY : ev.clientY - r.top);
      };
      const up = () => {
        split.classList.remove('dragging');
        split.removeEventListener('pointermove', move);
        split.removeEventListener('pointerup', up);
        save();
      };
      split.addEventListener('pointermove', move);
      split.addEventListener('pointerup', up);
    });
    split.addEventListener('keydown', (e) => {
      const grow = vertical ? { ArrowRight: 1, ArrowLeft: -1 } : { ArrowDown: 1, ArrowUp: -1 };
      if (!(e.key in grow)) return;
      e.preventDefault();
      set(current() + grow[e.key] * (invert ? -20 : 20));
      save();
    });
  }
}
