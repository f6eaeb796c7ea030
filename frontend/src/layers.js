// The map's style: a base map, then the layers that answer at each zoom (README "The map"):
// density (vector tiles of counts per cell, zooms 0-5, drawn over-zoomed up to zoom 7),
// footprints (vector tiles, from zoom 6), the mosaic seeded ahead for tile zooms 11-13 (raster,
// the whole collection: drawn when no filter is set), the mosaic of the current search
// (raster, from the mosaic's minzoom) and the selected sample's modality (raster).

// samples per 1,000 km2 -> colour (a cell's count divided by its ground area, so the colours
// mean the same at every zoom)
export const DENSITY_STEPS = [
  [0, "#ffe38a"],
  [1, "#fecb5c"],
  [5, "#feb24c"],
  [20, "#fd8d3c"],
  [50, "#fc4e2a"],
  [100, "#e31a1c"],
  [250, "#bd0026"],
  [1000, "#800026"],
];

// eo:cloud_cover (%) -> footprint colour
export const CLOUD_STOPS = [
  [0, "#1a9850"],
  [10, "#91cf60"],
  [20, "#fee08b"],
  [50, "#fc8d59"],
  [100, "#7f7f7f"],
];

const OCEAN = "#cad9e6";
const LAND = "#f1eee8";
const BORDERS = "#b4ada2";

export function baseStyle(config, root) {
  if (config.basemap && config.basemap.startsWith("http") && config.basemap !== "osm") {
    return config.basemap; // a MapLibre style URL: our layers are added on top once it loads
  }
  const style = { version: 8, sources: {}, layers: [{ id: "background", type: "background", paint: { "background-color": OCEAN } }] };
  if (config.basemap === "osm") {
    style.sources.osm = {
      type: "raster",
      tiles: ["https://tile.openstreetmap.org/{z}/{x}/{y}.png"],
      tileSize: 256,
      maxzoom: 19,
      attribution: "&copy; OpenStreetMap contributors",
    };
    style.layers.push({ id: "osm", type: "raster", source: "osm" });
  } else {
    // offline: Natural Earth 1:50m land and borders (world-atlas), served with the page
    const attribution = "Natural Earth";
    style.sources.land = { type: "geojson", data: `${root}/map/basemap/land.geojson`, attribution };
    style.sources.borders = { type: "geojson", data: `${root}/map/basemap/borders.geojson` };
    style.layers.push({ id: "land", type: "fill", source: "land", paint: { "fill-color": LAND } });
    style.layers.push({ id: "borders", type: "line", source: "borders", paint: { "line-color": BORDERS, "line-width": 0.7 } });
  }
  return style;
}

function stepExpression(property, steps) {
  const expr = ["step", ["coalesce", ["get", property], -1], "#cccccc"];
  for (const [value, colour] of steps) expr.push(value, colour);
  return expr;
}

function interpolateExpression(property, stops, missing) {
  const expr = ["interpolate", ["linear"], ["get", property]];
  for (const [value, colour] of stops) expr.push(value, colour);
  return ["case", ["has", property], expr, missing];
}

const width = (plain) => ["case", ["boolean", ["feature-state", "selected"], false], 3, plain];

export function addDataLayers(map, urls, config) {
  map.addSource("mosaic", { type: "raster", tiles: [urls.mosaic], tileSize: 256, minzoom: urls.mosaicMinzoom, maxzoom: 18 });
  map.addLayer({ id: "mosaic", type: "raster", source: "mosaic", minzoom: urls.mosaicMinzoom });
  map.addSource("density", { type: "vector", tiles: [urls.density], minzoom: 0, maxzoom: config.density_maxzoom });
  map.addLayer({
    id: "density",
    type: "fill",
    source: "density",
    "source-layer": "density",
    maxzoom: config.footprints_minzoom + 2,
    paint: {
      "fill-color": stepExpression("per_1000_km2", DENSITY_STEPS),
      "fill-opacity": ["interpolate", ["linear"], ["zoom"], config.footprints_minzoom - 1, 0.85, config.footprints_minzoom + 1, 0.25],
      "fill-outline-color": "#00000022",
    },
  });
  map.addSource("footprints", {
    type: "vector",
    tiles: [urls.footprints],
    minzoom: config.footprints_minzoom,
    maxzoom: config.footprints_maxzoom,
    promoteId: "id",
  });
  const minzoom = urls.mosaicMinzoom;
  map.addLayer({
    id: "footprints-fill",
    type: "fill",
    source: "footprints",
    "source-layer": "footprints",
    minzoom: config.footprints_minzoom,
    paint: {
      "fill-color": interpolateExpression("cloud", CLOUD_STOPS, "#5b7fa6"),
      // see-through where the mosaic draws the pixels (fadeFootprints)
      "fill-opacity": footprintsOpacity(minzoom),
    },
  });
  map.addLayer({
    id: "footprints-line",
    type: "line",
    source: "footprints",
    "source-layer": "footprints",
    minzoom: config.footprints_minzoom,
    paint: {
      // coloured by cloud cover too, and wide enough at zooms 6-9 (a 2.6 km sample is a few pixels there)
      "line-color": ["case", ["boolean", ["feature-state", "selected"], false], "#1f6feb", interpolateExpression("cloud", CLOUD_STOPS, "#5b7fa6")],
      "line-width": ["interpolate", ["linear"], ["zoom"], 6, width(2.5), 10, width(1.2), 14, width(0.8)],
    },
  });
  map.addSource("box", { type: "geojson", data: { type: "FeatureCollection", features: [] } });
  map.addLayer({ id: "box", type: "line", source: "box", paint: { "line-color": "#1f6feb", "line-width": 2, "line-dasharray": [2, 1] } });
}

const footprintsOpacity = (zoom) => ["interpolate", ["linear"], ["zoom"], zoom - 1, 0.65, zoom, 0.02];

// The footprints' fill fades out at `zoom`, where a mosaic starts drawing the pixels.
export function fadeFootprints(map, zoom) {
  map.setPaintProperty("footprints-fill", "fill-opacity", footprintsOpacity(zoom));
}

// The seeded mosaic (spec: {url, minzoom, maxzoom: its tiles' zooms; from, until: the map
// zooms it is drawn at}, or null for none): a source's zooms cannot change, so it is replaced.
export function setSeeded(map, spec) {
  const current = map.getSource("seeded");
  if (current && spec && current.tiles?.[0] === spec.url && current.minzoom === spec.minzoom && current.maxzoom === spec.maxzoom) return;
  if (map.getLayer("seeded")) map.removeLayer("seeded");
  if (current) map.removeSource("seeded");
  if (!spec) return;
  map.addSource("seeded", { type: "raster", tiles: [spec.url], tileSize: 256, minzoom: spec.minzoom, maxzoom: spec.maxzoom });
  map.addLayer({ id: "seeded", type: "raster", source: "seeded", minzoom: spec.from, maxzoom: spec.until }, "footprints-fill");
}

// Sets a tile source's URL template (a new search, new filters, a new catalog revision).
export function setTiles(map, id, url) {
  const source = map.getSource(id);
  if (source && source.tiles?.[0] !== url) source.setTiles([url]);
}

export function setSample(map, tiles, bounds) {
  if (map.getLayer("sample")) map.removeLayer("sample");
  if (map.getSource("sample")) map.removeSource("sample");
  if (!tiles) return;
  map.addSource("sample", { type: "raster", tiles, tileSize: 256, bounds, maxzoom: 18 });
  map.addLayer({ id: "sample", type: "raster", source: "sample", paint: { "raster-resampling": "nearest" } }, "footprints-line");
}
