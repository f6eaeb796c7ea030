"""pgstac database, STAC API, tiles and map page for converted TerraMesh items."""
