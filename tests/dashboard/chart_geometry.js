// Geometry of every Vega chart on a Streamlit page, read from the SVG the browser rendered
// (tests/dashboard/test_browser.py): data marks drawn, bar sizes, and pairs of visible labels
// (axis, legend, text marks) whose rotated boxes overlap by more than TOL px.
() => {
  const TOL = 3;
  // corners of an SVG element's local bbox in screen coordinates (rotation included)
  const quad = (el) => {
    const b = el.getBBox(), m = el.getScreenCTM();
    return [[b.x, b.y], [b.x + b.width, b.y], [b.x + b.width, b.y + b.height], [b.x, b.y + b.height]]
      .map(([x, y]) => [m.a * x + m.c * y + m.e, m.b * x + m.d * y + m.f]);
  };
  // separating-axis test for two convex quads; boxes overlapping by less than TOL px do not count
  // (a text's box includes its font's ascent and descent, which stacked legend rows share)
  const overlap = (p, q) => {
    for (const poly of [p, q]) {
      for (let i = 0; i < 4; i++) {
        const [x1, y1] = poly[i], [x2, y2] = poly[(i + 1) % 4];
        const nx = y2 - y1, ny = x1 - x2, len = Math.hypot(nx, ny) || 1;
        const proj = (pts) => pts.map(([x, y]) => (x * nx + y * ny) / len);
        const a = proj(p), b = proj(q);
        if (Math.max(...a) - TOL <= Math.min(...b) || Math.max(...b) - TOL <= Math.min(...a)) return false;
      }
    }
    return true;
  };
  const visible = (el) => {
    const s = getComputedStyle(el);
    const op = parseFloat(el.getAttribute('opacity') ?? '1') * parseFloat(el.getAttribute('fill-opacity') ?? '1');
    return s.visibility !== 'hidden' && s.display !== 'none' && op > 0 && (el.textContent || '').trim() !== '';
  };
  return Array.from(document.querySelectorAll('.vega-embed')).map((embed, idx) => {
    const svg = embed.querySelector('svg.marks') || embed.querySelector('svg');
    const out = {idx, width: embed.getBoundingClientRect().width, height: embed.getBoundingClientRect().height,
                 svg: !!svg, marks: 0, drawn: 0, bars: [], overlaps: []};
    if (!svg) return out;
    // data marks: everything under a role-mark group that is not an axis, legend, title or text
    const markEls = Array.from(svg.querySelectorAll('g.role-mark > path, g.role-mark > line, g.role-mark > rect'))
      .filter(e => !e.closest('.role-axis, .role-legend, .role-title'));
    out.marks = markEls.length;
    for (const e of markEls) {
      const r = e.getBoundingClientRect();
      if (r.width > 0.5 || r.height > 0.5) out.drawn++;
      if (e.closest('g.mark-rect') && !e.closest('.role-axis')) {
        out.bars.push({w: r.width, h: r.height});
      }
    }
    const labels = Array.from(svg.querySelectorAll('g.role-axis-label text, g.role-legend-label text, g.mark-text text'))
      .filter(visible);
    const quads = labels.map(quad);
    for (let i = 0; i < labels.length; i++)
      for (let j = i + 1; j < labels.length; j++)
        if (overlap(quads[i], quads[j])) out.overlaps.push([labels[i].textContent, labels[j].textContent]);
    return out;
  });
}
