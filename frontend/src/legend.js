// Legends: the density colours, the footprint colours, and each render preset's (classes with
// their colours for land cover and the cloud mask; a colour bar with its range and unit for
// DEM and NDVI), read from the collection's render presets and item_assets.
import { CLOUD_STOPS, DENSITY_STEPS } from "./layers.js";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

const rgba = (c) => `rgba(${c[0]}, ${c[1]}, ${c[2]}, ${(c[3] ?? 255) / 255})`;

function row(colour, text) {
  return el("div", { class: "legend-row" }, el("span", { class: "swatch", style: `background:${colour}` }), text);
}

export function mapLegend() {
  const box = el("div", { class: "legend-map" });
  box.append(el("h3", {}, "Samples per 1,000 km² (zooms 0-7)"));
  DENSITY_STEPS.forEach(([value, colour], n) => {
    const next = DENSITY_STEPS[n + 1];
    box.append(row(colour, next ? `${value} – ${next[0]}` : `≥ ${value}`));
  });
  box.append(el("h3", {}, "Footprints: cloud cover (zoom 6 and up)"));
  const gradient = CLOUD_STOPS.map(([v, c]) => `${c} ${v}%`).join(", ");
  box.append(el("div", { class: "colorbar", style: `background: linear-gradient(to right, ${gradient})` }));
  box.append(el("div", { class: "colorbar-labels" }, el("span", {}, "0 %"), el("span", {}, "50 %"), el("span", {}, "100 %")));
  box.append(row("#5b7fa6", "no cloud cover (SAR only)"));
  return box;
}

function assetKey(preset) {
  return (preset.assets?.[0] || "").split("|")[0];
}

// The legend of one render preset, as DOM.
export async function presetLegend(id, preset, collection, rasterUrl) {
  const box = el("div", { class: "legend-preset", "data-preset": id });
  box.append(el("h3", {}, preset.title || id));
  const key = assetKey(preset);
  const asset = collection.item_assets?.[key] || {};
  if (preset.colormap) {
    const colormap = typeof preset.colormap === "string" ? JSON.parse(preset.colormap) : preset.colormap;
    const classes = asset["classification:classes"] || [];
    for (const cls of classes) {
      const colour = colormap[String(cls.value)];
      if (!colour || cls.nodata || colour[3] === 0) continue;
      box.append(row(rgba(colour), cls.description || cls.title || cls.name || String(cls.value)));
    }
    return box;
  }
  const rescale = preset.rescale?.[0];
  if (preset.colormap_name && rescale) {
    const response = await fetch(`${rasterUrl}/colorMaps/${encodeURIComponent(preset.colormap_name)}`);
    const colormap = response.ok ? await response.json() : {};
    const stops = [];
    for (let i = 0; i <= 255; i += 17) if (colormap[i]) stops.push(`${rgba(colormap[i])} ${((i / 255) * 100).toFixed(1)}%`);
    box.append(el("div", { class: "colorbar", style: `background: linear-gradient(to right, ${stops.join(", ")})` }));
    const unit = asset.unit || asset["raster:bands"]?.[0]?.unit || (key === "NDVI" ? "NDVI" : "");
    const [lo, hi] = Array.isArray(rescale) ? rescale : String(rescale).split(",").map(Number);
    box.append(
      el("div", { class: "colorbar-labels" }, el("span", {}, `${lo} ${unit}`), el("span", {}, `${(lo + hi) / 2} ${unit}`), el("span", {}, `${hi} ${unit}`)),
    );
    return box;
  }
  const bands = (preset.assets || []).join(" ");
  const range = (preset.rescale || []).map((r) => (Array.isArray(r) ? r.join("–") : r)).join(", ");
  box.append(el("div", {}, `${bands}${preset.expression ? ` (${preset.expression})` : ""}${range ? `, stretched ${range}` : ""}`));
  return box;
}

export { el };
