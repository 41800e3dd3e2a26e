"""Datasets in the VOC layout, the synthetic generator and joint transforms."""
from wsss.data.voc import (IGNORE_INDEX, VOC_CLASSES, DatasetError, DatasetInfo, VOCDataset,
                           read_info, read_split)

__all__ = ["IGNORE_INDEX", "VOC_CLASSES", "DatasetError", "DatasetInfo", "VOCDataset",
           "read_info", "read_split"]
