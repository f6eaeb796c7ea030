"""From search to training data (README "Training on a subset"): subsets and the stream.

terramesh_stac.ml.subset    a saved selection of samples (a Parquet manifest)
terramesh_stac.ml.dataset   SubsetDataset: the official loader's dicts, from the shards
"""

from terramesh_stac.ml.dataset import SubsetDataset
from terramesh_stac.ml.subset import Subset, SubsetError, read

__all__ = ["Subset", "SubsetDataset", "SubsetError", "read"]
