"""Read TerraMesh shards and write STAC items with cloud-native assets."""
