// Builds the map page into ../terramesh_stac/catalog/static/map/ (served by `terramesh-stac serve`):
// map.js + map.css (esbuild bundle of src/), MapLibre's worker beside map.js (it loads it from
// its own URL), index.html, and the offline base map: Natural Earth 1:50m land and country
// borders from the world-atlas package, as GeoJSON.
import * as esbuild from "esbuild";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { feature, mesh } from "topojson-client";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "terramesh_stac", "catalog", "static", "map");
mkdirSync(join(out, "basemap"), { recursive: true });

await esbuild.build({
  entryPoints: [join(here, "src", "main.js")],
  bundle: true,
  format: "esm",
  minify: true,
  sourcemap: false,
  target: ["es2022"],
  outfile: join(out, "map.js"),
  logLevel: "warning",
});

const maplibre = join(here, "node_modules", "maplibre-gl", "dist");
copyFileSync(join(maplibre, "maplibre-gl-worker.mjs"), join(out, "maplibre-gl-worker.mjs"));
copyFileSync(join(here, "src", "index.html"), join(out, "index.html"));

// world-atlas cuts rings at the antimeridian the way d3 wants them, with edges that jump from
// -180 to 180; unwrapped (longitudes made continuous), MapLibre draws them across its world copies.
function unwrap(coordinates) {
  if (typeof coordinates[0] === "number") return coordinates;
  if (typeof coordinates[0][0] !== "number") return coordinates.map(unwrap);
  let shift = 0;
  return coordinates.map(([lon, lat], i) => {
    if (i > 0) {
      const previous = coordinates[i - 1][0];
      if (lon - previous > 180) shift -= 360;
      else if (lon - previous < -180) shift += 360;
    }
    return [lon + shift, lat];
  });
}
const unwrapped = (f) => ({ ...f, geometry: f.geometry && { ...f.geometry, coordinates: unwrap(f.geometry.coordinates) } });
const unwrappedAll = (g) => (g.type === "FeatureCollection" ? { ...g, features: g.features.map(unwrapped) } : g.type === "Feature" ? unwrapped(g) : { ...g, coordinates: unwrap(g.coordinates) });

const world = JSON.parse(readFileSync(join(here, "node_modules", "world-atlas", "countries-50m.json")));
writeFileSync(join(out, "basemap", "land.geojson"), JSON.stringify(unwrappedAll(feature(world, world.objects.land))));
writeFileSync(
  join(out, "basemap", "borders.geojson"),
  JSON.stringify(unwrappedAll(mesh(world, world.objects.countries, (a, b) => a !== b))),
);
console.log(`map page built in ${out}`);
