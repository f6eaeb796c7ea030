// The map page: filters -> a registered search (footprints and mosaic) and a density query;
// the result list of the view; a click on a footprint opens the sample panel.
import "./style.css";
import * as maplibregl from "maplibre-gl";
import { TerraDraw, TerraDrawRectangleMode } from "terra-draw";
import { TerraDrawMapLibreGLAdapter } from "terra-draw-maplibre-gl-adapter";
import { addDataLayers, baseStyle, fadeFootprints, setSeeded, setTiles } from "./layers.js";
import { el, mapLegend, presetLegend } from "./legend.js";
import { Panel } from "./panel.js";
import { densityQuery, parseBbox, readState, searchBody, writeState } from "./state.js";

const ROOT = document.querySelector('meta[name="terramesh-root"]').content.replace(/\/$/, "");
const REVISION_POLL_MS = 30000;
const FILTERS = ["start", "end", "cloud", "source", "split", "bbox"];

function status(text) {
  document.getElementById("status").textContent = text;
}

async function getJSON(url, options) {
  const response = await fetch(url, options);
  if (!response.ok) {
    const detail = await response.json().catch(() => ({}));
    throw new Error(`${url.split("?")[0]}: ${response.status} ${detail.detail || detail.description || ""}`);
  }
  return response.json();
}

function fillForm(form, config, renders, state) {
  for (const [name, values] of [["source", config.sources], ["split", config.splits]]) {
    for (const value of values) form.elements[name].append(el("option", { value }, value));
  }
  for (const [id, preset] of Object.entries(renders)) form.elements.preset.append(el("option", { value: id, title: preset.title || id }, id));
  for (const name of ["start", "end", "cloud", "source", "split"]) form.elements[name].value = state[name];
  form.elements.preset.value = renders[state.preset] ? state.preset : config.default_render;
}

async function main() {
  const config = await getJSON(`${ROOT}/map/config.json`);
  const collection = await getJSON(`${config.stac}/collections/${encodeURIComponent(config.collection)}`);
  const renders = collection.renders || {};
  const state = readState();
  document.getElementById("title").textContent = collection.title || config.collection;
  const form = document.getElementById("filters");
  fillForm(form, config, renders, state);
  state.preset = form.elements.preset.value;
  const revisionUrl = `${config.vector}/revision?collection=${encodeURIComponent(config.collection)}`;
  let { revision, seeded_mosaic: seededMosaic = {} } = await getJSON(revisionUrl);
  let searchId = null;

  const [w, s, e, n] = collection.extent?.spatial?.bbox?.[0] || [-180, -70, 180, 75];
  const map = new maplibregl.Map({
    container: "map",
    style: baseStyle(config, ROOT),
    bounds: window.location.hash ? undefined : [[w, s], [e, n]],
    fitBoundsOptions: { padding: 40, maxZoom: 10 },
    hash: true,
    maxZoom: 18,
    attributionControl: { compact: true },
  });
  map.addControl(new maplibregl.NavigationControl(), "top-right");
  map.addControl(new maplibregl.ScaleControl(), "bottom-right");
  window.terrameshMap = map; // for the browser tests and the console

  const mosaicMinzoom = () => renders[state.preset]?.minmax_zoom?.[0] ?? config.mosaic_minzoom;
  const urls = () => ({
    density: `${config.vector}/density/{z}/{x}/{y}.pbf?${densityQuery(state, config.collection)}&v=${revision}`,
    footprints: `${config.vector}/footprints/{z}/{x}/{y}.pbf?collection=${encodeURIComponent(config.collection)}${searchId ? `&search=${searchId}` : ""}&v=${revision}`,
    mosaic: searchId
      ? `${config.raster}/searches/${searchId}/tiles/WebMercatorQuad/{z}/{x}/{y}.png?render=${encodeURIComponent(state.preset)}&v=${revision}`
      : `${config.raster}/collections/${encodeURIComponent(config.collection)}/tiles/WebMercatorQuad/{z}/{x}/{y}.png?render=${encodeURIComponent(state.preset)}&v=${revision}`,
    mosaicMinzoom: mosaicMinzoom(),
  });
  // The mosaic seeded ahead (tile zooms 11-13, the whole collection) below the live mosaic's
  // minzoom, for the chosen preset, when no filter is set (it does not know them).
  const seeded = () => {
    const zooms = seededMosaic[state.preset];
    const until = mosaicMinzoom();
    if (!zooms || zooms.minzoom - 1 >= until || FILTERS.some((key) => state[key])) return null;
    const query = `collection=${encodeURIComponent(config.collection)}&v=${revision}`;
    // MapLibre's zooms are of 512 px tiles: at map zoom z it draws 256 px tiles of zoom z + 1
    return {
      url: `${config.vector}/mosaic/${encodeURIComponent(state.preset)}/{z}/{x}/{y}.webp?${query}`,
      minzoom: zooms.minzoom,
      maxzoom: zooms.maxzoom,
      from: zooms.minzoom - 1,
      until,
    };
  };
  const pixelsFrom = () => seeded()?.from ?? mosaicMinzoom();

  const panel = new Panel(map, { config, collection, renders, state, status, revision: () => revision, setReady: (ready) => setReady(ready), readyWhenIdle: () => readyWhenIdle(), onChange: () => writeState(state) });

  async function register() {
    const body = searchBody(state, config.collection);
    const registered = await getJSON(`${config.raster}/searches/register`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...body, metadata: { name: "terramesh map" } }),
    });
    searchId = registered.id;
  }

  // body[data-ready] is "true" once the map has drawn what the current filters ask for (tests wait for it)
  const setReady = (ready) => (document.body.dataset.ready = String(ready));
  function readyWhenIdle() {
    map.once("idle", () => setReady(true));
    map.triggerRepaint();
  }

  async function applyFilters() {
    setReady(false);
    writeState(state);
    try {
      await register();
    } catch (error) {
      status(String(error.message || error));
      setReady(true);
      return;
    }
    const u = urls();
    setTiles(map, "density", u.density);
    setTiles(map, "footprints", u.footprints);
    setTiles(map, "mosaic", u.mosaic);
    setSeeded(map, seeded());
    fadeFootprints(map, pixelsFrom());
    const box = parseBbox(state.bbox);
    map.getSource("box").setData(
      box
        ? { type: "Feature", properties: {}, geometry: { type: "Polygon", coordinates: [[[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]], [box[0], box[1]]]] } }
        : { type: "FeatureCollection", features: [] },
    );
    document.getElementById("clear-box").disabled = !box;
    updateLegend();
    updateResults();
    readyWhenIdle();
  }

  async function updateLegend() {
    const legend = document.getElementById("legend");
    const box = [mapLegend()];
    if (renders[state.preset]) {
      const mosaic = await presetLegend(state.preset, renders[state.preset], collection, config.raster);
      const ahead = seeded();
      const zooms = ahead ? `zoom ${ahead.from} and up; made ahead for the whole collection below zoom ${ahead.until}` : `zoom ${mosaicMinzoom()} and up`;
      mosaic.prepend(el("h3", {}, `Mosaic (${zooms})`));
      box.push(mosaic);
    }
    legend.replaceChildren(...box);
  }

  let resultsRequest = 0;
  async function updateResults() {
    const ticket = ++resultsRequest;
    const bounds = map.getBounds();
    let view = [Math.max(bounds.getWest(), -180), Math.max(bounds.getSouth(), -90), Math.min(bounds.getEast(), 180), Math.min(bounds.getNorth(), 90)];
    const box = parseBbox(state.bbox);
    if (box) view = [Math.max(view[0], box[0]), Math.max(view[1], box[1]), Math.min(view[2], box[2]), Math.min(view[3], box[3])];
    const list = document.getElementById("result-list");
    const count = document.getElementById("result-count");
    if (view[0] >= view[2] || view[1] >= view[3]) {
      list.replaceChildren();
      count.textContent = "(0)";
      return;
    }
    const body = {
      ...searchBody(state, config.collection),
      bbox: view,
      limit: 20,
      fields: { include: ["id", "properties.datetime", "properties.eo:cloud_cover", "properties.terramesh:source"], exclude: ["assets", "links", "geometry"] },
    };
    try {
      const result = await getJSON(`${config.stac}/search`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      if (ticket !== resultsRequest) return;
      const matched = result.numberMatched ?? result.context?.matched;
      count.textContent = matched === undefined ? `(${result.features.length}+)` : `(${matched.toLocaleString()})`;
      list.replaceChildren(
        ...result.features.map((f) => {
          const cloud = f.properties["eo:cloud_cover"];
          const li = el("li", { "data-id": f.id }, `${f.id} · ${(f.properties.datetime || "").slice(0, 10)}${cloud == null ? "" : ` · ${cloud.toFixed(0)} %`}`);
          li.addEventListener("click", () => panel.open(f.id, { fly: true }));
          return li;
        }),
      );
    } catch (error) {
      status(String(error.message || error));
    }
  }

  map.on("load", async () => {
    try {
      await register();
    } catch (error) {
      status(String(error.message || error));
    }
    addDataLayers(map, urls(), config);
    map.on("click", "footprints-fill", (event) => {
      const feature = event.features?.[0];
      if (feature) panel.open(feature.properties.id);
    });
    map.on("mouseenter", "footprints-fill", () => (map.getCanvas().style.cursor = "pointer"));
    map.on("mouseleave", "footprints-fill", () => (map.getCanvas().style.cursor = ""));
    let moveTimer = null;
    map.on("moveend", () => {
      clearTimeout(moveTimer);
      moveTimer = setTimeout(updateResults, 250);
    });

    const draw = new TerraDraw({ adapter: new TerraDrawMapLibreGLAdapter({ map }), modes: [new TerraDrawRectangleMode()] });
    draw.start();
    draw.on("finish", (id) => {
      const feature = draw.getSnapshotFeature(id);
      draw.clear();
      draw.setMode("static");
      if (!feature) return;
      const ring = feature.geometry.coordinates[0];
      const xs = ring.map((c) => c[0]);
      const ys = ring.map((c) => c[1]);
      state.bbox = [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)].map((v) => v.toFixed(5)).join(",");
      applyFilters();
    });
    document.getElementById("draw-box").addEventListener("click", () => draw.setMode("rectangle"));
    document.getElementById("clear-box").addEventListener("click", () => {
      state.bbox = "";
      applyFilters();
    });
    form.addEventListener("change", (event) => {
      const name = event.target.name;
      state[name] = event.target.value;
      applyFilters();
    });

    setInterval(async () => {
      try {
        const current = await getJSON(revisionUrl);
        if (current.revision !== revision || JSON.stringify(current.seeded_mosaic) !== JSON.stringify(seededMosaic)) {
          ({ revision, seeded_mosaic: seededMosaic = {} } = current);
          applyFilters();
        }
      } catch (error) {
        status(String(error.message || error));
      }
    }, REVISION_POLL_MS);

    await applyFilters();
    if (state.item) {
      setReady(false);
      await panel.open(state.item);
      readyWhenIdle();
    }
  });
}

main().catch((error) => {
  status(`the map could not start: ${error.message || error}`);
  console.error(error);
});
