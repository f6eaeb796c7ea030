// The filters and the open sample live in the URL's query (shareable; reload restores them);
// the view lives in its hash, MapLibre's `#zoom/lat/lon` (the map's `hash` option).
export const KEYS = ["start", "end", "cloud", "source", "split", "bbox", "preset", "item", "layer"];

export function readState() {
  const query = new URLSearchParams(window.location.search);
  const state = {};
  for (const key of KEYS) state[key] = query.get(key) || "";
  if (state.bbox && !parseBbox(state.bbox)) state.bbox = "";
  return state;
}

export function writeState(state) {
  const query = new URLSearchParams();
  for (const key of KEYS) if (state[key]) query.set(key, state[key]);
  const search = query.toString();
  window.history.replaceState(window.history.state, "", `${window.location.pathname}${search ? `?${search}` : ""}${window.location.hash}`);
}

export function parseBbox(text) {
  const v = String(text).split(",").map(Number);
  if (v.length !== 4 || v.some((n) => !Number.isFinite(n)) || v[0] >= v[2] || v[1] >= v[3]) return null;
  return v;
}

// The STAC search (POST /search and /raster/searches/register body) of the filters.
export function searchBody(state, collectionId) {
  const body = { collections: [collectionId] };
  const args = [];
  if (state.cloud) args.push({ op: "<=", args: [{ property: "eo:cloud_cover" }, Number(state.cloud)] });
  if (state.source) args.push({ op: "=", args: [{ property: "terramesh:source" }, state.source] });
  if (state.split) args.push({ op: "=", args: [{ property: "terramesh:split" }, state.split] });
  if (args.length) {
    body.filter = args.length === 1 ? args[0] : { op: "and", args };
    body["filter-lang"] = "cql2-json";
  }
  if (state.start || state.end) {
    body.datetime = `${state.start ? `${state.start}T00:00:00Z` : ".."}/${state.end ? `${state.end}T23:59:59Z` : ".."}`;
  }
  const bbox = parseBbox(state.bbox);
  if (bbox) body.bbox = bbox;
  return body;
}

// The density layer's query: it honours years, cloud classes, source and split (its table
// counts by those), not days or the box.
export function densityQuery(state, collectionId) {
  const query = new URLSearchParams({ collection: collectionId });
  if (state.start) query.set("year_min", state.start.slice(0, 4));
  if (state.end) query.set("year_max", state.end.slice(0, 4));
  if (state.cloud) query.set("max_cloud", state.cloud);
  if (state.source) query.set("source", state.source);
  if (state.split) query.set("split", state.split);
  return query.toString();
}
