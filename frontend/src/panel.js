// The sample panel: an item's metadata, thumbnail, its modalities as map layers (the
// collection's render presets; a preset whose asset the item lacks is shown disabled), their
// legends, and links to the item JSON, its assets and its source Sentinel products.
import { el, presetLegend } from "./legend.js";
import { setSample } from "./layers.js";

const PROPERTIES = [
  ["datetime", "Sentinel-2 time"],
  ["terramesh:s1_datetime", "Sentinel-1 time"],
  ["eo:cloud_cover", "Cloud cover (%)"],
  ["terramesh:source", "Source"],
  ["terramesh:split", "Split"],
  ["terramesh:shard", "Shard"],
  ["terramesh:sample_id", "Sample id"],
  ["proj:code", "Projection"],
  ["proj:epsg", "EPSG"],
];

function presetAsset(preset) {
  return (preset.assets?.[0] || "").split("|")[0];
}

export class Panel {
  constructor(map, ctx) {
    this.map = map;
    this.ctx = ctx; // {config, collection, renders, state, onChange}
    this.root = document.getElementById("panel");
    this.body = document.getElementById("panel-body");
    document.getElementById("panel-close").addEventListener("click", () => this.close());
    this.item = null;
  }

  close() {
    this.root.hidden = true;
    this.map.easeTo({ padding: { right: 0 }, duration: 0 });
    this.select(null);
    setSample(this.map, null);
    this.item = null;
    this.ctx.state.item = this.ctx.state.layer = "";
    this.ctx.onChange();
  }

  select(id) {
    if (this.selected != null && this.map.getSource("footprints")) {
      this.map.setFeatureState({ source: "footprints", sourceLayer: "footprints", id: this.selected }, { selected: false });
    }
    this.selected = id;
    if (id != null) this.map.setFeatureState({ source: "footprints", sourceLayer: "footprints", id }, { selected: true });
  }

  async open(id, { fly = false } = {}) {
    const { config } = this.ctx;
    const url = `${config.stac}/collections/${encodeURIComponent(config.collection)}/items/${encodeURIComponent(id)}`;
    const response = await fetch(url);
    if (!response.ok) {
      this.ctx.status(`sample ${id}: ${response.status}`);
      return;
    }
    const item = await response.json();
    this.item = item;
    this.select(id);
    this.ctx.state.item = id;
    this.render(item, url);
    this.root.hidden = false;
    this.map.easeTo({ padding: { right: this.root.offsetWidth }, duration: 0 }); // the sample stays in view
    if (fly && item.bbox) this.map.fitBounds(item.bbox, { padding: 80, maxZoom: 14, duration: 0 });
    const layer = this.ctx.state.layer;
    if (layer && this.ctx.renders[layer] && item.assets[presetAsset(this.ctx.renders[layer])]) await this.showLayer(layer);
    else this.ctx.state.layer = "";
    this.ctx.onChange();
  }

  render(item, url) {
    const { renders } = this.ctx;
    this.body.replaceChildren();
    this.body.append(el("h2", {}, item.id));
    const thumbnail = Object.values(item.assets).find((a) => a.roles?.includes("thumbnail"));
    if (thumbnail) this.body.append(el("img", { class: "thumb", src: thumbnail.href, alt: `thumbnail of ${item.id}` }));
    const table = el("table", { class: "meta" });
    for (const [key, label] of PROPERTIES) {
      const value = item.properties[key];
      if (value !== undefined && value !== null) table.append(el("tr", {}, el("td", {}, label), el("td", {}, String(value))));
    }
    this.body.append(table);

    this.body.append(el("h3", {}, "Show on the map"));
    const presets = el("div", { class: "presets" });
    for (const [id, preset] of Object.entries(renders)) {
      const asset = presetAsset(preset);
      const present = Boolean(item.assets[asset]);
      const button = el("button", { type: "button", "data-preset": id, "aria-pressed": "false", title: preset.title || id }, present ? id : `${id} (no ${asset})`);
      if (!present) button.disabled = true;
      else button.addEventListener("click", () => this.showLayer(this.ctx.state.layer === id ? "" : id));
      presets.append(button);
    }
    this.body.append(presets);
    this.legend = el("div", { id: "sample-legend" });
    this.body.append(this.legend);

    this.body.append(el("h3", {}, "Links"));
    const links = el("ul", { class: "links" });
    links.append(el("li", {}, el("a", { href: url, target: "_blank" }, "STAC item (JSON)")));
    for (const [key, asset] of Object.entries(item.assets)) {
      links.append(el("li", {}, el("a", { href: asset.href, target: "_blank", title: asset.title || key }, `asset ${key}`)));
    }
    for (const link of item.links || []) {
      if (link.rel === "derived_from" || link.rel === "via") {
        links.append(el("li", {}, el("a", { href: link.href, target: "_blank" }, link.title || link.href)));
      }
    }
    this.body.append(links);
  }

  async showLayer(id) {
    this.ctx.setReady(false);
    try {
      await this.drawLayer(id);
    } finally {
      this.ctx.readyWhenIdle();
    }
  }

  async drawLayer(id) {
    const { config, collection, renders, state } = this.ctx;
    for (const button of this.body.querySelectorAll(".presets button")) button.setAttribute("aria-pressed", String(button.dataset.preset === id));
    state.layer = id;
    this.legend.replaceChildren();
    if (!id) {
      setSample(this.map, null);
      this.ctx.onChange();
      return;
    }
    const base = `${config.raster}/collections/${encodeURIComponent(config.collection)}/items/${encodeURIComponent(this.item.id)}`;
    // v: the catalog revision, so the item's tiles are cached as immutable until the next load
    const response = await fetch(`${base}/WebMercatorQuad/tilejson.json?render=${encodeURIComponent(id)}&v=${this.ctx.revision()}`);
    if (!response.ok) {
      this.ctx.status(`${id}: ${response.status} ${(await response.json().catch(() => ({}))).detail || ""}`);
      return;
    }
    const tilejson = await response.json();
    setSample(this.map, tilejson.tiles, tilejson.bounds);
    this.legend.append(await presetLegend(id, renders[id], collection, config.raster));
    this.ctx.onChange();
  }
}
