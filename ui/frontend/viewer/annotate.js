// SlideLens annotation layer (prepended to viewer.js). Annotorious for OpenSeadragon, served same-origin under
// /tiles/_static/annotorious/, draws and edits rectangles and polygons; freehand outlines and points are drawn here.
// The browser keeps no copy of its own: every create / edit / delete / undo goes to Python as an op (state value
// "anno_ops", a queue until Python acknowledges each op id), Python stores it through the review database (audited,
// stale versions refused) and sends the slide's annotations back in `data.annotations`.

const ANNO_SRC = "/tiles/_static/annotorious/annotorious-openseadragon.js";
const ANNO_CSS = "/tiles/_static/annotorious/annotorious-openseadragon.css";
const TOOLS = ["select", "rectangle", "polygon", "freehand", "point"];

function loadAnno() {
  if (window.AnnotoriousOSD) return Promise.resolve(window.AnnotoriousOSD);
  if (!window.__slidelensAnno) {
    window.__slidelensAnno = new Promise((resolve, reject) => {
      const css = document.createElement("link");
      css.rel = "stylesheet";
      css.href = ANNO_CSS;
      document.head.appendChild(css);
      const s = document.createElement("script");
      s.src = ANNO_SRC;
      s.onload = () => resolve(window.AnnotoriousOSD);
      s.onerror = () => reject(new Error("Annotorious could not be loaded from " + ANNO_SRC + " (run `make install`)"));
      document.head.appendChild(s);
    });
  }
  return window.__slidelensAnno;
}

function annoBarHtml() {
  return `
    <div class="slv-anno-bar">
      <label title="show the annotation layer"><input type="checkbox" class="slv-an-toggle" checked> annotations</label>
      <label title="the attention overlay's checkbox shows and hides the annotations too">
        <input type="checkbox" class="slv-an-link"> with overlay</label>
      <span class="slv-an-tools">${TOOLS.map((t) => `<button type="button" data-tool="${t}">${t}</button>`).join("")}</span>
      <label>class <select class="slv-an-class"></select></label><span class="slv-an-swatch"></span>
      <input type="text" class="slv-an-note" maxlength="2000" placeholder="note (optional)">
      <button type="button" class="slv-an-delete" title="delete the selected annotation">delete</button>
      <button type="button" class="slv-an-undo" title="undo your last annotation change">undo</button>
    </div>`;
}

const round2 = (v) => Math.round(v * 100) / 100;

function boundsOf(pts) {
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  return { minX: Math.min(...xs), minY: Math.min(...ys), maxX: Math.max(...xs), maxY: Math.max(...ys) };
}

function openRing(r) { // GeoJSON rings repeat the first point; Annotorious's do not
  const n = r.length;
  const pts = r.map((p) => [p[0], p[1]]);
  return n > 1 && r[0][0] === r[n - 1][0] && r[0][1] === r[n - 1][1] ? pts.slice(0, -1) : pts;
}

function closeRing(pts) {
  const r = pts.map((p) => [round2(p[0]), round2(p[1])]);
  return [...r, [r[0][0], r[0][1]]];
}

// a stored GeoJSON geometry (level-0 pixels) as an Annotorious selector; points are OSD overlays instead (null)
function toSelector(g) {
  if (g.type === "Polygon" && g.coordinates.length === 1) {
    const points = openRing(g.coordinates[0]);
    return { type: "POLYGON", geometry: { points, bounds: boundsOf(points) } };
  }
  if (g.type === "Polygon" || g.type === "MultiPolygon") {
    const polys = g.type === "Polygon" ? [g.coordinates] : g.coordinates;
    const polygons = polys.map((rings) => {
      const rs = rings.map((r) => ({ points: openRing(r) }));
      return { rings: rs, bounds: boundsOf(rs[0].points) };
    });
    return { type: "MULTIPOLYGON",
             geometry: { polygons, bounds: boundsOf(polygons.flatMap((p) => p.rings[0].points)) } };
  }
  if (g.type === "LineString") {
    const points = g.coordinates.map((p) => ({ type: "CORNER", point: [p[0], p[1]] }));
    return { type: "POLYLINE", geometry: { points, closed: false, bounds: boundsOf(g.coordinates) } };
  }
  return null;
}

// an Annotorious selector as a GeoJSON geometry in level-0 pixels
function toGeometry(sel) {
  const g = sel.geometry;
  if (sel.type === "RECTANGLE") {
    return { type: "Polygon", coordinates: [closeRing([[g.x, g.y], [g.x + g.w, g.y], [g.x + g.w, g.y + g.h],
                                                        [g.x, g.y + g.h]])] };
  }
  if (sel.type === "POLYGON") return { type: "Polygon", coordinates: [closeRing(g.points)] };
  if (sel.type === "MULTIPOLYGON") {
    const polys = g.polygons.map((p) => p.rings.map((r) => closeRing(r.points)));
    return polys.length === 1 ? { type: "Polygon", coordinates: polys[0] } : { type: "MultiPolygon", coordinates: polys };
  }
  return null;
}

function annoData(st) { return (st.data && st.data.annotations) || null; }
function colourOf(st, cls) { const a = annoData(st); return (a && a.colours[cls]) || "#1f77b4"; }

function buildAnno(st) {
  const q = (sel) => st.root.querySelector(sel);
  st.an = { anno: null, tool: "select", selected: null, pending: [], seq: 0, key: null, byAnno: new Map(),
            points: [], path: null, preview: null, shownMsg: null,
            inst: Math.random().toString(36).slice(2, 10),
            el: { bar: q(".slv-anno-bar"), toggle: q(".slv-an-toggle"), link: q(".slv-an-link"), cls: q(".slv-an-class"),
                  swatch: q(".slv-an-swatch"), note: q(".slv-an-note"), del: q(".slv-an-delete"),
                  undo: q(".slv-an-undo"), msg: q(".slv-an-msg"), tools: [...st.root.querySelectorAll("[data-tool]")] } };
  st.root.dataset.annotations = "on";
  st.root.dataset.annoTool = "select";
}

function canEdit(st) { const a = annoData(st); return !!(a && a.can_edit); }

function say(st, text, kind) {
  st.an.el.msg.textContent = text || "";
  st.an.el.msg.dataset.kind = kind || "";
}

function send(st, op) {
  const an = st.an;
  if (!canEdit(st)) { say(st, (annoData(st) || {}).why_not || "annotations cannot be changed here", "error"); return; }
  an.seq += 1;
  const full = { ...op, op_id: `${an.inst}:${an.seq}`, image_id: st.imageId };
  an.pending = an.pending.concat([full]);
  st.setStateValue("anno_ops", an.pending.slice());
  say(st, "saving…", "");
}

function selectedItem(st) { return st.an.selected; }

function reflectSelection(st) {
  const an = st.an;
  const item = an.selected;
  if (item) {
    an.el.cls.value = item.cls;
    an.el.note.value = item.note || "";
  }
  an.el.del.disabled = !item || !canEdit(st);
  an.el.swatch.style.background = colourOf(st, an.el.cls.value);
  st.root.dataset.annoSelected = item ? String(item.id) : "";
  for (const p of an.points) p.el.classList.toggle("slv-an-point-sel", !!item && p.item.id === item.id);
}

function setTool(st, tool) {
  const an = st.an;
  if (tool !== "select" && !canEdit(st)) { say(st, annoData(st).why_not, "error"); tool = "select"; }
  an.tool = tool;
  st.root.dataset.annoTool = tool;
  for (const b of an.el.tools) b.classList.toggle("on", b.dataset.tool === tool);
  if (!an.anno) return;
  if (tool === "rectangle" || tool === "polygon") {
    an.anno.setDrawingTool(tool);
    an.anno.setDrawingMode(tool === "rectangle" ? "drag" : "click"); // polygon: click each vertex
    an.anno.setDrawingEnabled(true);
  } else {
    an.anno.cancelDrawing();
    an.anno.setDrawingEnabled(false);
  }
}

function applyVisibility(st) {
  const an = st.an;
  const on = an.el.toggle.checked;
  if (an.anno) an.anno.setVisible(on);
  for (const p of an.points) p.el.style.display = on ? "" : "none";
  st.root.dataset.annotations = on ? "on" : "off";
}

function fillClasses(st, a) {
  const sel = st.an.el.cls;
  const want = a.classes.join("\n");
  if (sel.dataset.list === want) return;
  const keep = sel.value;
  sel.innerHTML = "";
  for (const c of a.classes) { const o = document.createElement("option"); o.value = c; o.textContent = c; sel.appendChild(o); }
  sel.dataset.list = want;
  sel.value = a.classes.includes(keep) ? keep : a.classes[0] || "";
}

function addPoint(st, OSD, item) {
  const an = st.an;
  const el = document.createElement("div");
  el.className = "slv-an-point";
  el.style.background = colourOf(st, item.cls);
  el.title = item.cls + (item.note ? `: ${item.note}` : ""); // a title attribute is text, never markup
  el.dataset.annId = String(item.id);
  const [x, y] = item.geometry.coordinates;
  st.viewer.addOverlay({ element: el, location: slideItem(st).imageToViewportCoordinates(x, y),
                         placement: OSD.Placement.CENTER, checkResize: false });
  new OSD.MouseTracker({ element: el, clickHandler: (e) => {
    e.preventDefaultAction = true;
    if (an.anno) an.anno.cancelSelected();
    an.selected = item;
    reflectSelection(st);
  } });
  an.points.push({ el, item });
}

// the slide's stored annotations into the layer, when they changed (ids, versions, classes)
function syncAnnotations(st, OSD) {
  const an = st.an;
  const a = annoData(st);
  an.el.bar.style.display = a ? "" : "none";
  if (!a || !an.anno) return;
  fillClasses(st, a);
  const done = new Set(a.done || []);
  an.pending = an.pending.filter((o) => !done.has(o.op_id));
  if (a.message && a.message.nonce !== an.shownMsg) { an.shownMsg = a.message.nonce; say(st, a.message.text, a.message.kind); }
  else if (!an.pending.length && an.el.msg.textContent === "saving…") say(st, "", "");
  for (const b of an.el.tools) b.disabled = b.dataset.tool !== "select" && !a.can_edit;
  an.el.undo.disabled = !a.can_edit || !a.can_undo;
  an.el.note.disabled = !a.can_edit;
  const key = `${st.imageId}|` + a.items.map((i) => `${i.id}:${i.version}`).join(",");
  if (key !== an.key) {
    an.key = key;
    an.byAnno = new Map();
    const shapes = [];
    for (const item of a.items) {
      const sel = toSelector(item.geometry);
      if (!sel) continue;
      const id = `sl-${item.id}`;
      an.byAnno.set(id, item);
      shapes.push({ id, bodies: [], target: { annotation: id, selector: sel } });
    }
    const sid = an.selected && an.selected.id;
    an.anno.cancelSelected(); // a shape still in the editor would stay hidden once replaced
    an.anno.setAnnotations(shapes, true);
    for (const p of an.points) st.viewer.removeOverlay(p.el);
    an.points = [];
    for (const item of a.items) if (item.geometry.type === "Point") addPoint(st, OSD, item);
    an.selected = a.items.find((i) => i.id === sid) || null; // the selection survives a refresh
    if (an.selected && an.byAnno.has(`sl-${sid}`)) an.anno.setSelected(`sl-${sid}`);
    st.root.dataset.annoCount = String(a.items.length);
    st.root.dataset.annoKey = key;
  }
  applyVisibility(st);
  reflectSelection(st);
}

function previewPath(st) {
  const an = st.an;
  if (!an.preview) {
    an.preview = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    an.preview.setAttribute("class", "slv-an-preview");
    an.preview.innerHTML = "<polyline fill='none' stroke-width='2'/>";
    st.osd.appendChild(an.preview);
  }
  const line = an.preview.firstChild;
  line.setAttribute("stroke", colourOf(st, an.el.cls.value));
  line.setAttribute("points", an.path ? an.path.screen.map((p) => `${p.x},${p.y}`).join(" ") : "");
}

// Annotorious converts through viewer.viewport, which is ambiguous (and logs an error on every call) with the overlay
// as a second layer: the viewport's image conversions are pinned to the slide's own tiled image, level-0 pixels.
const PINNED = ["viewportToImageCoordinates", "imageToViewportCoordinates", "viewportToImageRectangle",
                "imageToViewportRectangle", "viewportToImageZoom", "imageToViewportZoom"];

function pinViewportToSlide(viewer) {
  const vp = viewer.viewport;
  if (vp.__slvPinned) return;
  vp.__slvPinned = true;
  for (const name of PINNED) {
    const own = vp[name].bind(vp);
    vp[name] = (...args) => {
      const item = viewer.world.getItemAt(0);
      return item ? item[name](...args) : own(...args);
    };
  }
}

function createAnno(st, OSD, A) {
  const an = st.an;
  const viewer = st.viewer;
  pinViewportToSlide(viewer);
  const anno = A.createOSDAnnotator(viewer, {
    drawingEnabled: false, drawingMode: "click",
    userSelectAction: (a) => {
      const item = an.byAnno.get(a.id);
      return !canEdit(st) || (item && item.geometry.type === "LineString") ? "SELECT" : "EDIT";
    },
    style: (a) => {
      const item = an.byAnno.get(a.id);
      const c = colourOf(st, item ? item.cls : an.el.cls.value);
      return { fill: c, fillOpacity: 0.12, stroke: c, strokeOpacity: 1, strokeWidth: 2 };
    },
  });
  an.anno = anno;
  window.__slidelensAnnotator = anno;
  anno.on("createAnnotation", (a) => {
    const geometry = toGeometry(a.target.selector);
    if (geometry) send(st, { op: "create", geometry, cls: an.el.cls.value, note: an.el.note.value });
    an.key = null; // the next data replaces the drawn shape with the stored one
  });
  anno.on("updateAnnotation", (a) => {
    const item = an.byAnno.get(a.id);
    const geometry = item && toGeometry(a.target.selector);
    if (geometry) send(st, { op: "edit", id: item.id, version: item.version, changes: { geometry } });
  });
  anno.on("deleteAnnotation", (a) => {
    const item = an.byAnno.get(a.id);
    if (item) send(st, { op: "delete", id: item.id, version: item.version });
  });
  anno.on("selectionChanged", (sel) => {
    an.selected = sel && sel.length ? an.byAnno.get(sel[0].id) || null : null;
    reflectSelection(st);
  });
  for (const b of an.el.tools) b.addEventListener("click", () => setTool(st, b.dataset.tool));
  an.el.toggle.addEventListener("change", () => applyVisibility(st));
  st.el.toggle.addEventListener("change", () => {
    if (!an.el.link.checked) return;
    an.el.toggle.checked = st.el.toggle.checked;
    applyVisibility(st);
  });
  an.el.cls.addEventListener("change", () => {
    const item = selectedItem(st);
    if (item && item.cls !== an.el.cls.value) {
      send(st, { op: "edit", id: item.id, version: item.version, changes: { cls: an.el.cls.value } });
    }
    reflectSelection(st);
  });
  an.el.note.addEventListener("change", () => {
    const item = selectedItem(st);
    if (item && (item.note || "") !== an.el.note.value) {
      send(st, { op: "edit", id: item.id, version: item.version, changes: { note: an.el.note.value } });
    }
  });
  an.el.del.addEventListener("click", () => {
    const item = selectedItem(st);
    if (item) send(st, { op: "delete", id: item.id, version: item.version });
  });
  an.el.undo.addEventListener("click", () => send(st, { op: "undo" }));
  // freehand: press, drag, release draws one outline; point: a click places one
  const toImage = (pos) => slideItem(st).viewerElementToImageCoordinates(pos);
  viewer.addHandler("canvas-press", (e) => {
    if (an.tool !== "freehand" || !canEdit(st)) return;
    an.path = { image: [toImage(e.position)], screen: [e.position] };
  });
  viewer.addHandler("canvas-drag", (e) => {
    if (an.tool !== "freehand" && an.tool !== "point") return;
    e.preventDefaultAction = true; // no panning while these tools draw
    if (!an.path) return;
    const last = an.path.screen[an.path.screen.length - 1];
    if (Math.hypot(e.position.x - last.x, e.position.y - last.y) < 3) return;
    an.path.image.push(toImage(e.position));
    an.path.screen.push(e.position);
    previewPath(st);
  });
  viewer.addHandler("canvas-drag-end", (e) => { if (an.tool === "freehand") e.preventDefaultAction = true; });
  viewer.addHandler("canvas-release", () => {
    if (an.tool !== "freehand" || !an.path) return;
    const pts = an.path.image.map((p) => [p.x, p.y]);
    an.path = null;
    previewPath(st);
    if (pts.length < 3) { say(st, "a freehand outline needs a longer stroke", "error"); return; }
    send(st, { op: "create", geometry: { type: "Polygon", coordinates: [closeRing(pts)] }, cls: an.el.cls.value,
               note: an.el.note.value });
  });
  viewer.addHandler("canvas-click", (e) => {
    if (an.tool === "point" && e.quick && canEdit(st)) {
      const p = toImage(e.position);
      send(st, { op: "create", geometry: { type: "Point", coordinates: [round2(p.x), round2(p.y)] },
                 cls: an.el.cls.value, note: an.el.note.value });
    } else if (an.tool === "select" && an.selected && an.selected.geometry.type === "Point") {
      an.selected = null;
      reflectSelection(st);
    }
  });
  setTool(st, "select");
}

// called from viewer.js once the slide is open (and on every later run): load Annotorious once, then sync
function updateAnnotations(st, OSD) {
  if (!st.an) return;
  if (!annoData(st)) { st.an.el.bar.style.display = "none"; return; }
  if (st.an.anno) { syncAnnotations(st, OSD); return; }
  if (st.an.loading) return;
  st.an.loading = true;
  loadAnno().then((A) => {
    if (!st.viewer) return;
    createAnno(st, OSD, A);
    syncAnnotations(st, OSD);
  }).catch((err) => { say(st, String(err.message || err), "error"); });
}
