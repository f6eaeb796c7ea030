"""terramesh-stac: TerraMesh as a cloud-native STAC catalog."""

__version__ = "0.1.0"
