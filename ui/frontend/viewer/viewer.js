// SlideLens slide viewer: OpenSeadragon (served same-origin under /tiles/_static/osd/) with the attention overlay
// as a second tiled image on the same Deep Zoom grid. Streamlit components v2 calls the default export on every
// script run with new `data`; the viewer lives on the container element and is only updated, never rebuilt.
// The annotation layer (annotate.js, prepended to this file by ui/viewer_component.py) adds a second toolbar.

const OSD_SRC = "/tiles/_static/osd/openseadragon.min.js";

function loadOsd() {
  if (window.OpenSeadragon) return Promise.resolve(window.OpenSeadragon);
  if (!window.__slidelensOsd) {
    window.__slidelensOsd = new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = OSD_SRC;
      s.onload = () => resolve(window.OpenSeadragon);
      s.onerror = () => reject(new Error("OpenSeadragon could not be loaded from " + OSD_SRC + " (run `make install`)"));
      document.head.appendChild(s);
    });
  }
  return window.__slidelensOsd;
}

function tileSource(d, base, query) {
  return {
    width: d.width, height: d.height, tileSize: d.tile_size, tileOverlap: d.overlap,
    getTileUrl: (level, x, y) => `${base}${level}/${x}_${y}.${base.includes("/attention/") ? "png" : "jpeg"}${query}`,
  };
}

function niceLength(um) {
  const p = Math.pow(10, Math.floor(Math.log10(um)));
  for (const m of [1, 2, 5, 10]) if (m * p >= um) return m * p;
  return 10 * p;
}

function build(root) {
  root.innerHTML = `
    <div class="slv-bar">
      <label><input type="checkbox" class="slv-ov-toggle" checked> attention overlay</label>
      <label>opacity <input type="range" class="slv-ov-opacity" min="0" max="1" step="0.05" value="0.7"></label>
      <label>colours <select class="slv-cmap"></select></label>
      <label title="rank: uniform by rank; percentile: clip to the 1st..99th percentile; minmax: raw range">rescale
        <select class="slv-rescale"></select></label>
      <label title="show only the most attended fraction of patches">top
        <input type="range" class="slv-top" min="0.01" max="1" step="0.01" value="0.2"><span class="slv-top-v">20%</span></label>
      <label title="opacity follows attention: low attention fades into the tissue"><input type="checkbox" class="slv-fade" checked> fade</label>
      <label title="blocks: one square per patch; smooth: interpolated between patch centres">draw
        <select class="slv-render"></select></label>
      <label class="slv-legend" title="low attention to high attention"><span>low</span><span class="slv-legend-bar"></span><span>high</span></label>
      <span class="slv-mag" title="magnification at the current zoom"></span><span class="slv-hover"></span>
      <button type="button" class="slv-full-btn" title="full page (Esc leaves)">Full page</button>
    </div>${annoBarHtml()}
    <div class="slv-osd"><div class="slv-scale"><div class="slv-scale-bar"></div><span></span></div>
      <div class="slv-note"></div><div class="slv-error"></div><div class="slv-an-msg"></div></div>`;
  const q = (sel) => root.querySelector(sel);
  const el = { bar: q(".slv-bar"), toggle: q(".slv-ov-toggle"), opacity: q(".slv-ov-opacity"), cmap: q(".slv-cmap"),
               rescale: q(".slv-rescale"), top: q(".slv-top"), topV: q(".slv-top-v"), fade: q(".slv-fade"),
               render: q(".slv-render"), legendBar: q(".slv-legend-bar"), mag: q(".slv-mag"), hover: q(".slv-hover"),
               full: q(".slv-full-btn"), scale: q(".slv-scale"), scaleBar: q(".slv-scale-bar"),
               scaleText: q(".slv-scale span"), note: q(".slv-note"), error: q(".slv-error") };
  const st = { root, el, osd: q(".slv-osd"), viewer: null, imageId: null, overlayKey: null, overlayItem: null,
               gotoNonce: null, data: null, tiles: 0, t0: 0, styled: false, full: false, cleanup: [] };
  root.__slv = st;
  root.dataset.full = "off";
  buildAnno(st);
  return st;
}

// conversions go through the slide's own tiled image: the viewport's helpers are ambiguous with two layers
function slideItem(st) { return st.viewer.world.getItemAt(0); }

function imageZoom(st) {
  return slideItem(st).viewportToImageZoom(st.viewer.viewport.getZoom(true));
}

function updateReadouts(st) {
  const d = st.data;
  if (!st.viewer || !st.viewer.world.getItemCount() || !d) return;
  const z = imageZoom(st);
  const base = d.objective || (d.mpp ? 10 / d.mpp : null);
  st.el.mag.textContent = base ? `${(base * z).toFixed(base * z < 1 ? 2 : 1)}×` : "";
  if (d.mpp) {
    const umPerPx = d.mpp / z;
    const um = niceLength(umPerPx * 120);
    st.el.scale.style.display = "block";
    st.el.scaleBar.style.width = `${um / umPerPx}px`;
    st.el.scaleText.textContent = um >= 1000 ? `${um / 1000} mm` : `${um} µm`;
  } else {
    st.el.scale.style.display = "none";
  }
  const c = slideItem(st).viewportToImageCoordinates(st.viewer.viewport.getCenter(true));
  Object.assign(st.root.dataset, { centerX: c.x.toFixed(1), centerY: c.y.toFixed(1), zoom: z.toFixed(5) });
}

function overlayOpacity(st) {
  return st.el.toggle.checked ? parseFloat(st.el.opacity.value) : 0;
}

// colour map, rescaling, top fraction, fading and drawing live here, not in Streamlit: a change only swaps the
// overlay's tiles. The first overlay sets them to the app's defaults; later ones keep the user's choice.
function fillStyleControls(st, ov) {
  const fill = (sel, values, value) => {
    if (sel.options.length === values.length) return;
    sel.innerHTML = values.map((v) => `<option value="${v}">${v}</option>`).join("");
    sel.value = value;
  };
  fill(st.el.cmap, ov.cmaps, ov.default.cmap);
  fill(st.el.rescale, ov.scales, ov.default.scale);
  fill(st.el.render, ov.renders || ["blocks"], ov.default.render || "blocks");
  if (!st.styled) {
    st.styled = true;
    st.el.top.value = String(ov.default.top);
    st.el.fade.checked = ov.default.fade !== false;
  }
}

function overlayStyle(st) {
  return { cmap: st.el.cmap.value, scale: st.el.rescale.value, top: parseFloat(st.el.top.value),
           fade: st.el.fade.checked ? 1 : 0, render: st.el.render.value || "blocks" };
}

function setOverlay(st) {
  const d = st.data;
  st.el.bar.classList.toggle("slv-no-overlay", !d.overlay);
  if (d.overlay) fillStyleControls(st, d.overlay);
  const s = d.overlay ? overlayStyle(st) : null;
  const query = d.overlay
    ? `${d.overlay.query}&cmap=${s.cmap}&scale=${s.scale}&top=${s.top}&fade=${s.fade}&render=${s.render}` : null;
  const key = d.overlay ? d.overlay.url + query : null;
  if (s) {
    st.el.topV.textContent = `${Math.round(s.top * 100)}%`;
    st.el.legendBar.style.background = d.overlay.legends[s.cmap] || "";
  }
  if (key === st.overlayKey) return;
  st.overlayKey = key;
  st.root.dataset.overlayQuery = query || "";
  const old = st.overlayItem;
  if (!d.overlay) {
    if (old) st.viewer.world.removeItem(old);
    st.overlayItem = null;
    return;
  }
  // the new layer goes on top of the old one, which is removed once the new one is in: no blank flash
  st.viewer.addTiledImage({
    tileSource: tileSource(d, d.overlay.url, query), index: st.viewer.world.getItemCount(), opacity: overlayOpacity(st),
    success: (e) => {
      if (st.overlayKey !== key) { st.viewer.world.removeItem(e.item); return; }
      if (st.overlayItem && st.overlayItem !== e.item) st.viewer.world.removeItem(st.overlayItem);
      st.overlayItem = e.item;
      st.root.dataset.overlay = overlayOpacity(st) > 0 ? "on" : "off";
    },
  });
}

// full page: the whole component (toolbar, viewer, scale bar) fills the window, and the screen where the browser
// allows it. Nothing is moved out of the component, so every control keeps working; Esc leaves.
function setFull(st, on) {
  if (st.full === on) return;
  st.full = on;
  st.root.classList.toggle("slv-full", on);
  st.root.dataset.full = on ? "on" : "off";
  st.el.full.textContent = on ? "Leave full page (Esc)" : "Full page";
  if (on && st.root.requestFullscreen) {
    st.root.requestFullscreen().catch(() => {}); // refused (no user gesture, iframe): full page still works
  } else if (!on && document.fullscreenElement === st.root && document.exitFullscreen) {
    document.exitFullscreen().catch(() => {});
  }
  if (st.viewer) st.viewer.forceRedraw();
}

function goTo(st, g) {
  const vp = st.viewer.viewport;
  const pad = Math.max(g.w, g.h) * 1.5;
  const rect = slideItem(st).imageToViewportRectangle(g.x - pad, g.y - pad, g.w + 2 * pad, g.h + 2 * pad);
  vp.fitBounds(rect, false);
  st.root.scrollIntoView({ behavior: "smooth", block: "nearest" }); // the gallery that asked is below the viewer
}

function openSlide(st, OSD) {
  const d = st.data;
  st.imageId = d.image_id;
  st.overlayKey = null;
  st.overlayItem = null;
  st.tiles = 0;
  st.t0 = performance.now();
  Object.assign(st.root.dataset, { imageId: d.image_id, tilesLoaded: "0", firstTileMs: "" });
  st.el.note.textContent = d.mpp ? "" : "scale unknown: no mpp for this slide";
  st.el.note.style.display = d.mpp ? "none" : "block";
  st.viewer.open(tileSource(d, d.tiles_url, d.query));
}

function create(st, OSD, setStateValue) {
  const viewer = OSD({
    element: st.osd, prefixUrl: "/tiles/_static/osd/images/", drawer: "canvas",
    showNavigator: true, navigatorPosition: "BOTTOM_RIGHT", showRotationControl: false, autoHideControls: false,
    showFullPageControl: false, // the toolbar's own full-page button keeps the toolbar (see setFull)
    preserveImageSizeOnResize: true, // the magnification stays when the viewer grows or shrinks
    maxZoomPixelRatio: 4, visibilityRatio: 0.5, animationTime: 0.6, immediateRender: true,
    gestureSettingsMouse: { clickToZoom: false },
  });
  st.viewer = viewer;
  st.setStateValue = setStateValue;
  window.__slidelensViewer = viewer;
  viewer.addHandler("open", () => {
    setOverlay(st);
    updateAnnotations(st, OSD);
    if (st.data.goto) { st.gotoNonce = st.data.goto.nonce; goTo(st, st.data.goto); }
    updateReadouts(st);
  });
  viewer.addHandler("open-failed", (e) => {
    st.el.error.textContent = "cannot open slide: " + (e.message || "tile source failed");
  });
  viewer.addHandler("tile-loaded", (e) => {
    if (e.tiledImage !== viewer.world.getItemAt(0)) return;
    st.tiles += 1;
    st.root.dataset.tilesLoaded = String(st.tiles);
    if (st.tiles === 1) st.root.dataset.firstTileMs = (performance.now() - st.t0).toFixed(0);
  });
  let timer = null;
  const report = () => { // the viewport goes back to Python once the view rests
    updateReadouts(st);
    clearTimeout(timer);
    timer = setTimeout(() => {
      const vp = viewer.viewport;
      if (!st.viewer || !viewer.world.getItemCount()) return;
      const b = slideItem(st).viewportToImageRectangle(vp.getBounds(true));
      const c = slideItem(st).viewportToImageCoordinates(vp.getCenter(true));
      setStateValue("viewport", { image_id: st.imageId, x: c.x, y: c.y, zoom: imageZoom(st),
                                  bounds: [b.x, b.y, b.width, b.height] });
    }, 400);
  };
  viewer.addHandler("animation", () => updateReadouts(st));
  viewer.addHandler("animation-finish", report);
  viewer.addHandler("resize", report); // full page, window or sidebar: the readouts follow the new size
  const apply = () => {
    if (st.overlayItem) st.overlayItem.setOpacity(overlayOpacity(st));
    st.root.dataset.overlay = overlayOpacity(st) > 0 ? "on" : "off";
  };
  st.el.toggle.addEventListener("change", apply);
  st.el.opacity.addEventListener("input", apply);
  for (const sel of [st.el.cmap, st.el.rescale, st.el.render, st.el.fade]) {
    sel.addEventListener("change", () => setOverlay(st));
  }
  let topTimer = null; // redraw once the slider rests, not for every step it passes
  st.el.top.addEventListener("input", () => {
    st.el.topV.textContent = `${Math.round(parseFloat(st.el.top.value) * 100)}%`;
    clearTimeout(topTimer);
    topTimer = setTimeout(() => setOverlay(st), 200);
  });
  st.el.full.addEventListener("click", () => setFull(st, !st.full));
  const onKey = (e) => { if (e.key === "Escape" && st.full) { e.preventDefault(); setFull(st, false); } };
  const onFullscreen = () => { if (st.full && document.fullscreenElement !== st.root) setFull(st, false); };
  document.addEventListener("keydown", onKey, true);
  document.addEventListener("fullscreenchange", onFullscreen);
  st.cleanup.push(() => document.removeEventListener("keydown", onKey, true),
                  () => document.removeEventListener("fullscreenchange", onFullscreen));
  // hover (debounced) and click show the raw attention of the patch under the cursor
  let hoverTimer = null;
  const lookup = (pos) => {
    const d = st.data;
    if (!d.overlay || !viewer.world.getItemCount()) return;
    const p = slideItem(st).viewerElementToImageCoordinates(pos);
    fetch(`${d.overlay.at_url}${d.overlay.at_url.includes("?") ? "&" : "?"}x=${p.x.toFixed(1)}&y=${p.y.toFixed(1)}`)
      .then((r) => (r.ok ? r.json() : null)).then((j) => {
        if (!j || j.index === null) { st.el.hover.textContent = ""; return; }
        const parts = j.raw.map((v, i) => (j.raw.length > 1 ? `${j.classes[i] || i}: ` : "") + v.toPrecision(3));
        st.el.hover.textContent = `patch (${j.x}, ${j.y}) attention ${parts.join(", ")}`;
      }).catch(() => {});
  };
  new OSD.MouseTracker({
    element: viewer.canvas,
    moveHandler: (e) => { clearTimeout(hoverTimer); hoverTimer = setTimeout(() => lookup(e.position), 150); },
  });
  viewer.addHandler("canvas-click", (e) => { if (e.quick) lookup(e.position); });
}

export default function (component) {
  const { data, parentElement, setStateValue } = component;
  let root = parentElement.querySelector(".slv-root");
  if (!root) {
    root = document.createElement("div");
    root.className = "slv-root";
    parentElement.appendChild(root);
  }
  const st = root.__slv || build(root);
  st.data = data;
  st.root.dataset.runs = String(+(st.root.dataset.runs || 0) + 1); // script runs seen (tests: no rerun on restyle)
  st.osd.style.height = `${data.view_height || 600}px`;
  loadOsd().then((OSD) => {
    if (!st.viewer) create(st, OSD, setStateValue);
    if (st.imageId !== data.image_id) {
      openSlide(st, OSD);
      return;
    }
    if (st.viewer.world.getItemCount()) {
      setOverlay(st);
      updateAnnotations(st, OSD);
      if (data.goto && data.goto.nonce !== st.gotoNonce) { st.gotoNonce = data.goto.nonce; goTo(st, data.goto); }
      updateReadouts(st);
    }
  }).catch((err) => { st.el.error.textContent = String(err.message || err); });
  return () => {
    setFull(st, false);
    for (const undo of st.cleanup.splice(0)) undo();
    if (st.an && st.an.anno) { st.an.anno.destroy(); st.an.anno = null; }
    if (st.viewer) { st.viewer.destroy(); st.viewer = null; }
    root.__slv = null;
  };
}
