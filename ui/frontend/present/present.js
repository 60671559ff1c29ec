// SlideLens presentation mode: one slide in OpenSeadragon (same-origin tiles), the top regions drawn as soft
// outlines, the attention heatmap one key away (H), an automatic tour that pans and zooms to each region in turn,
// and the keyboard: Left/Right (PageUp/PageDown) move between cases, T plays the tour again, F full screen,
// Esc leaves.

const OSD_SRC = "/tiles/_static/osd/openseadragon.min.js";
const STEP_MS = 2600; // time on each region of the tour
const SVG = "http://www.w3.org/2000/svg";

function loadOsd() {
  if (window.OpenSeadragon) return Promise.resolve(window.OpenSeadragon);
  if (!window.__slidelensOsd) {
    window.__slidelensOsd = new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = OSD_SRC;
      s.onload = () => resolve(window.OpenSeadragon);
      s.onerror = () => reject(new Error("the slide viewer could not be loaded"));
      document.head.appendChild(s);
    });
  }
  return window.__slidelensOsd;
}

function source(d, base, query, ext) {
  return { width: d.width, height: d.height, tileSize: d.tile_size, tileOverlap: d.overlap,
           getTileUrl: (level, x, y) => `${base}${level}/${x}_${y}.${ext}${query}` };
}

function build(root) {
  root.innerHTML = `<div class="slp-osd"><div class="slp-caption"></div><div class="slp-error"></div></div>
    <div class="slp-keys">← → cases · T tour again · H heatmap · F full screen · Esc leave</div>`;
  const st = { root, osd: root.querySelector(".slp-osd"), caption: root.querySelector(".slp-caption"),
               error: root.querySelector(".slp-error"), viewer: null, key: null, timers: [], heat: false,
               heatItem: null, data: null, cleanup: [] };
  root.__slp = st;
  return st;
}

function stopTour(st) {
  for (const t of st.timers.splice(0)) clearTimeout(t);
}

function item(st) { return st.viewer.world.getItemAt(0); }

function showCaption(st, text) {
  st.caption.textContent = text;
  st.caption.style.display = text ? "block" : "none";
}

function tour(st) {
  stopTour(st);
  const regions = (st.data.regions || []).slice(0, st.data.tour_regions || 3);
  st.root.dataset.tourStep = "0";
  if (!regions.length) { st.root.dataset.tourStep = "none"; showCaption(st, ""); return; }
  regions.forEach((r, i) => {
    st.timers.push(setTimeout(() => {
      const b = r.box;
      st.viewer.viewport.fitBounds(item(st).imageToViewportRectangle(b.x, b.y, b.w, b.h), false);
      st.root.dataset.tourStep = String(i + 1);
      showCaption(st, r.caption);
    }, 900 + i * STEP_MS));
  });
  st.timers.push(setTimeout(() => {
    st.viewer.viewport.goHome(false);
    st.root.dataset.tourStep = "done";
    showCaption(st, "");
  }, 900 + regions.length * STEP_MS));
}

function drawOutlines(st, OSD) {
  const d = st.data;
  st.viewer.clearOverlays();
  if (!d.regions || !d.regions.length) return;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${d.width} ${d.height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.classList.add("slp-outlines");
  for (const r of d.regions) {
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", r.outline.map(([a, b, c, e]) => `M${a} ${b}L${c} ${e}`).join(""));
    path.setAttribute("vector-effect", "non-scaling-stroke");
    svg.appendChild(path);
  }
  st.viewer.addOverlay({ element: svg, location: new OSD.Rect(0, 0, 1, d.height / d.width) });
  for (const r of d.regions) {
    const tag = document.createElement("div");
    tag.className = "slp-tag";
    tag.textContent = String(r.rank);
    st.viewer.addOverlay({ element: tag, location: item(st).imageToViewportCoordinates(r.box0.x, r.box0.y),
                           placement: OSD.Placement.BOTTOM_LEFT });
  }
}

function setHeat(st, on) {
  st.heat = on && !!st.heatItem;
  if (st.heatItem) st.heatItem.setOpacity(st.heat ? 0.55 : 0);
  st.root.dataset.heatmap = st.heat ? "on" : "off";
}

function open(st, OSD) {
  const d = st.data;
  stopTour(st);
  st.key = d.key;
  st.heatItem = null;
  st.error.textContent = "";
  Object.assign(st.root.dataset, { imageId: d.image_id, tourStep: "", heatmap: "off" });
  st.viewer.open(source(d, d.tiles_url, d.query, "jpeg"));
}

function create(st, OSD, setTriggerValue) {
  const viewer = OSD({ element: st.osd, prefixUrl: "/tiles/_static/osd/images/", drawer: "canvas",
                       showNavigationControl: false, showNavigator: false, visibilityRatio: 0.6,
                       animationTime: 1.4, springStiffness: 5, immediateRender: true,
                       gestureSettingsMouse: { clickToZoom: false } });
  st.viewer = viewer;
  window.__slidelensPresent = viewer;
  viewer.addHandler("open", () => {
    drawOutlines(st, OSD);
    const ov = st.data.overlay;
    if (ov) {
      viewer.addTiledImage({ tileSource: source(st.data, ov.url, ov.query, "png"), opacity: 0,
                             success: (e) => { st.heatItem = e.item; setHeat(st, st.heat); } });
    }
    tour(st);
  });
  viewer.addHandler("open-failed", () => { st.error.textContent = "This slide cannot be shown."; });
  viewer.addHandler("canvas-press", () => stopTour(st)); // the presenter takes over
  let nonce = 0;
  const onKey = (e) => {
    const t = e.target;
    if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName))) return;
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    let step = null;
    if (["ArrowRight", "PageDown"].includes(e.key)) step = 1;
    else if (["ArrowLeft", "PageUp"].includes(e.key)) step = -1;
    else if (e.key === "Escape") step = 0;
    else if (e.key === "h" || e.key === "H") { e.preventDefault(); setHeat(st, !st.heat); return; }
    else if (e.key === "f" || e.key === "F") {
      e.preventDefault();
      if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
      else document.documentElement.requestFullscreen().catch(() => {});
      return;
    }
    else if (e.key === "t" || e.key === "T") { e.preventDefault(); viewer.viewport.goHome(true); tour(st); return; }
    if (step === null) return;
    e.preventDefault();
    e.stopPropagation();
    nonce += 1;
    setTriggerValue("nav", { step, leave: step === 0, nonce });
  };
  document.addEventListener("keydown", onKey, true);
  st.cleanup.push(() => document.removeEventListener("keydown", onKey, true));
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  let root = parentElement.querySelector(".slp-root");
  if (!root) {
    root = document.createElement("div");
    root.className = "slp-root";
    parentElement.appendChild(root);
  }
  const st = root.__slp || build(root);
  st.data = data;
  st.osd.style.height = `${data.view_height || 600}px`;
  loadOsd().then((OSD) => {
    if (!st.viewer) create(st, OSD, setTriggerValue);
    if (st.key !== data.key) open(st, OSD);
  }).catch((err) => { st.error.textContent = String(err.message || err); });
  return () => {
    stopTour(st);
    for (const undo of st.cleanup.splice(0)) undo();
    if (st.viewer) { st.viewer.destroy(); st.viewer = null; }
    root.__slp = null;
  };
}
