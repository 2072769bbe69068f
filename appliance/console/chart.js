// A small SVG line chart for live series: fixed number of points, newest on the right.

const NS = 'http://www.w3.org/2000/svg';

function el(name, attrs) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

/** A live line chart in `host` with a title, a unit and up to `size` points. */
export class LineChart {
  constructor(host, { title, unit = '', size = 60, digits = 1 }) {
    this.size = size;
    this.unit = unit;
    this.digits = digits;
    this.points = [];
    host.classList.add('chart');
    const head = document.createElement('div');
    const h = document.createElement('h3');
    h.textContent = title;
    this.now = document.createElement('div');
    this.now.className = 'now';
    this.now.textContent = '–';
    head.append(h, this.now);
    this.svg = el('svg', { viewBox: '0 0 300 100', preserveAspectRatio: 'none', role: 'img' });
    this.label = el('title', {});
    this.label.textContent = `${title}: no data yet`;
    this.title = title;
    this.area = el('path', { class: 'area' });
    this.line = el('path', { class: 'line' });
    this.svg.append(this.label, el('line', { class: 'axis', x1: 0, y1: 99, x2: 300, y2: 99 }), this.area, this.line);
    this.max = document.createElement('small');
    this.max.className = 'muted';
    host.append(head, this.svg, this.max);
  }

  /** Appends a value (a number, or null for a gap in knowledge shown as nothing). */
  push(value) {
    this.points.push(value);
    if (this.points.length > this.size) this.points.shift();
    this.draw();
  }

  draw() {
    const known = this.points.filter((p) => typeof p === 'number' && Number.isFinite(p));
    const last = this.points[this.points.length - 1];
    const fmt = (v) => `${v.toFixed(this.digits)}${this.unit ? ' ' + this.unit : ''}`;
    this.now.textContent = typeof last === 'number' ? fmt(last) : '–';
    if (!known.length) {
      this.line.setAttribute('d', '');
      this.area.setAttribute('d', '');
      return;
    }
    const top = Math.max(...known) || 1;
    const step = 300 / Math.max(this.size - 1, 1);
    const offset = this.size - this.points.length;
    let d = '';
    let first = null;
    let lastX = 0;
    this.points.forEach((p, i) => {
      if (typeof p !== 'number') return;
      const x = (offset + i) * step;
      const y = 98 - (p / top) * 92;
      d += `${d ? 'L' : 'M'}${x.toFixed(1)},${y.toFixed(1)}`;
      if (first === null) first = x;
      lastX = x;
    });
    this.line.setAttribute('d', d);
    this.area.setAttribute('d', `${d}L${lastX.toFixed(1)},99L${first.toFixed(1)},99Z`);
    this.max.textContent = `peak ${fmt(top)} over the last ${this.points.length} samples`;
    this.label.textContent = `${this.title}: now ${typeof last === 'number' ? fmt(last) : 'unknown'}, peak ${fmt(top)}`;
  }
}
