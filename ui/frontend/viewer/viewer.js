// SlideLens slide viewer: OpenSeadragon (served same-origin under /tiles/_static/osd/) with the attention overlay
// as a second tiled image on the same Deep Zoom grid. Streamlit components v2 calls the default export on every
// script run with new `data`; the viewer lives on the container element and is only updated, never rebuilt.

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
      <label>opacity <input type="range" class="slv-ov-opacity" min="0" max="1" step="0.05" value="0.5"></label>
      <label>colours <select class="slv-cmap"></select></label>
      <label title="percentile: clip to the 1st..99th percentile; rank: uniform by rank; minmax: raw range">rescale
        <select class="slv-rescale"></select></label>
      <label title="show only the most attended fraction of patches">top
        <input type="range" class="slv-top" min="0.01" max="1" step="0.01" value="1"><span class="slv-top-v">100%</span></label>
      <label class="slv-legend" title="low attention to high attention"><span>low</span><span class="slv-legend-bar"></span><span>high</span></label>
      <span class="slv-mag"></span><span class="slv-hover"></span>
    </div>
    <div class="slv-osd"><div class="slv-scale"><div class="slv-scale-bar"></div><span></span></div>
      <div class="slv-note"></div><div class="slv-error"></div></div>`;
  const st = { root, osd: root.querySelector(".slv-osd"), viewer: null, imageId: null, overlayKey: null,
               overlayItem: null, gotoNonce: null, data: null, tiles: 0, t0: 0 };
  root.__slv = st;
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
  st.root.querySelector(".slv-mag").textContent = base ? `${(base * z).toFixed(base * z < 1 ? 2 : 1)}×` : "";
  const scale = st.root.querySelector(".slv-scale");
  if (d.mpp) {
    const umPerPx = d.mpp / z;
    const um = niceLength(umPerPx * 120);
    scale.style.display = "block";
    scale.querySelector(".slv-scale-bar").style.width = `${um / umPerPx}px`;
    scale.querySelector("span").textContent = um >= 1000 ? `${um / 1000} mm` : `${um} µm`;
  } else {
    scale.style.display = "none";
  }
  const c = slideItem(st).viewportToImageCoordinates(st.viewer.viewport.getCenter(true));
  Object.assign(st.root.dataset, { centerX: c.x.toFixed(1), centerY: c.y.toFixed(1), zoom: z.toFixed(5) });
}

function overlayOpacity(st) {
  const on = st.root.querySelector(".slv-ov-toggle").checked;
  return on ? parseFloat(st.root.querySelector(".slv-ov-opacity").value) : 0;
}

// colour map, rescaling and top fraction live here, not in Streamlit: a change only swaps the overlay's tiles
function fillStyleControls(st, ov) {
  const fill = (sel, values, value) => {
    if (sel.options.length === values.length) return;
    sel.innerHTML = values.map((v) => `<option value="${v}">${v}</option>`).join("");
    sel.value = value;
  };
  fill(st.root.querySelector(".slv-cmap"), ov.cmaps, ov.default.cmap);
  fill(st.root.querySelector(".slv-rescale"), ov.scales, ov.default.scale);
}

function overlayStyle(st) {
  const top = parseFloat(st.root.querySelector(".slv-top").value);
  return { cmap: st.root.querySelector(".slv-cmap").value, scale: st.root.querySelector(".slv-rescale").value, top };
}

function setOverlay(st) {
  const d = st.data;
  st.root.querySelector(".slv-bar").classList.toggle("slv-no-overlay", !d.overlay);
  if (d.overlay) fillStyleControls(st, d.overlay);
  const s = d.overlay ? overlayStyle(st) : null;
  const query = d.overlay ? `${d.overlay.query}&cmap=${s.cmap}&scale=${s.scale}&top=${s.top}` : null;
  const key = d.overlay ? d.overlay.url + query : null;
  if (s) {
    st.root.querySelector(".slv-top-v").textContent = `${Math.round(s.top * 100)}%`;
    st.root.querySelector(".slv-legend-bar").style.background = d.overlay.legends[s.cmap] || "";
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
  st.root.querySelector(".slv-note").textContent = d.mpp ? "" : "scale unknown: no mpp for this slide";
  st.root.querySelector(".slv-note").style.display = d.mpp ? "none" : "block";
  st.viewer.open(tileSource(d, d.tiles_url, d.query));
}

function create(st, OSD, setStateValue) {
  const viewer = OSD({
    element: st.osd, prefixUrl: "/tiles/_static/osd/images/", drawer: "canvas",
    showNavigator: true, navigatorPosition: "BOTTOM_RIGHT", showRotationControl: false, autoHideControls: false,
    maxZoomPixelRatio: 4, visibilityRatio: 0.5, animationTime: 0.6, immediateRender: true,
    gestureSettingsMouse: { clickToZoom: false },
  });
  st.viewer = viewer;
  window.__slidelensViewer = viewer;
  viewer.addHandler("open", () => {
    setOverlay(st);
    if (st.data.goto) { st.gotoNonce = st.data.goto.nonce; goTo(st, st.data.goto); }
    updateReadouts(st);
  });
  viewer.addHandler("open-failed", (e) => {
    st.root.querySelector(".slv-error").textContent = "cannot open slide: " + (e.message || "tile source failed");
  });
  viewer.addHandler("tile-loaded", (e) => {
    if (e.tiledImage !== viewer.world.getItemAt(0)) return;
    st.tiles += 1;
    st.root.dataset.tilesLoaded = String(st.tiles);
    if (st.tiles === 1) st.root.dataset.firstTileMs = (performance.now() - st.t0).toFixed(0);
  });
  viewer.addHandler("animation", () => updateReadouts(st));
  let timer = null;
  viewer.addHandler("animation-finish", () => {
    updateReadouts(st);
    clearTimeout(timer);
    timer = setTimeout(() => {
      const vp = viewer.viewport;
      if (!viewer.world.getItemCount()) return;
      const b = slideItem(st).viewportToImageRectangle(vp.getBounds(true));
      const c = slideItem(st).viewportToImageCoordinates(vp.getCenter(true));
      setStateValue("viewport", { image_id: st.imageId, x: c.x, y: c.y, zoom: imageZoom(st),
                                  bounds: [b.x, b.y, b.width, b.height] });
    }, 400);
  });
  const toggle = st.root.querySelector(".slv-ov-toggle");
  const slider = st.root.querySelector(".slv-ov-opacity");
  const apply = () => {
    if (st.overlayItem) st.overlayItem.setOpacity(overlayOpacity(st));
    st.root.dataset.overlay = overlayOpacity(st) > 0 ? "on" : "off";
  };
  toggle.addEventListener("change", apply);
  slider.addEventListener("input", apply);
  for (const sel of [".slv-cmap", ".slv-rescale"]) st.root.querySelector(sel).addEventListener("change", () => setOverlay(st));
  const top = st.root.querySelector(".slv-top");
  let topTimer = null; // redraw once the slider rests, not for every step it passes
  top.addEventListener("input", () => {
    st.root.querySelector(".slv-top-v").textContent = `${Math.round(parseFloat(top.value) * 100)}%`;
    clearTimeout(topTimer);
    topTimer = setTimeout(() => setOverlay(st), 200);
  });
  // hover (debounced) and click show the raw attention of the patch under the cursor
  let hoverTimer = null;
  const hover = st.root.querySelector(".slv-hover");
  const lookup = (pos) => {
    const d = st.data;
    if (!d.overlay || !viewer.world.getItemCount()) return;
    const p = slideItem(st).viewerElementToImageCoordinates(pos);
    fetch(`${d.overlay.at_url}${d.overlay.at_url.includes("?") ? "&" : "?"}x=${p.x.toFixed(1)}&y=${p.y.toFixed(1)}`)
      .then((r) => (r.ok ? r.json() : null)).then((j) => {
        if (!j || j.index === null) { hover.textContent = ""; return; }
        const parts = j.raw.map((v, i) => (j.raw.length > 1 ? `${j.classes[i] || i}: ` : "") + v.toPrecision(3));
        hover.textContent = `patch (${j.x}, ${j.y}) attention ${parts.join(", ")}`;
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
      if (data.goto && data.goto.nonce !== st.gotoNonce) { st.gotoNonce = data.goto.nonce; goTo(st, data.goto); }
      updateReadouts(st);
    }
  }).catch((err) => { root.querySelector(".slv-error").textContent = String(err.message || err); });
  return () => { if (st.viewer) { st.viewer.destroy(); st.viewer = null; } root.__slv = null; };
}
